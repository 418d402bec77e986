/**
 * Flow control across node processes (docs/flow-control.md): concurrency and rate limits checked on
 * what really ran, on two nodes, through a SIGKILLed node whose tasks are taken back and through a
 * forced leader change. The `record` fixture writes each run's interval into `runs`; a trigger of this
 * test's own writes every assignment (a start) into `starts` with its time, independently of the
 * planner's log of starts.
 */
import { describe, expect, it } from 'vitest';
import { record } from './fixtures/definitions.ts';
import type { RecordMessage } from './fixtures/record.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { useNodeClusters, type NodeCluster } from './helpers/node-clusters.ts';
import type { SpawnedNode } from './helpers/spawn.ts';

const DONE_TIMEOUT_MS = 60_000;
const databases = useTestDatabase();

type Cluster = NodeCluster;
const clusters = useNodeClusters(databases);
const stopCluster = clusters.stop;

/** Two nodes; a trigger writes every assignment (a start) into `starts` with its time. */
function startCluster(nodes: number): Promise<Cluster> {
  return clusters.start(
    Array.from({ length: nodes }, () => ({ maxParallelTasksInNode: 8 })),
    `create table starts (task_id uuid, at timestamptz);
     create function record_start() returns trigger language plpgsql as $$
     begin insert into starts values (new.id, clock_timestamp()); return null; end $$;
     create trigger record_start after update of assignment on tm_tasks for each row
       when (new.assignment <> old.assignment) execute function record_start();`,
  );
}

/**
 * The node holding the planner lease, other than `not` (a killed leader's lease stays in the table
 * until it expires, so a failover is seen only once another node holds it).
 */
async function leader(c: Cluster, not?: SpawnedNode): Promise<SpawnedNode> {
  let found: SpawnedNode | undefined;
  await until(async () => {
    const { rows } = await c.db.pool.query<{ node_id: string }>(
      `select node_id from tm_leader where expires_at > now()`,
    );
    found = c.nodes.find((n) => n.id === rows[0]?.node_id && n !== not);
    return found !== undefined;
  }, 30_000);
  return found!;
}

/** Schedules `n` record tasks of a concurrency key. */
function scheduleKeyed(c: Cluster, key: string, n: number, ms: number): Promise<string[]> {
  return c.client.scheduleMany(
    record,
    Array.from({ length: n }, (_, i) => ({
      message: { url: c.db.url, key, seq: i, ms } satisfies RecordMessage,
      concurrencyKey: key,
    })),
  );
}

/** Waits for every task to end (woken by the task-ended notification); all must have completed. */
async function waitCompleted(c: Cluster, ids: string[]): Promise<void> {
  const ended = await Promise.all(ids.map((id) => c.client.waitForTask(id, { timeoutMs: DONE_TIMEOUT_MS })));
  expect(ended.filter((t) => t.state !== 'completed')).toEqual([]);
  expect(
    await count(c.db.pool, `select count(distinct task_id) from runs where task_id = any($1)`, [ids]),
  ).toBe(ids.length);
}

/** Most runs of a key recorded at once (intervals in microseconds, as the database keeps them). */
async function maxOverlap(c: Cluster, key: string): Promise<number> {
  const { rows } = await c.db.pool.query<{ start: string; end: string }>(
    `select (extract(epoch from started_at) * 1e6)::bigint as start, (extract(epoch from ended_at) * 1e6)::bigint as end
     from runs where key = $1`,
    [key],
  );
  const events = rows.flatMap((r) => [
    { t: Number(r.start), d: 1 },
    { t: Number(r.end), d: -1 },
  ]);
  events.sort((a, b) => a.t - b.t || a.d - b.d);
  let open = 0;
  let max = 0;
  for (const e of events) max = Math.max(max, (open += e.d));
  return max;
}

describe.concurrent('flow control on node processes', () => {
  it('never runs more than a key pattern limit of a key, on two nodes and through a SIGKILLed node', async ({
    onTestFinished,
  }) => {
    const c = await startCluster(2);
    onTestFinished(() => stopCluster(c));
    await c.client.setConcurrencyLimit('tenant:*', 2);
    const lead = await leader(c);
    const victim = c.nodes.find((n) => n !== lead)!;
    const keys = ['tenant:a', 'tenant:b', 'tenant:c'];
    const ids = (await Promise.all(keys.map((k) => scheduleKeyed(c, k, 12, 60)))).flat();

    await until(
      async () =>
        (await count(c.db.pool, `select count(*) from tm_tasks where node_id = $1 and state = 'running'`, [
          victim.id,
        ])) >= 1,
    );
    victim.kill('SIGKILL');
    expect(await victim.stopped).toBeNull();

    await waitCompleted(c, ids);
    for (const k of keys) expect(await maxOverlap(c, k), k).toBeLessThanOrEqual(2);
    // The limit was used, not just respected: some key did run two at once.
    expect(Math.max(...(await Promise.all(keys.map((k) => maxOverlap(c, k)))))).toBe(2);
  });

  it('never starts more than a rate limit allows in any window, across a forced leader change', async ({
    onTestFinished,
  }) => {
    const c = await startCluster(2);
    onTestFinished(() => stopCluster(c));
    const K = 4;
    const W = 1_000;
    await c.client.setRateLimit('api', { limit: K, windowMs: W });
    const lead = await leader(c);
    const ids = await scheduleKeyed(c, 'api', 5 * K, 20);

    await until(async () => (await count(c.db.pool, `select count(*) from starts`)) >= K);
    lead.kill('SIGKILL');
    await lead.stopped;
    const next = await leader(c, lead);
    expect(next.id).not.toBe(lead.id);

    await waitCompleted(c, ids);
    const { rows } = await c.db.pool.query<{ ms: number }>(
      `select extract(epoch from at) * 1000 as ms from starts order by at`,
    );
    const at = rows.map((r) => Number(r.ms));
    expect(at.length).toBeGreaterThanOrEqual(ids.length);
    // Any K + 1 consecutive starts span at least a window. The trigger's time precedes the logged one
    // by the few statements between a pass's assignment and its log of starts: 200 ms of slack.
    const spans = at.slice(K).map((t, i) => t - at[i]);
    expect(Math.min(...spans)).toBeGreaterThan(W - 200);
  });
});
