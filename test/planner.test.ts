import { randomUUID } from 'node:crypto';
/**
 * The planner's rules, one pass at a time: rows are written with the factory, `runOnce()` is called
 * directly, and the assignments it wrote are read back from tm_tasks.
 */
import pg from 'pg';
import { beforeEach, describe, expect, it } from 'vitest';
import { PLANNER_CHANNEL } from '../store/channels.ts';
import type { PlannerOptions } from '../planner/planner.ts';
import { count, useTestDatabase } from './helpers/database.ts';
import {
  heldIds,
  insertNode,
  insertTask,
  insertTaskDef,
  insertTasks,
  leadingPlanner,
  removeTasks,
  taskStates,
} from './helpers/factory.ts';

const db = useTestDatabase();

beforeEach(async () => {
  await db.pool.query('truncate tm_tasks, tm_nodes, tm_task_defs cascade');
});

const planner = (options: Partial<PlannerOptions> = {}) => leadingPlanner(db.pool, options);

describe('batched claim', () => {
  it('assigns a batch of ready tasks in one pass and bumps their assignment number', async () => {
    const node = await insertNode(db.pool, { capacity: 50 });
    const tasks = await insertTasks(
      db.pool,
      Array.from({ length: 30 }, () => ({})),
    );
    const pass = await planner().runOnce();
    expect(pass).toMatchObject({ leader: true, claimed: 30, assigned: 30 });
    const states = await taskStates(db.pool);
    for (const t of tasks) {
      expect(states.get(t.id)).toMatchObject({ state: 'assigned', nodeId: node, assignment: 1 });
    }
    expect((await planner().runOnce()).claimed).toBe(0);
  });

  it('claims at most batchSize tasks per pass', async () => {
    await insertNode(db.pool, { capacity: 100 });
    await insertTasks(
      db.pool,
      Array.from({ length: 25 }, () => ({})),
    );
    const p = planner({ batchSize: 10 });
    expect((await p.runOnce()).assigned).toBe(10);
    expect((await p.runOnce()).assigned).toBe(10);
    expect((await p.runOnce()).assigned).toBe(5);
    expect(await heldIds(db.pool)).toHaveLength(25);
  });

  it('does nothing when this node does not lead', async () => {
    await insertNode(db.pool);
    await insertTask(db.pool);
    const pass = await planner({ isLeader: () => false }).runOnce();
    expect(pass).toMatchObject({ leader: false, claimed: 0, assigned: 0 });
    expect(await heldIds(db.pool)).toEqual([]);
  });

  it('plans nothing in a pass whose node no longer holds the lease by database time', async () => {
    // Like a leader's pass that sat in a black-holed connection and reaches the server late: the node
    // still believes it leads (isLeader), the database says its lease ran out.
    const node = await insertNode(db.pool);
    await insertTask(db.pool);
    await db.pool.query(
      `insert into tm_leader (id, node_id, expires_at) values (1, $1, now() - interval '1 second')
       on conflict (id) do update set node_id = excluded.node_id, expires_at = excluded.expires_at`,
      [node],
    );
    const stale = await planner({ leaseHolderId: node }).runOnce();
    expect(stale).toMatchObject({ leader: false, claimed: 0, assigned: 0 });
    expect(await heldIds(db.pool)).toEqual([]);

    await db.pool.query(`update tm_leader set expires_at = now() + interval '1 minute'`);
    expect(await planner({ leaseHolderId: node }).runOnce()).toMatchObject({ leader: true, assigned: 1 });
    await db.pool.query(`delete from tm_leader`);
  });
});

describe('workflow affinity', () => {
  it('lets only the oldest workflow of a key run, all its tasks at once, then the next one', async () => {
    await insertNode(db.pool, { capacity: 100 });
    const key = { affinityGroup: 'g', affinity: 'a' };
    // The newer workflow's rows are inserted first and rank higher: the order of workflows on a key is
    // their creation time, not seq or priority.
    const newer = await insertTasks(db.pool, [
      { ...key, workflowId: W2, workflowCreatedAgoMs: 1_000, priority: 100 },
      { ...key, workflowId: W2, workflowCreatedAgoMs: 1_000, priority: 100 },
    ]);
    const older = await insertTasks(db.pool, [
      { ...key, workflowId: W1, workflowCreatedAgoMs: 2_000 },
      { ...key, workflowId: W1, workflowCreatedAgoMs: 2_000 },
      { ...key, workflowId: W1, workflowCreatedAgoMs: 2_000 },
    ]);
    const other = await insertTask(db.pool, { affinityGroup: 'g', affinity: 'b', workflowId: W3 });

    const p = planner({ batchSize: 100 });
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([...older.map((t) => t.id), other.id]);

    // Still blocked while any row of the older workflow remains, in whatever state.
    await removeTasks(
      db.pool,
      older.slice(0, 2).map((t) => t.id),
    );
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([older[2].id, other.id]);

    // Level-triggered: once the older workflow's rows are gone, the next pass starts the next one.
    await removeTasks(db.pool, [older[2].id]);
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([...newer.map((t) => t.id), other.id]);
  });

  it('keys are per (group, affinity): the same affinity in another group is independent', async () => {
    await insertNode(db.pool, { capacity: 100 });
    const a = await insertTask(db.pool, { affinityGroup: 'g1', affinity: 'x', workflowCreatedAgoMs: 2_000 });
    const b = await insertTask(db.pool, { affinityGroup: 'g2', affinity: 'x', workflowCreatedAgoMs: 1_000 });
    await planner().runOnce();
    expect(await heldIds(db.pool)).toEqual([a.id, b.id]);
  });

  it('does not start a second workflow on a key while another workflow has tasks in flight', async () => {
    const node = await insertNode(db.pool, { capacity: 100 });
    const key = { affinityGroup: 'g', affinity: 'a' };
    // The newer workflow holds the key (its task runs); then a task of an older workflow appears on the
    // key (a workflow that reached this key late). Two workflows would then be active on one key.
    const running = await insertTask(db.pool, {
      ...key,
      workflowId: W2,
      workflowCreatedAgoMs: 1_000,
      state: 'running',
      nodeId: node,
    });
    const late = await insertTask(db.pool, { ...key, workflowId: W1, workflowCreatedAgoMs: 5_000 });
    const p = planner();
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([running.id]);

    await removeTasks(db.pool, [running.id]);
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([late.id]);
  });

  it('lets an older workflow that reaches a key late run as soon as the key has nothing in flight', async () => {
    const node = await insertNode(db.pool, { capacity: 100 });
    const key = { affinityGroup: 'g', affinity: 'a' };
    // The newer workflow is active (one task running, one still pending) when an older workflow gains a
    // task of the key: the older one goes first once nothing of the key is in flight, then the newer
    // workflow continues (README, Affinity).
    const running = await insertTask(db.pool, {
      ...key,
      workflowId: W2,
      workflowCreatedAgoMs: 1_000,
      state: 'running',
      nodeId: node,
    });
    const pending = await insertTask(db.pool, {
      ...key,
      workflowId: W2,
      workflowCreatedAgoMs: 1_000,
      notBeforeInMs: 3_600_000,
    });
    const late = await insertTask(db.pool, { ...key, workflowId: W1, workflowCreatedAgoMs: 5_000 });
    const p = planner();
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([running.id]);
    await removeTasks(db.pool, [running.id]);
    await db.pool.query(`update tm_tasks set not_before = now() where id = $1`, [pending.id]);
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([late.id]);
    await removeTasks(db.pool, [late.id]);
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([pending.id]);
  });
});

describe('strict affinity', () => {
  it('hands out one task per key per pass, in creation order, even with a large batch (graphile-worker #621)', async () => {
    await insertNode(db.pool, { capacity: 1_000 });
    const key = { affinityGroup: 'g', affinity: 'k', strict: true };
    // One workflow per task, and the later tasks get higher priority: neither may reorder a strict key.
    const tasks = await insertTasks(
      db.pool,
      Array.from({ length: 5 }, (_, i) => ({ ...key, priority: i, workflowCreatedAgoMs: 5_000 - i })),
    );
    const free = await insertTasks(
      db.pool,
      Array.from({ length: 3 }, () => ({})),
    );
    const p = planner({ batchSize: 1_000 });

    const first = await p.runOnce();
    expect(first.assigned).toBe(4);
    expect(await heldIds(db.pool)).toEqual([tasks[0].id, ...free.map((t) => t.id)]);
    await removeTasks(
      db.pool,
      free.map((t) => t.id),
    );

    for (let i = 0; i < tasks.length; i++) {
      // Nothing more while the head is assigned or running.
      expect((await p.runOnce()).assigned).toBe(0);
      await db.pool.query(`update tm_tasks set state = 'running' where id = $1`, [tasks[i].id]);
      expect((await p.runOnce()).assigned).toBe(0);
      expect(await heldIds(db.pool)).toEqual([tasks[i].id]);
      await removeTasks(db.pool, [tasks[i].id]);
      const next = await p.runOnce();
      expect(next.assigned).toBe(i + 1 < tasks.length ? 1 : 0);
      expect(await heldIds(db.pool)).toEqual(i + 1 < tasks.length ? [tasks[i + 1].id] : []);
    }
  });

  it('runs a strict key in creation order across workflows created together with ids of any order', async () => {
    await insertNode(db.pool, { capacity: 100 });
    // Twenty workflows created in one transaction share their creation time, and ids a caller chooses
    // (random here) do not sort by time: only the creation order (seq) may decide.
    const at = new Date(Date.now() - 1_000);
    const tasks = await insertTasks(
      db.pool,
      Array.from({ length: 20 }, () => ({
        affinity: 'k',
        strict: true,
        workflowId: randomUUID(),
        workflowCreatedAt: at,
      })),
    );
    const p = planner({ batchSize: 100 });
    for (const task of tasks) {
      await p.runOnce();
      expect(await heldIds(db.pool)).toEqual([task.id]);
      await removeTasks(db.pool, [task.id]);
    }
  });

  it("runs a strict task created before an older workflow's later strict task first", async () => {
    await insertNode(db.pool, { capacity: 100 });
    // Q (a newer workflow) was created before C, a task its older workflow gained later.
    const q = await insertTask(db.pool, {
      affinity: 'k',
      strict: true,
      workflowId: W2,
      workflowCreatedAgoMs: 1_000,
    });
    const c = await insertTask(db.pool, {
      affinity: 'k',
      strict: true,
      workflowId: W1,
      workflowCreatedAgoMs: 5_000,
    });
    const p = planner();
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([q.id]);
    await removeTasks(db.pool, [q.id]);
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([c.id]);
  });

  it('keeps creation order within one workflow of a strict key', async () => {
    await insertNode(db.pool, { capacity: 100 });
    const tasks = await insertTasks(
      db.pool,
      [3, 2, 1].map((priority) => ({ affinity: 'k', strict: true, workflowId: W1, priority })),
    );
    const p = planner();
    for (const task of tasks) {
      await p.runOnce();
      expect(await heldIds(db.pool)).toEqual([task.id]);
      await removeTasks(db.pool, [task.id]);
    }
  });

  it('moves on when the head of the key leaves the table (dead-lettered or cancelled)', async () => {
    const node = await insertNode(db.pool, { capacity: 100 });
    const key = { affinity: 'k', strict: true };
    const head = await insertTask(db.pool, { ...key, state: 'running', nodeId: node });
    const next = await insertTask(db.pool, key);
    const p = planner();
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([head.id]);
    // The head fails for good: failTasks moves it to tm_dead_letters, i.e. it leaves tm_tasks.
    await db.pool.query(
      `with gone as (delete from tm_tasks where id = $1 returning *)
       insert into tm_dead_letters (id, name, workflow_id, workflow_created_at, affinity_group, affinity,
         strict_affinity, message, priority, attempts, error, created_at)
       select id, name, workflow_id, workflow_created_at, affinity_group, affinity, strict_affinity, message,
         priority, attempt + 1, 'boom', created_at from gone`,
      [head.id],
    );
    await p.runOnce();
    expect(await heldIds(db.pool)).toEqual([next.id]);
  });

  it('a delayed head blocks its own key only', async () => {
    await insertNode(db.pool, { capacity: 100 });
    await insertTask(db.pool, { affinity: 'k', strict: true, notBeforeInMs: 3_600_000 });
    await insertTask(db.pool, { affinity: 'k', strict: true });
    const other = await insertTask(db.pool, { affinity: 'other', strict: true });
    await planner().runOnce();
    expect(await heldIds(db.pool)).toEqual([other.id]);
  });
});

describe('ordering and timing', () => {
  it('claims in priority order (higher first), then creation order', async () => {
    await insertNode(db.pool, { capacity: 3, taskNames: ['noop'] });
    const rows = await insertTasks(
      db.pool,
      [0, 5, -1, 10, 5].map((priority) => ({ priority })),
    );
    await planner({ planFactor: 1 }).runOnce();
    expect(await heldIds(db.pool)).toEqual([rows[1].id, rows[3].id, rows[4].id]);
  });

  it('does not claim delayed tasks, and they do not hold back ready ones of other keys', async () => {
    await insertNode(db.pool, { capacity: 100 });
    const delayed = await insertTasks(db.pool, [
      { notBeforeInMs: 60_000 },
      { affinity: 'a', notBeforeInMs: 60_000, workflowCreatedAgoMs: 1_000 },
      { affinity: 'b', strict: true, notBeforeInMs: 60_000 },
    ]);
    const ready = await insertTasks(db.pool, [{}, { affinity: 'c' }, { affinity: 'd', strict: true }]);
    const p = planner();
    const pass = await p.runOnce();
    expect(pass.assigned).toBe(3);
    expect(await heldIds(db.pool)).toEqual(ready.map((t) => t.id));

    // Due now: the delayed ones are claimed on the next pass.
    await db.pool.query(`update tm_tasks set not_before = now() where id = any($1)`, [
      delayed.map((t) => t.id),
    ]);
    await p.runOnce();
    expect(await heldIds(db.pool)).toHaveLength(6);
  });
});

describe('capacity and limits', () => {
  it('gives a node at most capacity x planFactor tasks, counting those it already holds', async () => {
    const small = await insertNode(db.pool, { capacity: 2 });
    const big = await insertNode(db.pool, { capacity: 5 });
    await insertTasks(db.pool, [
      { state: 'running', nodeId: small },
      { state: 'assigned', nodeId: big },
    ]);
    await insertTasks(
      db.pool,
      Array.from({ length: 100 }, () => ({})),
    );
    const p = planner({ planFactor: 1.5 });
    const pass = await p.runOnce();
    // small: floor(2 x 1.5) - 1 = 2; big: floor(5 x 1.5) - 1 = 6.
    expect(pass).toMatchObject({ freeSlots: 8, assigned: 8 });
    expect(await heldIds(db.pool, small)).toHaveLength(3);
    expect(await heldIds(db.pool, big)).toHaveLength(7);
    expect((await p.runOnce()).assigned).toBe(0);
  });

  it('never exceeds a task maxParallelInCluster across passes and nodes', async () => {
    await insertTaskDef(db.pool, 'limited', { maxParallelInCluster: 3 });
    const nodes = [
      await insertNode(db.pool, { capacity: 100, taskNames: ['noop', 'limited'] }),
      await insertNode(db.pool, { capacity: 100, taskNames: ['noop', 'limited'] }),
    ];
    await insertTasks(
      db.pool,
      Array.from({ length: 20 }, () => ({ name: 'limited' })),
    );
    await insertTasks(
      db.pool,
      Array.from({ length: 5 }, () => ({ name: 'noop' })),
    );
    const p = planner({ batchSize: 7 });
    const limitedHeld = () =>
      count(db.pool, `select count(*) from tm_tasks where name = 'limited' and node_id is not null`);
    let ended = 0;
    for (let pass = 0; pass < 30 && ended < 20; pass++) {
      await p.runOnce();
      const held = await limitedHeld();
      expect(held).toBeLessThanOrEqual(3);
      // Finish one limited task per pass: the limit frees one slot at a time.
      const { rows } = await db.pool.query<{ id: string }>(
        `select id from tm_tasks where name = 'limited' and node_id = any($1) order by seq limit 1`,
        [nodes],
      );
      if (rows.length > 0) {
        await removeTasks(db.pool, [rows[0].id]);
        ended++;
      }
    }
    expect(ended).toBe(20);
    // The unlimited tasks were not held back by the limited ones.
    expect(
      await count(db.pool, `select count(*) from tm_tasks where name = 'noop' and state = 'ready'`),
    ).toBe(0);
  });

  it('does not claim tasks no live node can run', async () => {
    await insertNode(db.pool, { capacity: 100, taskNames: ['noop'] });
    await insertNode(db.pool, { capacity: 100, taskNames: ['noop', 'orphan'], heartbeatAgoMs: 60_000 });
    const orphan = await insertTask(db.pool, { name: 'orphan' });
    const runnable = await insertTask(db.pool, { name: 'noop' });
    const pass = await planner({ nodeTimeoutMs: 10_000 }).runOnce();
    expect(pass).toMatchObject({ claimed: 1, assigned: 1 });
    expect(await heldIds(db.pool)).toEqual([runnable.id]);
    expect((await taskStates(db.pool, [orphan.id])).get(orphan.id)?.state).toBe('ready');
  });

  it('gives nothing to a node above the CPU limit', async () => {
    const busy = await insertNode(db.pool, { capacity: 100, cpu: 0.95 });
    const calm = await insertNode(db.pool, { capacity: 100, cpu: 0.2 });
    await insertTasks(
      db.pool,
      Array.from({ length: 10 }, () => ({})),
    );
    await planner({ nodeCpuLimit: 0.8 }).runOnce();
    expect(await heldIds(db.pool, busy)).toHaveLength(0);
    expect(await heldIds(db.pool, calm)).toHaveLength(10);

    await db.pool.query(`update tm_nodes set cpu = 0.9`);
    await insertTask(db.pool);
    expect((await planner({ nodeCpuLimit: 0.8 }).runOnce()).assigned).toBe(0);
  });

  it('keeps the tasks of one key on one node within a pass', async () => {
    await insertNode(db.pool, { capacity: 100 });
    await insertNode(db.pool, { capacity: 100 });
    await insertTasks(
      db.pool,
      Array.from({ length: 10 }, () => ({ affinity: 'k', workflowId: W1 })),
    );
    await planner().runOnce();
    expect(await count(db.pool, `select count(distinct node_id) from tm_tasks`)).toBe(1);
    expect(await heldIds(db.pool)).toHaveLength(10);
  });
});

describe('polling delay', () => {
  const pollingDelay = { 0: 1_000, 5: 200, 20: 0 };

  it('sleeps per the map, chosen by how many tasks the pass found', async () => {
    await insertNode(db.pool, { capacity: 1_000 });
    const p = planner({ pollingDelay, batchSize: 100 });
    expect((await p.runOnce()).delayMs).toBe(1_000);
    await insertTasks(
      db.pool,
      Array.from({ length: 3 }, () => ({})),
    );
    expect((await p.runOnce()).delayMs).toBe(1_000);
    await insertTasks(
      db.pool,
      Array.from({ length: 7 }, () => ({})),
    );
    expect((await p.runOnce()).delayMs).toBe(200);
    await insertTasks(
      db.pool,
      Array.from({ length: 25 }, () => ({})),
    );
    expect((await p.runOnce()).delayMs).toBe(0);
  });

  it('does not spin while every node is full and nothing is ready', async () => {
    const node = await insertNode(db.pool, { capacity: 2 });
    await insertTasks(db.pool, [
      { state: 'running', nodeId: node },
      { state: 'running', nodeId: node },
    ]);
    const pass = await planner({ pollingDelay, planFactor: 1 }).runOnce();
    expect(pass).toMatchObject({ freeSlots: 0, claimed: 0 });
    expect(pass.delayMs).toBe(1_000);
  });

  it('polls at the busy delay, without spinning, while tasks wait for a full cluster', async () => {
    const node = await insertNode(db.pool, { capacity: 2 });
    await insertTasks(db.pool, [
      { state: 'running', nodeId: node },
      { state: 'running', nodeId: node },
    ]);
    await insertTasks(
      db.pool,
      Array.from({ length: 50 }, () => ({})),
    );
    const pass = await planner({ pollingDelay, planFactor: 1 }).runOnce();
    expect(pass).toMatchObject({ freeSlots: 0, claimed: 0 });
    // Only a completion (which NOTIFYs) or a new node can change anything: no busy loop, but a poll
    // at the delay of the smallest non-zero threshold (5 -> 200 ms), since tasks wait.
    expect(pass.delayMs).toBe(200);
  });

  it('after filling the last free slots, polls at the busy delay instead of coming straight back', async () => {
    await insertNode(db.pool, { capacity: 30 });
    await insertTasks(
      db.pool,
      Array.from({ length: 50 }, () => ({})),
    );
    const pass = await planner({ pollingDelay, planFactor: 1 }).runOnce();
    expect(pass).toMatchObject({ assigned: 30 });
    expect(pass.delayMs).toBe(200);
  });
});

const W1 = '00000000-0000-7000-8000-000000000001';
const W2 = '00000000-0000-7000-8000-000000000002';
const W3 = '00000000-0000-7000-8000-000000000003';

describe('planner wake-ups', () => {
  /**
   * The planner notifications one statement sends, in order: a marker notification sent after it
   * arrives after everything the statement sent (notifications are delivered in commit order).
   */
  async function notificationsOf(sql: string): Promise<string[]> {
    const listener = new pg.Client(db.url);
    await listener.connect();
    try {
      await listener.query(`listen ${PLANNER_CHANNEL}`);
      const seen: string[] = [];
      const marked = new Promise<void>((resolve) =>
        listener.on('notification', (n) => (n.payload === 'marker' ? resolve() : seen.push(n.payload ?? ''))),
      );
      await db.pool.query(sql);
      await db.pool.query(`select pg_notify($1, 'marker')`, [PLANNER_CHANNEL]);
      await marked;
      return seen;
    } finally {
      await listener.end();
    }
  }

  it('the functions that end, fail or cancel tasks wake it only when a task is ready, waiting or sleeping', async () => {
    const node = await insertNode(db.pool);
    // Only a running task: nothing a pass could plan.
    await insertTask(db.pool, { state: 'running', nodeId: node });
    expect(await notificationsOf('select tm_wake_planner()')).toEqual([]);
    for (const state of ['ready', 'waiting', 'sleeping'] as const) {
      const { id } = await insertTask(db.pool, { state });
      expect(await notificationsOf('select tm_wake_planner()')).toEqual(['']);
      await db.pool.query(`delete from tm_tasks where id = $1`, [id]);
    }
    // The runtime's own wake-ups (schedule, cron, recovery) notify whatever the table holds.
    expect(await notificationsOf('select tm_notify_planner()')).toEqual(['']);
  });
});
