/**
 * One row of the shards bench: K shards, each a fresh database on its own server with its own node
 * processes (and so its own planner), and the flat burn-down scheduled through one ShardedClient.
 *
 * Every shard is warmed up, then paused (its planner's advisory lock held, bench/flat/measure.ts) while
 * the ShardedClient schedules the tasks (keyless no-ops: the client spreads them over the shards in
 * turn); then every shard resumes at once and the clock runs to the last completion on any shard.
 * Each shard reports its own time, PostgreSQL CPU and transactions; the row's throughput is all tasks
 * over the slowest shard's time.
 */
import { ShardedClient, type ScheduleContext } from '../../index.ts';
import { Progress } from '../../log/progress.ts';
import { analyze, createBenchDatabase, ServerUsageMeter, type BenchDatabase } from '../bench-database.ts';
import { BenchCluster, type NodeReport } from '../cluster.ts';
import { assertDrained, FLAT_TASKS } from '../flat/burn-down.ts';
import { pausePlanning, waitForCompleted, warmUp, type PlanningPause } from '../flat/measure.ts';
import type { NodeKnobs } from '../node-options.ts';
import { benchNoop } from '../tasks/definitions.ts';

/** Tasks per scheduleMany() call of the ShardedClient (one multi-row insert per shard each). */
const SCHEDULE_CHUNK = 5_000;

export interface ShardsRowOptions {
  /** Server URLs, one per shard. */
  servers: string[];
  tasks: number;
  warmupPerShard: number;
  nodesPerShard: number;
  knobs: NodeKnobs;
}

export interface ShardFigures {
  shard: string;
  tasks: number;
  seconds: number;
  tasksPerSec: number;
  postgresCpuSeconds: number | null;
  postgresCpuMicrosPerTask: number | null;
  transactionsPerTask: number;
  nodeCpuSeconds: number;
  nodeReports: NodeReport[];
}

export interface ShardsRow {
  shards: number;
  tasks: number;
  /** Resume -> last completion on any shard. */
  seconds: number;
  tasksPerSec: number;
  /** Time the ShardedClient took to schedule every task (planners paused). */
  scheduleSeconds: number;
  scheduledPerSec: number;
  postgresCpuSeconds: number | null;
  postgresCpuMicrosPerTask: number | null;
  nodeCpuSeconds: number;
  perShard: ShardFigures[];
}

interface ShardRun {
  name: string;
  db: BenchDatabase;
  cluster: BenchCluster;
}

export async function runShardsRow(o: ShardsRowOptions): Promise<ShardsRow> {
  const k = o.servers.length;
  const runs: ShardRun[] = [];
  const pauses: PlanningPause[] = [];
  let client: ShardedClient | undefined;
  let stopped = false;
  try {
    for (const [i, url] of o.servers.entries()) {
      const db = await createBenchDatabase(url, `shards_${k}_${i}`);
      const name = `shard-${i}`;
      const cluster = await BenchCluster.start({
        url: db.url,
        nodes: o.nodesPerShard,
        spawn: true,
        knobs: o.knobs,
        tasks: FLAT_TASKS,
        namePrefix: `${name}-of-${k}`,
      }).catch(async (error: unknown) => {
        await db.drop().catch(() => {});
        throw error;
      });
      runs.push({ name, db, cluster });
    }
    await Promise.all(runs.map((r) => warmUp(r.cluster, r.db.pool, benchNoop, o.warmupPerShard)));
    for (const r of runs) pauses.push(await pausePlanning(r.db.pool));

    client = new ShardedClient({ shards: runs.map((r) => ({ name: r.name, pool: r.db.pool })) });
    const t = performance.now();
    for (let offset = 0; offset < o.tasks; offset += SCHEDULE_CHUNK) {
      const n = Math.min(SCHEDULE_CHUNK, o.tasks - offset);
      await client.scheduleMany(
        benchNoop,
        Array.from({ length: n }, (): ScheduleContext => ({})),
      );
    }
    const scheduleSeconds = (performance.now() - t) / 1000;
    const shares = await Promise.all(
      runs.map(async (r) => {
        await analyze(r.db.pool);
        const { rows } = await r.db.pool.query<{ n: number }>('select count(*)::int as n from tm_tasks');
        return rows[0].n;
      }),
    );

    const meters = runs.map((r) => new ServerUsageMeter(r.db.pool));
    await Promise.all(meters.map((m) => m.start()));
    const bases = runs.map((r) => r.cluster.totals.completed);
    const progress = new Progress({ label: `${k} shard${k > 1 ? 's' : ''}`, total: o.tasks });
    const onFlush = () =>
      progress.update(runs.reduce((s, r, i) => s + r.cluster.totals.completed - bases[i], 0));
    for (const r of runs) {
      r.cluster.on('flush', onFlush);
      r.cluster.markStart();
    }
    const t0 = performance.now();
    await Promise.all(pauses.map((p) => p.resume()));
    let seconds: number[];
    try {
      seconds = await Promise.all(
        runs.map(async (r, i) => {
          await waitForCompleted(r.cluster, bases[i] + shares[i]);
          return (performance.now() - t0) / 1000;
        }),
      );
    } finally {
      progress.end();
      for (const r of runs) r.cluster.off('flush', onFlush);
    }
    await Promise.all(meters.map((m) => m.endWindow()));
    const reports = await Promise.all(runs.map((r) => r.cluster.stop()));
    stopped = true;
    const usage = await Promise.all(meters.map((m) => m.stop()));
    await Promise.all(
      runs.map((r, i) => assertDrained(r.db.pool, o.warmupPerShard + shares[i], benchNoop.name)),
    );

    const perShard = runs.map((r, i): ShardFigures => {
      const cpu = usage[i].cpuSeconds;
      return {
        shard: r.name,
        tasks: shares[i],
        seconds: seconds[i],
        tasksPerSec: shares[i] / seconds[i],
        postgresCpuSeconds: cpu,
        postgresCpuMicrosPerTask: cpu === null ? null : (cpu / shares[i]) * 1e6,
        transactionsPerTask: usage[i].transactions / shares[i],
        nodeCpuSeconds: sum(reports[i].map((n) => n.cpuSeconds)),
        nodeReports: reports[i],
      };
    });
    const slowest = Math.max(...seconds);
    const cpus = perShard.map((s) => s.postgresCpuSeconds);
    const postgresCpuSeconds = cpus.some((c) => c === null) ? null : sum(cpus as number[]);
    return {
      shards: k,
      tasks: o.tasks,
      seconds: slowest,
      tasksPerSec: o.tasks / slowest,
      scheduleSeconds,
      scheduledPerSec: o.tasks / scheduleSeconds,
      postgresCpuSeconds,
      postgresCpuMicrosPerTask: postgresCpuSeconds === null ? null : (postgresCpuSeconds / o.tasks) * 1e6,
      nodeCpuSeconds: sum(perShard.map((s) => s.nodeCpuSeconds)),
      perShard,
    };
  } finally {
    for (const p of pauses) await p.resume().catch(() => {});
    await client?.close().catch(() => {});
    if (!stopped) await Promise.all(runs.map((r) => r.cluster.stop().catch(() => {})));
    await Promise.all(
      runs.map((r) => r.db.drop().catch((error) => console.error('could not drop a shard database:', error))),
    );
  }
}

function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
