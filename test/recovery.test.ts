/**
 * Recovery by lease, not by age, and fencing of late outcomes: crashed states are written with the
 * factory, then maintenance and the task store are called directly.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Maintenance, recoverDeadNodes } from '../planner/maintenance.ts';
import { Planner } from '../planner/planner.ts';
import { newTask } from '../runtime/schedule-context.ts';
import { completeTasks, failTasks, type Failure, type Success } from '../runtime/task-store.ts';
import * as defs from './fixtures/definitions.ts';
import { count, createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { heldIds, insertNode, insertTask, insertTasks, taskStates } from './helpers/factory.ts';

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db.drop();
});
beforeEach(async () => {
  await db.pool.query('truncate tm_tasks, tm_nodes, tm_history, tm_dead_letters');
});

const NODE_TIMEOUT_MS = 10_000;

function success(id: string, assignment: number, over: Partial<Success> = {}): Success {
  return { id, assignment, result: null, children: [], joinMessages: [], ...over };
}
function failure(id: string, assignment: number, over: Partial<Failure> = {}): Failure {
  return {
    id,
    assignment,
    error: 'Error: boom',
    retryDelayMs: null,
    deadLetter: true,
    cancelled: false,
    ...over,
  };
}
const hot = (ids: string[]) => count(db.pool, `select count(*) from tm_tasks where id = any($1)`, [ids]);
const history = (ids: string[]) =>
  count(db.pool, `select count(*) from tm_history where id = any($1)`, [ids]);

describe('dead-node recovery', () => {
  it('hands the tasks of a node whose heartbeat expired back to ready, and removes the node', async () => {
    const dead = await insertNode(db.pool, { heartbeatAgoMs: 60_000 });
    const live = await insertNode(db.pool, { heartbeatAgoMs: 2_000 });
    const lost = await insertTasks(db.pool, [
      { state: 'assigned', nodeId: dead, assignment: 4 },
      { state: 'running', nodeId: dead, assignment: 7 },
    ]);
    const kept = await insertTask(db.pool, { state: 'running', nodeId: live });
    const ready = await insertTask(db.pool);

    expect(await recoverDeadNodes(db.pool, NODE_TIMEOUT_MS)).toEqual({ deadNodes: 1, recovered: 2 });
    const states = await taskStates(db.pool);
    for (const t of lost) expect(states.get(t.id)).toMatchObject({ state: 'ready', nodeId: null });
    // The assignment number is kept: the next assignment bumps it past anything the dead node holds.
    expect(states.get(lost[1].id)?.assignment).toBe(7);
    expect(states.get(kept.id)).toMatchObject({ state: 'running', nodeId: live });
    expect(states.get(ready.id)).toMatchObject({ state: 'ready', nodeId: null });
    expect(await count(db.pool, `select count(*) from tm_nodes where id = $1`, [dead])).toBe(0);
    expect(await count(db.pool, `select count(*) from tm_nodes where id = $1`, [live])).toBe(1);

    expect(await recoverDeadNodes(db.pool, NODE_TIMEOUT_MS)).toEqual({ deadNodes: 0, recovered: 0 });
  });

  it('takes back tasks held by a node that has no row at all', async () => {
    const task = await insertTask(db.pool, {
      state: 'running',
      nodeId: '11111111-1111-4111-8111-111111111111',
    });
    expect(await recoverDeadNodes(db.pool, NODE_TIMEOUT_MS)).toEqual({ deadNodes: 0, recovered: 1 });
    expect((await taskStates(db.pool)).get(task.id)).toMatchObject({ state: 'ready', nodeId: null });
  });

  it('never takes a task back from a live node, however long it has run', async () => {
    const live = await insertNode(db.pool, { heartbeatAgoMs: NODE_TIMEOUT_MS - 3_000 });
    const old = await insertTasks(db.pool, [
      { state: 'running', nodeId: live, assignedAgoMs: 30 * 86_400_000 },
      { state: 'assigned', nodeId: live, assignedAgoMs: 86_400_000 },
    ]);
    const maintenance = new Maintenance({
      db: db.pool,
      isLeader: () => true,
      nodeTimeoutMs: NODE_TIMEOUT_MS,
      onError: (error) => {
        throw error;
      },
    });
    expect(await maintenance.runOnce()).toMatchObject({ deadNodes: 0, recovered: 0 });
    expect(await heldIds(db.pool, live)).toEqual(old.map((t) => t.id));
  });

  it('Maintenance recovers and purges history only while leading', async () => {
    const dead = await insertNode(db.pool, { heartbeatAgoMs: 60_000 });
    const task = await insertTask(db.pool, { state: 'running', nodeId: dead });
    await db.pool.query(
      `insert into tm_history (id, name, workflow_id, state, attempts, created_at, finished_at) values
         (gen_random_uuid(), 'noop', gen_random_uuid(), 'completed', 1, now(), now() - interval '2 hours'),
         (gen_random_uuid(), 'noop', gen_random_uuid(), 'completed', 1, now(), now() - interval '10 minutes')`,
    );
    let leading = false;
    const results: unknown[] = [];
    const maintenance = new Maintenance({
      db: db.pool,
      isLeader: () => leading,
      nodeTimeoutMs: NODE_TIMEOUT_MS,
      historyRetentionMs: 3_600_000,
      onResult: (r) => results.push(r),
      onError: (error) => {
        throw error;
      },
    });
    expect(await maintenance.runOnce()).toEqual({
      deadNodes: 0,
      recovered: 0,
      purgedHistory: 0,
      danglingWaits: 0,
    });
    expect(await heldIds(db.pool)).toEqual([task.id]);
    expect(await count(db.pool, `select count(*) from tm_history`)).toBe(2);

    leading = true;
    expect(await maintenance.runOnce()).toEqual({
      deadNodes: 1,
      recovered: 1,
      purgedHistory: 1,
      danglingWaits: 0,
    });
    expect(await heldIds(db.pool)).toEqual([]);
    expect(await count(db.pool, `select count(*) from tm_history`)).toBe(1);
    expect(results).toHaveLength(1);
  });

  it('a recovered task runs elsewhere, and the dead node late completion is fenced out', async () => {
    const dead = await insertNode(db.pool, { heartbeatAgoMs: 60_000 });
    const task = await insertTask(db.pool, { state: 'running', nodeId: dead, assignment: 1 });
    await recoverDeadNodes(db.pool, NODE_TIMEOUT_MS);
    const other = await insertNode(db.pool);
    await new Planner({ db: db.pool, isLeader: () => true, onError: () => {} }).runOnce();
    expect((await taskStates(db.pool)).get(task.id)).toMatchObject({
      state: 'assigned',
      nodeId: other,
      assignment: 2,
    });
    await db.pool.query(`update tm_tasks set state = 'running' where id = $1`, [task.id]);

    // The dead node was only slow: it comes back and reports its old attempt.
    expect(await completeTasks(db.pool, dead, [success(task.id, 1)])).toEqual([]);
    expect(await failTasks(db.pool, dead, [failure(task.id, 1)])).toEqual([]);
    expect(await hot([task.id])).toBe(1);
    expect(await history([task.id])).toBe(0);

    expect(await completeTasks(db.pool, other, [success(task.id, 2)])).toEqual([
      expect.objectContaining({ id: task.id, outcome: 'completed' }),
    ]);
    expect(await hot([task.id])).toBe(0);
    expect(await history([task.id])).toBe(1);
  });
});

describe('fencing', () => {
  async function runningTask(assignment = 3) {
    const node = await insertNode(db.pool);
    const task = await insertTask(db.pool, { state: 'running', nodeId: node, assignment, affinity: 'k' });
    const { rows } = await db.pool.query<{ wca: Date }>(
      `select workflow_created_at as wca from tm_tasks where id = $1`,
      [task.id],
    );
    const child = newTask(
      defs.noop,
      { message: { n: 1 } },
      {
        parentId: task.id,
        workflowId: task.workflowId,
        workflowCreatedAt: rows[0].wca.toISOString(),
        affinityGroup: '',
        affinity: 'k',
      },
    );
    return { node, task, child };
  }

  it('a completion with a stale assignment number or from another node changes nothing', async () => {
    const { node, task, child } = await runningTask(3);
    const stranger = await insertNode(db.pool);
    const before = await taskStates(db.pool);

    expect(await completeTasks(db.pool, node, [success(task.id, 2, { children: [child] })])).toEqual([]);
    expect(await completeTasks(db.pool, stranger, [success(task.id, 3, { children: [child] })])).toEqual([]);
    expect(await taskStates(db.pool)).toEqual(before);
    expect(await history([task.id])).toBe(0);
    // Children of a fenced-out completion are not inserted.
    expect(await hot([child.id])).toBe(0);

    const accepted = await completeTasks(db.pool, node, [success(task.id, 3, { children: [child] })]);
    expect(accepted.map((a) => a.id)).toEqual([task.id]);
    expect(await hot([task.id])).toBe(0);
    expect(await history([task.id])).toBe(1);
    const { rows } = await db.pool.query(
      `select parent_id, workflow_id, affinity, state from tm_tasks where id = $1`,
      [child.id],
    );
    expect(rows).toEqual([
      { parent_id: task.id, workflow_id: task.workflowId, affinity: 'k', state: 'ready' },
    ]);
  });

  it('in a batch, only the fenced-out outcomes are refused', async () => {
    const { node, task, child } = await runningTask(3);
    const mate = await insertTask(db.pool, { state: 'running', nodeId: node, assignment: 1 });
    const accepted = await completeTasks(db.pool, node, [
      success(task.id, 9, { children: [child] }),
      success(mate.id, 1),
    ]);
    expect(accepted.map((a) => a.id)).toEqual([mate.id]);
    expect(await hot([task.id])).toBe(1);
    expect(await hot([child.id])).toBe(0);
  });

  it('a failure with a stale assignment or from another node neither retries nor dead-letters', async () => {
    const { node, task } = await runningTask(3);
    const stranger = await insertNode(db.pool);
    const before = await taskStates(db.pool);
    expect(await failTasks(db.pool, node, [failure(task.id, 2, { retryDelayMs: 0 })])).toEqual([]);
    expect(await failTasks(db.pool, node, [failure(task.id, 2)])).toEqual([]);
    expect(await failTasks(db.pool, stranger, [failure(task.id, 3)])).toEqual([]);
    expect(await taskStates(db.pool)).toEqual(before);
    expect(await count(db.pool, `select count(*) from tm_dead_letters`)).toBe(0);

    expect(await failTasks(db.pool, node, [failure(task.id, 3, { retryDelayMs: 60_000 })])).toEqual([
      expect.objectContaining({ id: task.id, outcome: 'retried' }),
    ]);
    expect((await taskStates(db.pool)).get(task.id)).toMatchObject({
      state: 'ready',
      nodeId: null,
      attempt: 1,
    });
    expect(
      await count(
        db.pool,
        `select count(*) from tm_tasks where id = $1 and not_before > now() + interval '50 s'`,
        [task.id],
      ),
    ).toBe(1);
  });

  it('a task that was handed back (ready) cannot be completed by its former node', async () => {
    const { node, task } = await runningTask(3);
    await db.pool.query(`update tm_tasks set state = 'ready', node_id = null where id = $1`, [task.id]);
    expect(await completeTasks(db.pool, node, [success(task.id, 3)])).toEqual([]);
    expect(await failTasks(db.pool, node, [failure(task.id, 3)])).toEqual([]);
    expect((await taskStates(db.pool)).get(task.id)).toMatchObject({ state: 'ready', attempt: 0 });
  });
});
