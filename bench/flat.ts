/**
 * Flat benchmarks of the runtime (no workflows, no affinity):
 *   burn-down   N pre-inserted no-op tasks run to the last completion (default; `npm run demo`)
 *   continuous  a steady backlog for a fixed duration
 *   latency     schedule -> handler start, sequential tasks on an idle node
 *   cpu         tasks of a fixed CPU cost; efficiency = throughput x cost / cores
 *   fairness    one concurrency key floods, others trickle: the trickling tasks' start latency with the
 *               planner's fairness on and off (docs/flow-control.md)
 * Every node knob is an option (see --help). Prints one summary line on stdout and writes the full
 * result to results/flat-<mode>-<time>.json. Uses DATABASE_URL, else the embedded server; each run
 * gets a fresh database, dropped afterwards. `--latency-ms <ms>` puts the nodes behind a loopback TCP
 * proxy (bench/tcp-proxy.ts) that delays every chunk by that much each way, as a network between the
 * nodes and PostgreSQL would (the harness's own connection, which seeds and measures, stays direct).
 */
import { availableParallelism } from 'node:os';
import { Command, Option } from 'commander';
import { createBenchDatabase, openBenchServer, type BenchDatabase } from './bench-database.ts';
import { proxyForUrl, type TcpProxy } from './tcp-proxy.ts';
import { runBurnDown } from './flat/burn-down.ts';
import { runContinuous } from './flat/continuous.ts';
import { runLatency } from './flat/latency.ts';
import { runFairness } from './flat/fairness.ts';
import {
  addNodeOptions,
  describeKnobs,
  intArg,
  knobsFromCli,
  numberArg,
  type NodeCliOptions,
} from './node-options.ts';
import { TARGETS } from './targets.ts';
import {
  costColumns,
  finishRun,
  postgresInfo,
  round,
  startRun,
  writeResult,
  type BenchResult,
  type RunStart,
  type Target,
} from './result-file.ts';
import { calibrate } from './tasks/cpu-work.ts';

type Mode = 'burn-down' | 'continuous' | 'latency' | 'cpu' | 'fairness';

interface FlatCli extends NodeCliOptions {
  mode: Mode;
  tasks?: number;
  warmup?: number;
  duration: number;
  backlog: number;
  samples: number;
  costMs: number;
  trickle: number;
  trickleKeys: number;
  trickleIntervalMs: number;
  outDir?: string;
  save: boolean;
  latencyMs?: number;
}

const DEFAULT_TASKS: Record<Mode, number> = {
  'burn-down': 20_000,
  continuous: 0,
  latency: 0,
  cpu: 2_000,
  fairness: 20_000,
};

function command(): Command {
  const cmd = new Command('flat')
    .description('Flat throughput, latency and CPU benchmarks of taskmill')
    .addOption(
      new Option('--mode <mode>', 'what to run')
        .choices(['burn-down', 'continuous', 'latency', 'cpu', 'fairness'])
        .default('burn-down'),
    )
    .option(
      '--tasks <n>',
      'tasks to run (burn-down: 20000, cpu: 2000; fairness: the flooding key, 20000)',
      intArg('--tasks', 1),
    )
    .option(
      '--warmup <n>',
      'tasks run before measuring (default: 10 % of the run, 100 to 2000)',
      intArg('--warmup'),
    )
    .option('--duration <s>', 'continuous: seconds to run', intArg('--duration', 1), 10)
    .option('--backlog <n>', 'continuous: tasks kept in the system', intArg('--backlog', 1), 5_000)
    .option('--samples <n>', 'latency: sequential tasks measured', intArg('--samples', 1), 1_000)
    .option('--cost-ms <ms>', 'cpu: CPU milliseconds per task', numberArg('--cost-ms', 0.01), 10)
    .option('--trickle <n>', 'fairness: tasks of the trickling keys', intArg('--trickle', 1), 100)
    .option('--trickle-keys <n>', 'fairness: trickling keys', intArg('--trickle-keys', 1), 4)
    .option(
      '--trickle-interval-ms <ms>',
      'fairness: one trickling task every this many ms',
      intArg('--trickle-interval-ms', 1),
      10,
    )
    .option(
      '--latency-ms <ms>',
      'nodes reach PostgreSQL through a loopback proxy adding this delay each way (docs/network-faults.md)',
      intArg('--latency-ms', 0),
    )
    .option('--out-dir <dir>', 'where the result file goes (default: results/, or TASKMILL_RESULTS_DIR)')
    .option('--no-save', 'do not write a result file');
  return addNodeOptions(cmd);
}

async function main(): Promise<void> {
  const o = command().parse().opts<FlatCli>();
  const run = startRun(`flat-${o.mode}`);
  const server = await openBenchServer();
  let db: BenchDatabase | undefined;
  let proxy: TcpProxy | undefined;
  try {
    db = await createBenchDatabase(server.url, `flat_${o.mode}`);
    if (o.latencyMs !== undefined) proxy = await proxyForUrl(db.url, { latencyMs: o.latencyMs });
    const result = await runMode(o, run, db, proxy);
    // Evidence the nodes' traffic went through the proxy: its connections and bytes.
    if (proxy) result.figures.proxy = proxy.stats();
    const file = o.save ? writeResult(result, o.outDir) : undefined;
    console.log(`${result.summary}${file ? `; result: ${file}` : ''}`);
  } finally {
    await proxy?.close();
    await db?.drop().catch((error) => console.error('could not drop the bench database:', error));
    await server.stop();
  }
}

async function runMode(o: FlatCli, run: RunStart, db: BenchDatabase, proxy?: TcpProxy): Promise<BenchResult> {
  const knobs = knobsFromCli(o);
  const url = proxy ? proxy.url(db.url) : db.url;
  const where = { url, pool: db.pool, nodes: o.nodes, spawn: o.spawn, knobs };
  const nodesText =
    `${o.nodes} node${o.nodes > 1 ? 's' : ''} (${o.spawn ? 'processes' : 'in-process'})` +
    (proxy ? ` behind ${o.latencyMs} ms of added latency each way` : '');
  const common = {
    nodes: o.nodes,
    spawn: o.spawn,
    ...describeKnobs(knobs),
    ...(proxy ? { latencyMs: o.latencyMs } : {}),
  };
  const postgres = await postgresInfo(db.pool);
  const cores = availableParallelism();

  if (o.mode === 'latency') {
    const f = await runLatency({ ...where, samples: o.samples, warmup: o.warmup });
    const s = f.scheduleToStart;
    const targets: Target[] = [
      {
        name: 'schedule-to-start p50',
        goal: `< ${TARGETS.latency.p50Ms} ms`,
        value: s.p50Ms,
        met: s.p50Ms < TARGETS.latency.p50Ms,
      },
      {
        name: 'schedule-to-start p99',
        goal: `< ${TARGETS.latency.p99Ms} ms`,
        value: s.p99Ms,
        met: s.p99Ms < TARGETS.latency.p99Ms,
      },
    ];
    return finishRun(run, {
      summary:
        `flat latency: ${f.samples} sequential tasks on ${nodesText}: schedule->start p50 ${s.p50Ms} ms, ` +
        `p99 ${s.p99Ms} ms, max ${s.maxMs} ms; end-to-end p50 ${f.endToEnd.p50Ms} ms, p99 ${f.endToEnd.p99Ms} ms`,
      postgres,
      params: { mode: o.mode, samples: o.samples, ...common },
      figures: { ...f },
      headline: { name: 'p50 schedule-to-start', value: s.p50Ms, unit: 'ms' },
      table: {
        Nodes: o.nodes,
        Samples: f.samples,
        'p50 (ms)': s.p50Ms,
        'p90 (ms)': s.p90Ms,
        'p99 (ms)': s.p99Ms,
        'max (ms)': s.maxMs,
        'end-to-end p50 (ms)': f.endToEnd.p50Ms,
        'end-to-end p99 (ms)': f.endToEnd.p99Ms,
      },
      targets,
    });
  }

  if (o.mode === 'fairness') {
    const flood = o.tasks ?? DEFAULT_TASKS.fairness;
    const f = await runFairness({
      ...where,
      flood,
      samples: o.trickle,
      keys: o.trickleKeys,
      intervalMs: o.trickleIntervalMs,
    });
    const line = (r: typeof f.on) =>
      `p50 ${r.trickleStart.p50Ms} ms, p99 ${r.trickleStart.p99Ms} ms, max ${r.trickleStart.maxMs} ms`;
    return finishRun(run, {
      summary:
        `flat fairness: ${flood} tasks of one key, ${o.trickle} trickling over ${o.trickleKeys} keys on ` +
        `${nodesText}: trickle schedule->start with fairness ${line(f.on)}; without ${line(f.off)}`,
      postgres,
      params: {
        mode: o.mode,
        flood,
        trickle: o.trickle,
        trickleKeys: o.trickleKeys,
        trickleIntervalMs: o.trickleIntervalMs,
        ...common,
      },
      figures: { ...f },
      headline: { name: 'trickle p99 with fairness', value: f.on.trickleStart.p99Ms, unit: 'ms' },
      table: {
        Nodes: o.nodes,
        Flood: flood,
        Trickle: o.trickle,
        'Fair p50 (ms)': f.on.trickleStart.p50Ms,
        'Fair p99 (ms)': f.on.trickleStart.p99Ms,
        'Fair max (ms)': f.on.trickleStart.maxMs,
        'Unfair p50 (ms)': f.off.trickleStart.p50Ms,
        'Unfair p99 (ms)': f.off.trickleStart.p99Ms,
        'Unfair max (ms)': f.off.trickleStart.maxMs,
        'Drain fair (s)': round(f.on.floodSeconds, 2),
        'Drain unfair (s)': round(f.off.floodSeconds, 2),
      },
    });
  }

  if (o.mode === 'continuous') {
    const f = await runContinuous({ ...where, durationSeconds: o.duration, backlog: o.backlog });
    return finishRun(run, {
      summary:
        `flat continuous: ${round(f.tasksPerSec, 0)} tasks/s over ${round(f.seconds)} s with a backlog of ` +
        `${f.backlog} on ${nodesText} (per second ${f.perSecond.min}-${f.perSecond.max}; time in system ` +
        `p50 ${f.sojournMs.p50} ms, p99 ${f.sojournMs.p99} ms)`,
      postgres,
      params: { mode: o.mode, durationSeconds: o.duration, backlog: o.backlog, ...common },
      figures: { ...f },
      headline: { name: 'throughput', value: round(f.tasksPerSec, 0), unit: 'tasks/s' },
      table: {
        Nodes: o.nodes,
        'Duration (s)': round(f.seconds),
        Backlog: f.backlog,
        Completed: f.completed,
        'Tasks/s': round(f.tasksPerSec, 0),
        'Min/s': f.perSecond.min,
        'Max/s': f.perSecond.max,
        'In system p50 (ms)': f.sojournMs.p50,
        'In system p99 (ms)': f.sojournMs.p99,
        ...costColumns(f.nodeCpuSeconds, f.postgres.cpuSeconds, f.transactionsPerTask),
      },
    });
  }

  const cpu = o.mode === 'cpu';
  const tasks = o.tasks ?? DEFAULT_TASKS[o.mode];
  const iterations = cpu ? calibrate(o.costMs) : 0;
  const f = await runBurnDown({ ...where, tasks, warmup: o.warmup, iterations, progressLabel: o.mode });
  const tableBase = {
    Nodes: o.nodes,
    Tasks: tasks,
    'Time (s)': round(f.seconds, 2),
    'Tasks/s': round(f.tasksPerSec, 0),
  };
  if (cpu) {
    const efficiency = (f.tasksPerSec * (o.costMs / 1000)) / cores;
    return finishRun(run, {
      summary:
        `flat cpu: ${tasks} tasks of ${o.costMs} ms CPU on ${nodesText} in ${round(f.seconds, 2)} s = ` +
        `${round(f.tasksPerSec, 0)} tasks/s, efficiency ${round(efficiency * 100)} % of ${cores} cores`,
      postgres,
      params: { mode: o.mode, tasks, costMs: o.costMs, iterationsPerTask: iterations, cores, ...common },
      figures: { ...f, efficiency },
      headline: { name: 'efficiency', value: round(efficiency * 100), unit: '%' },
      table: {
        ...tableBase,
        'Cost (ms)': o.costMs,
        Cores: cores,
        Threads: String(common.threads),
        'Efficiency (%)': round(efficiency * 100),
        ...costColumns(f.nodeCpuSeconds, f.postgres.cpuSeconds, f.transactionsPerTask),
      },
      targets:
        o.costMs >= TARGETS.cpuEfficiency.minCostMs
          ? [
              {
                name: `CPU efficiency (${o.costMs} ms tasks)`,
                goal: `>= ${TARGETS.cpuEfficiency.min * 100} %`,
                value: round(efficiency * 100),
                met: efficiency >= TARGETS.cpuEfficiency.min,
              },
            ]
          : undefined,
    });
  }
  return finishRun(run, {
    summary:
      `flat burn-down: ${tasks} no-op tasks on ${nodesText} in ${round(f.seconds, 2)} s = ` +
      `${round(f.tasksPerSec, 0)} tasks/s (node CPU ${round(f.nodeCpuSeconds)} s, PostgreSQL CPU ` +
      `${f.postgres.cpuSeconds === null ? 'n/a' : `${round(f.postgres.cpuSeconds)} s`}, ` +
      `${round(f.transactionsPerTask, 3)} transactions/task)`,
    postgres,
    params: { mode: o.mode, tasks, ...common },
    figures: { ...f },
    headline: { name: 'throughput', value: round(f.tasksPerSec, 0), unit: 'tasks/s' },
    table: {
      ...tableBase,
      'batch-size': String(common.batchSize),
      'plan-factor': String(common.planFactor),
      'polling-delay': String(common.pollingDelay),
      'max-parallel-tasks-in-node': String(common.maxParallelTasksInNode),
      Threads: String(common.threads),
      'Micro-batch': String(common.microBatchSize),
      ...costColumns(f.nodeCpuSeconds, f.postgres.cpuSeconds, f.transactionsPerTask),
    },
  });
}

main().catch((error) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
