/**
 * Burn-down: N tasks pre-inserted while planning is paused, then run to the last completion by one or
 * more warm nodes. The clock runs from resuming the planner to the flush that completes the Nth task.
 * Also the engine of the CPU run (tasks that burn a fixed amount of CPU instead of no-ops).
 */
import type pg from 'pg';
import type { ScheduleContext, TaskDefinition } from '../../index.ts';
import { analyze, ServerUsageMeter, type ServerUsage } from '../bench-database.ts';
import { BenchCluster, type NodeReport } from '../cluster.ts';
import type { NodeKnobs } from '../node-options.ts';
import { benchNoop, benchSpin } from '../tasks/definitions.ts';
import { pausePlanning, preInsert, waitForCompleted, warmUp } from './measure.ts';

export const FLAT_TASKS = {
  module: new URL('../tasks/definitions.ts', import.meta.url).href,
  exportName: 'flatTasks',
};

export interface BurnDownOptions {
  url: string;
  pool: pg.Pool;
  tasks: number;
  nodes: number;
  spawn: boolean;
  knobs: NodeKnobs;
  /** CPU work per task in xorshift iterations (see tasks/cpu-work.ts); 0 or absent: no-op tasks. */
  iterations?: number;
  /** Tasks run before the measured window (default: 10 % of the run, 100 to 2,000). */
  warmup?: number;
  progressLabel?: string;
  /** Node i's connection string, when not `url` (bench/hosts.ts: each node behind its own proxy). */
  nodeUrl?: (i: number) => string;
}

export interface BurnDownFigures {
  tasks: number;
  warmupTasks: number;
  seconds: number;
  tasksPerSec: number;
  insertSeconds: number;
  /** CPU seconds of the node processes in the window (harness included when in-process). */
  nodeCpuSeconds: number;
  postgres: ServerUsage;
  /** Server transactions per task: the statement economy of the runtime. */
  transactionsPerTask: number;
  nodeReports: NodeReport[];
}

export function defaultWarmup(tasks: number): number {
  return Math.min(2_000, Math.max(100, Math.round(tasks / 10)));
}

export async function runBurnDown(o: BurnDownOptions): Promise<BurnDownFigures> {
  const spinning = (o.iterations ?? 0) > 0;
  const def: TaskDefinition = spinning ? benchSpin : benchNoop;
  const ctx: ((i: number) => ScheduleContext) | undefined = spinning
    ? () => ({ message: { iterations: o.iterations } })
    : undefined;
  const warmupTasks = o.warmup ?? defaultWarmup(o.tasks);

  const cluster = await BenchCluster.start({
    url: o.url,
    nodes: o.nodes,
    spawn: o.spawn,
    knobs: o.knobs,
    tasks: FLAT_TASKS,
    nodeUrl: o.nodeUrl,
  });
  let reports: NodeReport[] | undefined;
  try {
    await warmUp(cluster, o.pool, def, warmupTasks, ctx);
    const pause = await pausePlanning(o.pool);
    let insertSeconds: number;
    try {
      const t = performance.now();
      await preInsert(o.pool, def, o.tasks, ctx);
      insertSeconds = (performance.now() - t) / 1000;
      await analyze(o.pool);
    } catch (error) {
      await pause.resume();
      throw error;
    }
    const meter = new ServerUsageMeter(o.pool);
    await meter.start();
    const target = cluster.totals.completed + o.tasks;
    const base = cluster.totals.completed;
    cluster.markStart();
    const t0 = performance.now();
    await pause.resume();
    await waitForCompleted(cluster, target, { label: o.progressLabel ?? 'burn-down', base, total: o.tasks });
    const seconds = (performance.now() - t0) / 1000;
    await meter.endWindow();
    reports = await cluster.stop();
    const postgres = await meter.stop();
    await assertDrained(o.pool, warmupTasks + o.tasks, def.name);
    return {
      tasks: o.tasks,
      warmupTasks,
      seconds,
      tasksPerSec: o.tasks / seconds,
      insertSeconds,
      nodeCpuSeconds: reports.reduce((s, r) => s + r.cpuSeconds, 0),
      postgres,
      transactionsPerTask: postgres.transactions / o.tasks,
      nodeReports: reports,
    };
  } finally {
    if (!reports) await cluster.stop().catch(() => {});
  }
}

/** Every task ran exactly once to completion: none left, none failed, history has them all. */
export async function assertDrained(pool: pg.Pool, expected: number, name: string): Promise<void> {
  const { rows } = await pool.query<{ hot: number; done: number; other: number; dead: number }>(
    `select (select count(*) from tm_tasks)::int as hot,
       (select count(*) from tm_history where name = $1 and state = 'completed')::int as done,
       (select count(*) from tm_history where state <> 'completed')::int as other,
       (select count(*) from tm_dead_letters)::int as dead`,
    [name],
  );
  const r = rows[0];
  if (r.hot !== 0 || r.done !== expected || r.other !== 0 || r.dead !== 0) {
    throw new Error(
      `run did not end clean: ${r.hot} tasks left, ${r.done} of ${expected} completed in history, ` +
        `${r.other} ended otherwise, ${r.dead} dead-lettered`,
    );
  }
}
