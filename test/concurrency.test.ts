/**
 * Asynchronous handlers interleave on their worker threads: a node runs up to maxParallelTasksInNode
 * of them at once, not one per thread, and never more.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { TaskmillNode } from '../index.ts';
import { record } from './fixtures/definitions.ts';
import { count, waitForTasks, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const db = useTestDatabase();
let node: TaskmillNode;

beforeAll(async () => {
  await db.pool.query(
    `create table runs (task_id uuid, key text, workflow_id uuid, seq int, started_at timestamptz, ended_at timestamptz, pid int)`,
  );
  node = await startTestNode(db.url, { maxParallelTasksInNode: 20, threads: 2 });
});
afterAll(stopAllNodes);

it('runs up to maxParallelTasksInNode asynchronous tasks at once on two threads, and no more', async () => {
  const ids = await node.client.scheduleMany(
    record,
    Array.from({ length: 60 }, (_, i) => ({ message: { url: db.url, key: `k${i}`, ms: 300 } })),
  );
  await waitForTasks(node.client, ids);
  expect(await count(db.pool, `select count(*) from runs`)).toBe(60);
  const { rows } = await db.pool.query<{ peak: number }>(
    `select max(c)::int as peak from (
       select (select count(*) from runs o where o.started_at <= r.started_at and o.ended_at > r.started_at) as c
       from runs r) x`,
  );
  expect(rows[0].peak).toBeGreaterThan(2 * 2);
  expect(rows[0].peak).toBeLessThanOrEqual(20);
});
