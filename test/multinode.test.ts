/**
 * Several node processes on one database: affinity, limits and recovery checked from what really ran.
 * The `record` fixture writes each run's interval and process id into the `runs` table, so every rule
 * is checked on recorded intervals (a recorded interval lies inside the real run, so an overlap seen
 * here is a real one). Nodes are real processes (test/helpers/spawn.ts), killed with real signals.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { v7 as uuidv7 } from 'uuid';
import { PLANNER_DEFAULTS } from '../planner/planner.ts';
import type { TaskDefinition } from '../index.ts';
import { recordStrictParent } from './fixtures/affinity-definitions.ts';
import * as defs from './fixtures/definitions.ts';
import type { RecordMessage } from './fixtures/record.ts';
import { count, until, waitForTasks, useTestDatabase } from './helpers/database.ts';
import { useNodeClusters, type NodeCluster } from './helpers/node-clusters.ts';
import type { SpawnOptions, SpawnedNode } from './helpers/spawn.ts';

const DONE_TIMEOUT_MS = 45_000;
/** Each cluster gets a database of its own (kept with the file's when a test failed). */
const databases = useTestDatabase();

type Cluster = NodeCluster;
const clusters = useNodeClusters(databases);
const startCluster = (options: SpawnOptions[]) => clusters.start(options);
const stopCluster = clusters.stop;

/** Tasks of one affinity key, scheduled workflow after workflow. */
interface KeyPlan {
  key: string;
  /** Workflow ids in creation order. */
  workflows: string[];
}

interface Workload {
  ids: string[];
  keys: KeyPlan[];
}

/**
 * For each key in turn, schedules `workflows` workflows of `tasks` tasks, one statement per workflow, so a
 * key's workflows are created in order and back to back: the later ones are pending while the first
 * runs, and each statement wakes a planning pass that may hand them to another node. (A planner that
 * ignored the workflow rule shows overlaps on most keys with this shape, on two nodes as on three.)
 * `seq` numbers a key's tasks in creation order.
 */
async function scheduleKeyed(
  c: Cluster,
  def: TaskDefinition,
  o: { prefix: string; keys: number; workflows: number; tasks: number; ms: number },
): Promise<Workload> {
  const keys: KeyPlan[] = [];
  const ids: string[] = [];
  for (let k = 0; k < o.keys; k++) {
    const plan: KeyPlan = { key: `${o.prefix}${k}`, workflows: [] };
    keys.push(plan);
    for (let w = 0; w < o.workflows; w++) {
      const workflowId = uuidv7();
      plan.workflows.push(workflowId);
      const batch = await c.client.scheduleMany(
        def,
        Array.from({ length: o.tasks }, (_, i) => ({
          workflowId,
          affinityGroup: 'g',
          affinity: plan.key,
          message: { url: c.db.url, key: plan.key, seq: w * o.tasks + i, ms: o.ms } satisfies RecordMessage,
        })),
      );
      ids.push(...batch);
    }
  }
  return { ids, keys };
}

async function scheduleFree(
  c: Cluster,
  def: TaskDefinition,
  n: number,
  key: string,
  ms: number,
): Promise<string[]> {
  return c.client.scheduleMany(
    def,
    Array.from({ length: n }, (_, i) => ({
      message: { url: c.db.url, key, seq: i, ms } satisfies RecordMessage,
    })),
  );
}

async function waitCompleted(c: Cluster, ids: string[], timeoutMs = DONE_TIMEOUT_MS): Promise<void> {
  try {
    const ended = await waitForTasks(c.client, ids, timeoutMs);
    const other = ended.filter((t) => t.state !== 'completed');
    if (other.length > 0) throw new Error(`tasks ended otherwise: ${JSON.stringify(other)}`);
  } catch (error) {
    const { rows } = await c.db.pool.query(
      `select state, node_id, count(*)::int from tm_tasks where id = any($1) group by 1, 2`,
      [ids],
    );
    const logs = c.nodes.map((n) => `--- node ${n.id} (pid ${n.pid})\n${n.output()}`).join('\n');
    throw new Error(`${(error as Error).message}; left in tm_tasks: ${JSON.stringify(rows)}\n${logs}`);
  }
}

/** Every task has at least one recorded run, and none is left in the hot table. */
async function expectAllRan(c: Cluster, ids: string[]): Promise<void> {
  expect(
    await count(c.db.pool, `select count(distinct task_id) from runs where task_id = any($1)`, [ids]),
  ).toBe(ids.length);
  expect(await count(c.db.pool, `select count(*) from tm_tasks`)).toBe(0);
}

/** Pairs of runs of one key, from different workflows, whose intervals overlap. */
async function crossWorkflowOverlaps(c: Cluster, keys: string[]) {
  const { rows } = await c.db.pool.query(
    `select a.key, a.workflow_id as a_wf, b.workflow_id as b_wf, a.started_at as a_start, a.ended_at as a_end,
       b.started_at as b_start, b.ended_at as b_end, a.pid as a_pid, b.pid as b_pid
     from runs a join runs b on a.key = b.key and a.workflow_id < b.workflow_id
       and a.started_at < b.ended_at and b.started_at < a.ended_at
     where a.key = any($1) limit 10`,
    [keys],
  );
  return rows;
}

/** Per key, the workflows in the order their first run started. */
async function workflowRunOrder(c: Cluster, keys: string[]): Promise<Map<string, string[]>> {
  const { rows } = await c.db.pool.query<{ key: string; workflow_id: string }>(
    `select key, workflow_id from runs where key = any($1)
     group by key, workflow_id order by key, min(started_at)`,
    [keys],
  );
  const order = new Map<string, string[]>();
  for (const r of rows) order.set(r.key, [...(order.get(r.key) ?? []), r.workflow_id]);
  return order;
}

/** Checks the workflow affinity rule on recorded runs: no overlap across workflows, creation order. */
async function expectWorkflowAffinity(c: Cluster, work: Workload): Promise<void> {
  const keys = work.keys.map((k) => k.key);
  expect(await crossWorkflowOverlaps(c, keys)).toEqual([]);
  const order = await workflowRunOrder(c, keys);
  for (const plan of work.keys) expect(order.get(plan.key), plan.key).toEqual(plan.workflows);
}

/** Checks the strict rule: no two runs of one key overlap, and they started in creation (seq) order. */
async function expectStrictAffinity(c: Cluster, work: Workload): Promise<void> {
  const keys = work.keys.map((k) => k.key);
  const { rows: overlaps } = await c.db.pool.query(
    `select a.key, a.seq as a_seq, b.seq as b_seq, a.pid as a_pid, b.pid as b_pid from runs a join runs b
       on a.key = b.key and a.task_id < b.task_id and a.started_at < b.ended_at and b.started_at < a.ended_at
     where a.key = any($1) limit 10`,
    [keys],
  );
  expect(overlaps).toEqual([]);
  const { rows } = await c.db.pool.query<{ key: string; seqs: number[] }>(
    `select key, array_agg(seq order by started_at, ended_at) as seqs from runs where key = any($1) group by key`,
    [keys],
  );
  expect(rows).toHaveLength(keys.length);
  for (const r of rows) expect(r.seqs, r.key).toEqual([...r.seqs].sort((a, b) => a - b));
}

interface Interval {
  start: number;
  end: number;
}

/** Largest number of intervals open at one instant; an interval ending when another starts does not count. */
function maxOverlap(intervals: Interval[]): number {
  const events = intervals.flatMap((i) => [
    { t: i.start, d: 1 },
    { t: i.end, d: -1 },
  ]);
  events.sort((a, b) => a.t - b.t || a.d - b.d);
  let open = 0;
  let max = 0;
  for (const e of events) {
    open += e.d;
    max = Math.max(max, open);
  }
  return max;
}

async function intervals(
  c: Cluster,
  where: string,
  params: unknown[] = [],
): Promise<(Interval & { pid: number })[]> {
  // Microseconds since the epoch: JavaScript dates would round to milliseconds.
  const { rows } = await c.db.pool.query<{ start: string; end: string; pid: number }>(
    `select (extract(epoch from started_at) * 1e6)::bigint as start, (extract(epoch from ended_at) * 1e6)::bigint as end,
       pid from runs where ${where}`,
    params,
  );
  return rows.map((r) => ({ start: Number(r.start), end: Number(r.end), pid: r.pid }));
}

async function leaderId(c: Cluster): Promise<string | undefined> {
  const { rows } = await c.db.pool.query<{ node_id: string }>(
    `select node_id from tm_leader where expires_at > now()`,
  );
  return rows[0]?.node_id;
}

async function waitForLeader(c: Cluster): Promise<SpawnedNode> {
  let leader: SpawnedNode | undefined;
  await until(async () => {
    const id = await leaderId(c);
    leader = c.nodes.find((n) => n.id === id);
    return leader !== undefined;
  }, 10_000);
  return leader!;
}

/**
 * Schedules keyed `record` and `recordStrict` workloads on a running cluster and checks, from what ran,
 * the affinity rules, that nothing was lost or run twice, and that every node took part.
 */
async function checkAffinity(c: Cluster): Promise<void> {
  const [workflow, strict] = await Promise.all([
    scheduleKeyed(c, defs.record, { prefix: 'w', keys: 20, workflows: 4, tasks: 4, ms: 30 }),
    scheduleKeyed(c, defs.recordStrict, { prefix: 's', keys: 8, workflows: 3, tasks: 3, ms: 5 }),
  ]);
  const ids = [...workflow.ids, ...strict.ids];
  expect(ids).toHaveLength(20 * 4 * 4 + 8 * 3 * 3);
  await waitCompleted(c, ids);

  await expectAllRan(c, ids);
  // Nothing crashed, so nothing ran twice.
  expect(await count(c.db.pool, `select count(*) from runs`)).toBe(ids.length);
  await expectWorkflowAffinity(c, workflow);
  await expectStrictAffinity(c, strict);
  // Every node process took part, and tasks of one workflow did run in parallel.
  expect(await count(c.db.pool, `select count(distinct pid) from runs`)).toBe(c.nodes.length);
  expect(
    await count(
      c.db.pool,
      `select count(*) from runs a join runs b on a.workflow_id = b.workflow_id and a.task_id < b.task_id
         and a.started_at < b.ended_at and b.started_at < a.ended_at where a.key like 'w%'`,
    ),
  ).toBeGreaterThan(0);
}

/**
 * Runs `limited` tasks (cluster limit 3) among free `record` tasks on a running cluster of nodes with
 * maxParallelTasksInNode = `capacity`, and checks both limits on the recorded intervals and on samples
 * of the planner's view.
 */
async function checkLimits(c: Cluster, capacity: number): Promise<void> {
  await c.db.pool.query(`truncate runs`);
  const { planFactor } = PLANNER_DEFAULTS;
  let sampled = 0;
  let maxLimitedHeld = 0;
  let maxNodeHeld = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const { rows } = await c.db.pool.query<{ limited: number; node: number }>(
        `select (select count(*) from tm_tasks where name = 'limited' and node_id is not null)::int as limited,
           coalesce((select max(n) from (select count(*) as n from tm_tasks where node_id is not null
             group by node_id) h), 0)::int as node`,
      );
      maxLimitedHeld = Math.max(maxLimitedHeld, rows[0].limited);
      maxNodeHeld = Math.max(maxNodeHeld, rows[0].node);
      sampled++;
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  const ids = [
    ...(await scheduleFree(c, defs.limited, 30, 'limited', 40)),
    ...(await scheduleFree(c, defs.record, 150, 'free', 40)),
  ];
  try {
    await waitCompleted(c, ids);
  } finally {
    sampling = false;
    await sampler;
  }
  await expectAllRan(c, ids);

  const all = await intervals(c, 'true');
  const byPid = new Map<number, Interval[]>();
  for (const i of all) byPid.set(i.pid, [...(byPid.get(i.pid) ?? []), i]);
  expect(byPid.size).toBe(c.nodes.length);
  const perNode = [...byPid.values()].map(maxOverlap);
  const limited = maxOverlap(await intervals(c, `key = 'limited'`));
  // The limits hold, and were reached (so the measurement could have seen a breach).
  for (const max of perNode) expect(max).toBeLessThanOrEqual(capacity);
  expect(Math.max(...perNode)).toBeGreaterThanOrEqual(capacity / 2);
  expect(limited).toBeLessThanOrEqual(3);
  expect(limited).toBeGreaterThanOrEqual(2);
  // Sampled planner view: a node holds at most capacity x plan factor, `limited` at most 3.
  expect(sampled).toBeGreaterThan(10);
  expect(maxLimitedHeld).toBeLessThanOrEqual(3);
  expect(maxNodeHeld).toBeLessThanOrEqual(capacity * planFactor);
}

describe('two node processes on one database', () => {
  let c: Cluster;
  beforeAll(async () => {
    c = await startCluster([{ maxParallelTasksInNode: 8 }, { maxParallelTasksInNode: 8 }]);
  });
  afterAll(() => stopCluster(c));

  it('never runs two workflows of one key at once, runs them in creation order, loses nothing', () =>
    checkAffinity(c));

  it('runs the strict tasks of a key in creation order, whatever their workflows', async () => {
    // P (workflow 1) runs; Q (workflow 2) is queued on the key; P's completion adds its child C to
    // workflow 1. C belongs to the older workflow but was created after Q: Q runs, then C.
    await c.db.pool.query(`truncate runs`);
    const msg = (seq: number) => ({ url: c.db.url, key: 'late', seq, ms: 300 }) satisfies RecordMessage;
    const p = await c.client.schedule(recordStrictParent, {
      affinity: 'late',
      message: { ...msg(0), child: msg(2) },
    });
    await until(
      async () =>
        (await count(c.db.pool, `select count(*) from tm_tasks where id = $1 and state = 'running'`, [p])) ===
        1,
    );
    const q = await c.client.schedule(defs.recordStrict, { affinity: 'late', message: msg(1) });
    // P's workflow (P and its child C) and Q end.
    const older = (await c.client.getTask(p))!.workflowId;
    await c.client.waitForWorkflow(older, { timeoutMs: 15_000 });
    await c.client.waitForTask(q, { timeoutMs: 15_000 });
    expect(await count(c.db.pool, `select count(*) from tm_tasks`)).toBe(0);
    expect(await count(c.db.pool, `select count(*) from runs`)).toBe(3);
    const { rows } = await c.db.pool.query<{ seq: number; task_id: string }>(
      `select seq, task_id from runs order by started_at`,
    );
    expect(rows.map((r) => r.seq)).toEqual([0, 1, 2]);
    expect([rows[0].task_id, rows[1].task_id]).toEqual([p, q]);
    await expectStrictAffinity(c, { ids: [p, q], keys: [{ key: 'late', workflows: [] }] });
  });
});

describe('three node processes on one database', () => {
  let c: Cluster;
  beforeAll(async () => {
    c = await startCluster(Array.from({ length: 3 }, () => ({ maxParallelTasksInNode: 8 })));
  });
  afterAll(() => stopCluster(c));

  it('never runs two workflows of one key at once, runs them in creation order, loses nothing', () =>
    checkAffinity(c));

  it('never exceeds maxParallelTasksInNode per node nor maxParallelInCluster in the cluster', async () => {
    await checkLimits(c, 8);
  });
});

// Independent clusters on their own databases: run at once, so their waits (node timeout, lease
// expiry, task sleeps) overlap. Concurrent tests take their hooks from the test context.
describe.concurrent('node process failures', () => {
  it('recovers every task of a node killed with SIGKILL mid-run; its row is removed', async ({
    onTestFinished,
  }) => {
    const c = await startCluster([{ maxParallelTasksInNode: 10 }, { maxParallelTasksInNode: 10 }]);
    onTestFinished(() => stopCluster(c));
    const leader = await waitForLeader(c);
    const victim = c.nodes.find((n) => n !== leader)!;
    const work = await scheduleKeyed(c, defs.record, {
      prefix: 'k',
      keys: 6,
      workflows: 3,
      tasks: 3,
      ms: 100,
    });
    const ids = [...work.ids, ...(await scheduleFree(c, defs.record, 40, 'free', 200))];

    await until(
      async () =>
        (await count(c.db.pool, `select count(*) from tm_tasks where node_id = $1 and state = 'running'`, [
          victim.id,
        ])) >= 8 && (await count(c.db.pool, `select count(*) from runs where pid = $1`, [victim.pid])) > 0,
    );
    const { rows: held } = await c.db.pool.query<{ id: string }>(
      `select id from tm_tasks where node_id = $1`,
      [victim.id],
    );
    victim.kill('SIGKILL');
    expect(await victim.stopped).toBeNull();
    expect(victim.process.signalCode).toBe('SIGKILL');

    await waitCompleted(c, ids);
    await expectAllRan(c, ids);
    await until(
      async () => (await count(c.db.pool, `select count(*) from tm_nodes where id = $1`, [victim.id])) === 0,
    );
    expect(await count(c.db.pool, `select count(*) from tm_nodes where id = $1`, [leader.id])).toBe(1);
    // The tasks it held ran again on the survivor (those it had not finished before dying).
    const rerun = await count(
      c.db.pool,
      `select count(distinct task_id) from runs where task_id = any($1) and pid = $2`,
      [held.map((h) => h.id), leader.pid],
    );
    expect(rerun).toBeGreaterThan(0);
    await expectWorkflowAffinity(c, work);
  });

  it('moves the planner lease to another node when the leader is killed, and work still completes', async ({
    onTestFinished,
  }) => {
    const c = await startCluster([{ maxParallelTasksInNode: 10 }, { maxParallelTasksInNode: 10 }]);
    onTestFinished(() => stopCluster(c));
    const leader = await waitForLeader(c);
    const survivor = c.nodes.find((n) => n !== leader)!;
    const work = await scheduleKeyed(c, defs.record, {
      prefix: 'k',
      keys: 6,
      workflows: 3,
      tasks: 3,
      ms: 100,
    });
    const ids = [...work.ids, ...(await scheduleFree(c, defs.record, 40, 'free', 150))];
    await until(
      async () =>
        (await count(c.db.pool, `select count(*) from tm_tasks where node_id = $1 and state = 'running'`, [
          leader.id,
        ])) >= 5,
    );
    leader.kill('SIGKILL');
    await leader.stopped;

    // Scheduled after the planner died: only a new leader can plan these.
    const late = await scheduleFree(c, defs.record, 20, 'late', 20);
    await until(async () => (await leaderId(c)) === survivor.id, 10_000);
    await waitCompleted(c, [...ids, ...late]);
    await expectAllRan(c, [...ids, ...late]);
    expect(await count(c.db.pool, `select count(*) from tm_nodes where id = $1`, [leader.id])).toBe(0);
    expect(
      await count(c.db.pool, `select count(*) from runs where key = 'late' and pid = $1`, [survivor.pid]),
    ).toBe(20);
    await expectWorkflowAffinity(c, work);
  });

  it('on SIGTERM a node exits 0 and hands its queued tasks back to run elsewhere, none twice', async ({
    onTestFinished,
  }) => {
    // Two nodes of capacity 2 (one thread each): each holds capacity x plan factor = 4 tasks, 2 running
    // and 2 queued in its mailboxes. The victim's grace period is long enough for its running tasks to
    // finish; its log (info) says what it handed back.
    const c = await startCluster([
      { maxParallelTasksInNode: 2, threads: 1, shutdownGraceMs: 10_000, logLevel: 'info' },
      { maxParallelTasksInNode: 2, threads: 1 },
    ]);
    onTestFinished(() => stopCluster(c));
    const [victim, survivor] = c.nodes;
    // Warm up both worker threads (a cold thread can take seconds to start on a loaded machine).
    const warm = await scheduleFree(c, defs.record, 8, 'warm', 10);
    await waitCompleted(c, warm);
    await until(
      async () => (await count(c.db.pool, `select count(distinct pid) from runs where key = 'warm'`)) === 2,
    );

    // Tasks long enough that the victim's queued ones are still queued when it gets the signal.
    const ids = await scheduleFree(c, defs.record, 8, 'free', 2_000);
    await until(
      async () =>
        (await count(c.db.pool, `select count(*) from tm_tasks where node_id = $1 and state = 'running'`, [
          victim.id,
        ])) === 4,
    );
    const { rows: held } = await c.db.pool.query<{ id: string }>(
      `select id from tm_tasks where node_id = $1`,
      [victim.id],
    );
    victim.kill('SIGTERM');
    expect(await victim.stopped, victim.output()).toBe(0);
    // A graceful stop removes its own row at once (no waiting for the node timeout).
    expect(await count(c.db.pool, `select count(*) from tm_nodes where id = $1`, [victim.id])).toBe(0);

    await waitCompleted(c, ids);
    await expectAllRan(c, ids);
    const { rows: runs } = await c.db.pool.query<{ task_id: string; pid: number }>(
      `select task_id, pid from runs where task_id = any($1) order by started_at`,
      [held.map((h) => h.id)],
    );
    const report = `held ${JSON.stringify(held)}, their runs ${JSON.stringify(runs)}, victim pid ${victim.pid}:\n${victim.output()}`;
    // Nothing ran twice: the running tasks finished on the victim, the queued ones ran on the survivor.
    expect(await count(c.db.pool, `select count(*) from runs where key = 'free'`), report).toBe(ids.length);
    const finishedThere = runs.filter((r) => r.pid === victim.pid).length;
    const handedBack = runs.filter((r) => r.pid === survivor.pid).length;
    expect(finishedThere, report).toBeGreaterThan(0);
    expect(handedBack, report).toBeGreaterThan(0);
    expect(finishedThere + handedBack, report).toBe(held.length);
  });
});
