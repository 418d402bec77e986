/**
 * Graceful shutdown of in-process nodes: queued tasks go back at once, running ones finish within the
 * grace period or are aborted and handed back, the lease and the node row are released.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { TaskmillNode } from '../index.ts';
import * as defs from './fixtures/definitions.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { taskStates } from './helpers/factory.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const db = useTestDatabase();

beforeAll(async () => {
  await db.pool.query(
    `create table runs (task_id uuid, key text, workflow_id uuid, seq int, started_at timestamptz,
       ended_at timestamptz, pid int)`,
  );
});
afterEach(async () => {
  await stopAllNodes();
  expect(await count(db.pool, `select count(*) from tm_nodes`)).toBe(0);
  await db.pool.query('truncate tm_tasks, tm_history, tm_dead_letters, runs');
});

/** Every task a node's completer got accepted, with when. */
function accepted(node: TaskmillNode): Map<string, { outcome: string; at: number }> {
  const seen = new Map<string, { outcome: string; at: number }>();
  node.on('flush', (result) => {
    for (const a of result.accepted) seen.set(a.id, { outcome: a.outcome, at: performance.now() });
  });
  return seen;
}

const runsOf = (id: string) => count(db.pool, `select count(*) from runs where task_id = $1`, [id]);
const nodeRows = (id: string) => count(db.pool, `select count(*) from tm_nodes where id = $1`, [id]);
/** A long lease: a follower that takes over quickly does so because the lease was released. */
const LONG_LEASE = { leaseTtlMs: 20_000 };

describe('graceful shutdown', () => {
  it('hands queued tasks back at once and finishes the running one within the grace period', async () => {
    const a = await startTestNode(db.url, {
      maxParallelTasksInNode: 1,
      planner: LONG_LEASE,
      shutdownGraceMs: 10_000,
    });
    expect(a.isLeader).toBe(true);
    const doneOnA = accepted(a);
    const slow = await a.client.schedule(defs.record, {
      message: { url: db.url, key: 'slow', ms: 2_000 },
      priority: 10,
    });
    const queued = await a.client.schedule(defs.record, { message: { url: db.url, key: 'queued', ms: 10 } });
    // capacity 1 x plan factor 2: the slow task runs, the other waits in a's mailbox.
    await until(() => a.stats().inFlight === 1 && a.stats().queued === 1, 10_000, 10);

    const b = await startTestNode(db.url, { planner: LONG_LEASE });
    expect(b.isLeader).toBe(false);
    const doneOnB = accepted(b);
    const leaderAt: number[] = [];
    b.on('leader', (leader) => leader && leaderAt.push(performance.now()));

    const stopAt = performance.now();
    const stopping = a.stop();
    expect(a.state).toBe('stopping');
    // b leads at once (the lease was released, not left to expire) and is given the queued task while
    // a still runs its slow one.
    await until(async () => (await taskStates(db.pool, [queued])).get(queued)?.nodeId === b.id, 5_000, 10);
    expect(a.state).toBe('stopping');
    expect(doneOnA.has(slow)).toBe(false);
    expect(leaderAt[0] - stopAt).toBeLessThan(2_000);
    await stopping;
    expect(a.state).toBe('stopped');
    await until(() => doneOnB.has(queued), 10_000, 10);

    expect(doneOnA.get(slow)?.outcome).toBe('completed');
    expect(doneOnB.get(queued)?.outcome).toBe('completed');
    expect(doneOnB.has(slow)).toBe(false);
    expect(doneOnA.has(queued)).toBe(false);
    // Each ran exactly once: nothing was duplicated by the hand-over.
    expect(await runsOf(slow)).toBe(1);
    expect(await runsOf(queued)).toBe(1);
    expect(a.stats().stale + b.stats().stale).toBe(0);
    expect(await nodeRows(a.id)).toBe(0);
    expect((await db.pool.query(`select node_id from tm_leader`)).rows).toEqual([{ node_id: b.id }]);
  });

  it('past the grace period aborts running tasks and hands them back as ready, not failed', async () => {
    const a = await startTestNode(db.url, { shutdownGraceMs: 300, abortGraceMs: 200 });
    const id = await a.client.schedule(defs.sleep, { message: { ms: 60_000 } });
    await until(() => a.stats().inFlight === 1, 10_000, 10);

    const started = performance.now();
    await a.stop();
    expect(performance.now() - started).toBeLessThan(3_000);
    expect((await taskStates(db.pool, [id])).get(id)).toMatchObject({
      state: 'ready',
      nodeId: null,
      attempt: 0,
    });
    expect(await count(db.pool, `select count(*) from tm_history`)).toBe(0);
    expect(await count(db.pool, `select count(*) from tm_dead_letters`)).toBe(0);
    expect(await nodeRows(a.id)).toBe(0);

    // Another node picks it up.
    const b = await startTestNode(db.url, { shutdownGraceMs: 100, abortGraceMs: 100 });
    await until(async () => (await taskStates(db.pool, [id])).get(id)?.nodeId === b.id, 10_000);
    await until(() => b.stats().inFlight === 1, 10_000, 10);
  });

  it('stop() is idempotent: concurrent and repeated calls resolve, the node stops once', async () => {
    const a = await startTestNode(db.url);
    await a.client.schedule(defs.noop);
    const first = a.stop();
    const second = a.stop();
    await Promise.all([first, second]);
    await a.stop();
    expect(a.state).toBe('stopped');
    expect(await nodeRows(a.id)).toBe(0);
    expect(await count(db.pool, `select count(*) from tm_leader`)).toBe(0);
  });
});
