/**
 * Continuous load: a producer keeps a steady backlog of ready no-op tasks for a fixed duration while
 * the nodes work it off. Reports the throughput over the window, its spread per second, and the time
 * tasks spent in the system (created -> finished, database clock) for those finished in the window.
 */
import type pg from 'pg';
import { TaskmillClient } from '../../index.ts';
import { newTask } from '../../task/schedule-context.ts';
import { ServerUsageMeter, type ServerUsage } from '../bench-database.ts';
import { BenchCluster, type NodeReport } from '../cluster.ts';
import type { NodeKnobs } from '../node-options.ts';
import { Progress } from '../../log/progress.ts';
import { benchNoop } from '../tasks/definitions.ts';
import { FLAT_TASKS, defaultWarmup } from './burn-down.ts';
import { warmUp } from './measure.ts';

export interface ContinuousOptions {
  url: string;
  pool: pg.Pool;
  durationSeconds: number;
  /** Ready-or-running tasks the producer keeps in the system. */
  backlog: number;
  nodes: number;
  spawn: boolean;
  knobs: NodeKnobs;
}

export interface ContinuousFigures {
  seconds: number;
  backlog: number;
  completed: number;
  tasksPerSec: number;
  /** Completions per whole second of the window. */
  perSecond: { min: number; max: number; samples: number[] };
  /** Created -> finished (database clock) of the tasks finished in the window. */
  sojournMs: { p50: number; p99: number };
  scheduled: number;
  nodeCpuSeconds: number;
  postgres: ServerUsage;
  transactionsPerTask: number;
  nodeReports: NodeReport[];
}

/** Largest insert the producer makes at once. */
const TOP_UP_CHUNK = 5_000;

export async function runContinuous(o: ContinuousOptions): Promise<ContinuousFigures> {
  const cluster = await BenchCluster.start({
    url: o.url,
    nodes: o.nodes,
    spawn: o.spawn,
    knobs: o.knobs,
    tasks: FLAT_TASKS,
  });
  let reports: NodeReport[] | undefined;
  try {
    await warmUp(cluster, o.pool, benchNoop, defaultWarmup(o.backlog));
    const client = new TaskmillClient({ pool: o.pool });
    const base = cluster.totals.completed;
    let scheduled = 0;
    let inserting: Promise<void> | undefined;
    let producerError: unknown;
    const topUp = () => {
      const outstanding = scheduled - (cluster.totals.completed - base);
      const deficit = o.backlog - outstanding;
      if (inserting || deficit < Math.min(1_000, Math.ceil(o.backlog / 4))) return;
      const n = Math.min(deficit, TOP_UP_CHUNK);
      scheduled += n;
      inserting = client
        .insert(Array.from({ length: n }, () => newTask(benchNoop, {})))
        .catch((error) => (producerError ??= error))
        .finally(() => {
          inserting = undefined;
          topUp();
        });
    };
    const meter = new ServerUsageMeter(o.pool);
    await meter.start();
    const { rows: dbStart } = await o.pool.query<{ now: Date }>('select clock_timestamp() as now');
    cluster.markStart();
    const t0 = performance.now();
    cluster.on('flush', topUp);
    topUp();
    const samples: number[] = [];
    const bar = new Progress({ label: 'continuous', total: o.durationSeconds });
    let last = cluster.totals.completed;
    for (let s = 1; s <= o.durationSeconds; s++) {
      await new Promise((r) => setTimeout(r, t0 + s * 1000 - performance.now()));
      if (producerError) throw producerError;
      const t = cluster.totals;
      if (t.failed + t.deadLettered + t.retried > 0)
        throw new Error('tasks failed during the continuous run');
      samples.push(t.completed - last);
      last = t.completed;
      bar.update(s);
    }
    bar.end();
    const seconds = (performance.now() - t0) / 1000;
    const completed = cluster.totals.completed - base;
    const { rows: dbEnd } = await o.pool.query<{ now: Date }>('select clock_timestamp() as now');
    cluster.off('flush', topUp);
    await meter.endWindow();
    await inserting;
    reports = await cluster.stop();
    const postgres = await meter.stop();
    const { rows } = await o.pool.query<{ p50: number; p99: number }>(
      `select percentile_cont(0.5) within group (order by ms) as p50,
         percentile_cont(0.99) within group (order by ms) as p99
       from (select extract(epoch from finished_at - created_at) * 1000 as ms from tm_history
             where name = $1 and finished_at between $2 and $3) s`,
      [benchNoop.name, dbStart[0].now, dbEnd[0].now],
    );
    return {
      seconds,
      backlog: o.backlog,
      completed,
      tasksPerSec: completed / seconds,
      perSecond: { min: Math.min(...samples), max: Math.max(...samples), samples },
      sojournMs: { p50: Math.round(rows[0].p50 ?? 0), p99: Math.round(rows[0].p99 ?? 0) },
      scheduled,
      nodeCpuSeconds: reports.reduce((sum, r) => sum + r.cpuSeconds, 0),
      postgres,
      transactionsPerTask: completed > 0 ? postgres.transactions / completed : 0,
      nodeReports: reports,
    };
  } finally {
    if (!reports) await cluster.stop().catch(() => {});
  }
}
