/**
 * Recovery by lease, not by age, and fencing of late outcomes: crashed states are written with the
 * factory, then maintenance and the task store are called directly.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { Maintenance, nodeDiedError, recoverDeadNodes } from '../planner/maintenance.ts';
import { Planner } from '../planner/planner.ts';
import { newTask } from '../task/schedule-context.ts';
import { completeTasks, failTasks, type Completion, type FailedAttemptOutcome } from '../store/tasks.ts';
import type { FailedAttempt } from '../task/settle.ts';
import * as defs from './fixtures/definitions.ts';
import { count, useTestDatabase } from './helpers/database.ts';
import { heldIds, insertNode, insertTask, insertTasks, taskStates } from './helpers/factory.ts';

const db = useTestDatabase();

beforeEach(async () => {
  await db.pool.query('truncate tm_tasks, tm_nodes, tm_history, tm_dead_letters, tm_task_defs cascade');
});

const NODE_TIMEOUT_MS = 10_000;

function success(id: string, assignment: number, over: Partial<Completion> = {}): Completion {
  return { kind: 'done', task: { id, assignment }, result: null, children: [], joinMessages: [], ...over };
}
function failure(id: string, assignment: number, over: Partial<FailedAttempt> = {}): FailedAttemptOutcome {
  return {
    kind: 'failed',
    task: { id, assignment },
    error: { name: 'Error', message: 'boom' },
    stopRetry: false,
    settlement: { retryDelayMs: null, deadLetter: true, cancelled: false, ...over },
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

  it('does not wait for a task whose exactly-once transaction still holds its row: the rest is recovered, that one later', async () => {
    const dead = await insertNode(db.pool, { heartbeatAgoMs: 60_000 });
    const [locked, free] = await insertTasks(db.pool, [
      { state: 'running', nodeId: dead },
      { state: 'running', nodeId: dead },
    ]);
    // What the dead node's handler transaction holds (worker.ts, lockHeldTask) until the server ends it.
    const holder = await db.pool.connect();
    try {
      await holder.query('begin');
      await holder.query(`select 1 from tm_tasks where id = $1 for key share`, [locked.id]);
      const recovering = recoverDeadNodes(db.pool, NODE_TIMEOUT_MS);
      const blocked = new Promise((resolve) => setTimeout(() => resolve('blocked'), 15_000).unref());
      expect(await Promise.race([recovering, blocked])).toEqual({ deadNodes: 1, recovered: 1 });
      expect((await taskStates(db.pool)).get(free.id)).toMatchObject({ state: 'ready', nodeId: null });
      expect((await taskStates(db.pool)).get(locked.id)).toMatchObject({ state: 'running', nodeId: dead });
      expect(await count(db.pool, `select count(*) from tm_nodes where id = $1`, [dead])).toBe(0);
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    expect(await recoverDeadNodes(db.pool, NODE_TIMEOUT_MS)).toEqual({ deadNodes: 0, recovered: 1 });
    expect((await taskStates(db.pool)).get(locked.id)).toMatchObject({ state: 'ready', nodeId: null });
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
    // A leading pass with nothing to do reports nothing (the documented contract of the event).
    expect(await maintenance.runOnce()).toEqual({
      deadNodes: 0,
      recovered: 0,
      purgedHistory: 0,
      danglingWaits: 0,
    });
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

describe('dead-node recovery charges the tasks that were running', () => {
  async function defineRetry(name: string, options: Record<string, unknown>) {
    await db.pool.query(`insert into tm_task_defs (name, options) values ($1, $2)`, [
      name,
      JSON.stringify(options),
    ]);
  }
  async function row(id: string) {
    const { rows } = await db.pool.query<{ state: string; attempt: number; last_error: string | null }>(
      `select state, attempt, last_error from tm_tasks where id = $1`,
      [id],
    );
    return rows[0];
  }

  it('charges running tasks one attempt, and hands assigned ones back uncharged', async () => {
    await defineRetry('noop', {
      retry: { mode: 'FIXED', delayMs: 60_000, maxRetries: 5, maxIntervalMs: 86_400_000 },
    });
    const dead = await insertNode(db.pool, { heartbeatAgoMs: 60_000 });
    const [assigned, running] = await insertTasks(db.pool, [
      { state: 'assigned', nodeId: dead, assignment: 2, attempt: 1 },
      { state: 'running', nodeId: dead, assignment: 3, attempt: 1 },
    ]);
    expect(await recoverDeadNodes(db.pool, NODE_TIMEOUT_MS)).toEqual({ deadNodes: 1, recovered: 2 });
    expect(await row(assigned.id)).toMatchObject({ state: 'ready', attempt: 1, last_error: null });
    expect(await row(running.id)).toMatchObject({
      state: 'ready',
      attempt: 2,
      last_error: nodeDiedError(dead),
    });
    // Ready again at once, not after the policy's delay: the node's death is the likely cause.
    expect(
      await count(db.pool, `select count(*) from tm_tasks where id = $1 and not_before <= now()`, [
        running.id,
      ]),
    ).toBe(1);
  });

  it('a task whose retries are used up goes to the dead letters, or to history without them', async () => {
    await defineRetry('noop', {
      retry: { mode: 'FIXED', delayMs: 0, maxRetries: 1, maxIntervalMs: 86_400_000 },
    });
    await defineRetry('once', { retry: { mode: 'OFF' }, deadLetter: false });
    const dead = await insertNode(db.pool, { heartbeatAgoMs: 60_000 });
    const [last, noDlt] = await insertTasks(db.pool, [
      { state: 'running', nodeId: dead, attempt: 1 },
      { name: 'once', state: 'running', nodeId: dead },
    ]);
    await recoverDeadNodes(db.pool, NODE_TIMEOUT_MS);
    expect(await hot([last.id, noDlt.id])).toBe(0);
    const { rows } = await db.pool.query(`select attempts, error from tm_dead_letters where id = $1`, [
      last.id,
    ]);
    expect(rows).toEqual([{ attempts: 2, error: nodeDiedError(dead) }]);
    const failed = await db.pool.query(`select state, attempts from tm_history where id = $1`, [noDlt.id]);
    expect(failed.rows).toEqual([{ state: 'failed', attempts: 1 }]);
  });

  it('a task that kills every node it runs on ends in the dead letters instead of looping', async () => {
    await defineRetry('noop', {
      retry: { mode: 'FIXED', delayMs: 0, maxRetries: 3, maxIntervalMs: 86_400_000 },
    });
    const poison = await insertTask(db.pool);
    const planner = new Planner({ db: db.pool, isLeader: () => true, onError: () => {} });
    let crashes = 0;
    while ((await hot([poison.id])) === 1) {
      expect(crashes).toBeLessThan(10);
      // A fresh node takes the task, starts it, and dies with it.
      const victim = await insertNode(db.pool);
      await planner.runOnce();
      await db.pool.query(`update tm_tasks set state = 'running' where id = $1 and node_id = $2`, [
        poison.id,
        victim,
      ]);
      await db.pool.query(`update tm_nodes set heartbeat_at = now() - interval '1 hour' where id = $1`, [
        victim,
      ]);
      await recoverDeadNodes(db.pool, NODE_TIMEOUT_MS);
      crashes++;
    }
    expect(crashes).toBe(4);
    expect(
      await count(db.pool, `select count(*) from tm_dead_letters where id = $1 and attempts = 4`, [
        poison.id,
      ]),
    ).toBe(1);
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
