/**
 * The distributed-task-framework perf workload (README.md, "Performance", "The benchmark workload"): P pipelines over
 * A affinities, L1 x L2 tasks each, a task duration that is really spent (CPU work or sleep).
 * Prints one row with the columns of the published table, and writes the full result (latency
 * percentiles, per-node CPU, PostgreSQL CPU and transactions, machine, git commit) to
 * results/workflow-<time>.json. Exits non-zero when a pipeline FAILED or a task is missing.
 *
 * Framework knob -> taskmill option: batch-size -> planner batch size; polling-delay -> planner polling
 * delay map; plan-factor -> plan factor; max-parallel-tasks-in-node -> node limit;
 * max-parallel-tasks-in-cluster-default -> every task's maxParallelInCluster; new-batch-size -> the
 * completer's batch (new tasks are inserted with the completions that create them); manage-delay ->
 * the completer's flush interval.
 *
 *   tsx bench/workflow.ts --pipelines 1000 --affinities 1000 --l1 10 --l2 10
 */
import { Command, Option } from 'commander';
import { createBenchDatabase, openBenchServer, type BenchDatabase } from './bench-database.ts';
import { markdownTable } from './markdown-table.ts';
import {
  addNodeOptions,
  describeKnobs,
  intArg,
  knobsFromCli,
  numberArg,
  type NodeCliOptions,
  type NodeKnobs,
} from './node-options.ts';
import {
  costColumns,
  finishRun,
  postgresInfo,
  round,
  startRun,
  writeResult,
  type BenchResult,
} from './result-file.ts';
import { TARGETS } from './targets.ts';
import { calibrate } from './tasks/cpu-work.ts';
import { PUBLISHED_COLUMNS } from './workflow/columns.ts';
import { runWorkflow, type WorkflowFigures } from './workflow/run.ts';
import type { Work, WorkflowShapeCli } from './workflow/work.ts';

interface WorkflowCli extends NodeCliOptions, WorkflowShapeCli {
  maxParallelTasksInClusterDefault?: number;
  newBatchSize?: number;
  manageDelay?: number;
  stallTimeout: number;
  breakAffinity: boolean;
  runtimeOnly: boolean;
  outDir?: string;
  save: boolean;
}

function command(): Command {
  const cmd = new Command('workflow')
    .description('The distributed-task-framework perf workload: pipelines of joins, affinity, exactly-once')
    .option('--pipelines <n>', 'P: pipelines', intArg('--pipelines', 1), 100)
    .option('--affinities <n>', 'A: affinities (default: P)', intArg('--affinities', 1))
    .option('--l1 <n>', 'L1: CHILD1 tasks per pipeline', intArg('--l1', 1), 10)
    .option('--l2 <n>', 'L2: CHILD2 tasks per CHILD1', intArg('--l2', 1), 10)
    .option('--task-duration-ms <ms>', 'time every pipeline task spends', numberArg('--task-duration-ms'), 1)
    .addOption(
      new Option('--task-work <kind>', 'how the duration is spent').choices(['cpu', 'sleep']).default('cpu'),
    )
    .option(
      '--max-parallel-tasks-in-cluster-default <n>',
      'cluster-wide limit per task (default: none)',
      intArg('--max-parallel-tasks-in-cluster-default', 1),
    )
    .option('--new-batch-size <n>', 'completer batch size (framework name)', intArg('--new-batch-size', 1))
    .option('--manage-delay <ms>', 'completer flush interval (framework name)', intArg('--manage-delay'))
    .option(
      '--stall-timeout <s>',
      'fail when no pipeline ends for this long',
      intArg('--stall-timeout', 1),
      300,
    )
    .option(
      '--break-affinity',
      'self-test of the checks: run pipelines without affinity, so the run must fail with FAILED pipelines',
      false,
    )
    .option(
      '--runtime-only',
      "handlers do no SQL of their own (the same task graph and checks of the messages): the runtime's own cost",
      false,
    )
    .option('--out-dir <dir>', 'where the result file goes (default: results/, or TASKMILL_RESULTS_DIR)')
    .option('--no-save', 'do not write a result file');
  return addNodeOptions(cmd);
}

function knobsOf(o: WorkflowCli): NodeKnobs {
  return knobsFromCli({
    ...o,
    completerBatchSize: o.newBatchSize ?? o.completerBatchSize,
    completerFlushMs: o.manageDelay ?? o.completerFlushMs,
  });
}

function work(o: WorkflowCli): Work {
  if (o.taskDurationMs <= 0) return { mode: 'none' };
  if (o.taskWork === 'sleep') return { mode: 'sleep', ms: o.taskDurationMs };
  return { mode: 'cpu', iterations: calibrate(o.taskDurationMs) };
}

async function main(): Promise<void> {
  const cmd = command().parse();
  const o = cmd.opts<WorkflowCli>();
  if (o.runtimeOnly && o.breakAffinity) {
    cmd.error(
      "error: --break-affinity needs the handlers' rows to detect the broken affinity; drop --runtime-only",
    );
  }
  const run = startRun('workflow');
  const server = await openBenchServer();
  let db: BenchDatabase | undefined;
  let result: BenchResult;
  try {
    db = await createBenchDatabase(server.url, 'workflow');
    const knobs = knobsOf(o);
    const postgres = await postgresInfo(db.pool);
    const w = work(o);
    const affinities = o.affinities ?? o.pipelines;
    const f = await runWorkflow({
      url: db.url,
      pool: db.pool,
      pipelines: o.pipelines,
      affinities,
      l1: o.l1,
      l2: o.l2,
      work: w,
      nodes: o.nodes,
      spawn: o.spawn,
      knobs,
      maxParallelInCluster: o.maxParallelTasksInClusterDefault,
      stallTimeoutMs: o.stallTimeout * 1000,
      breakAffinity: o.breakAffinity,
      runtimeOnly: o.runtimeOnly,
    });
    result = buildResult(run, o, knobs, affinities, w, f, postgres);
  } finally {
    await db?.drop().catch((error) => console.error('could not drop the bench database:', error));
    await server.stop();
  }
  process.stderr.write(`${markdownTable([result.table], [...PUBLISHED_COLUMNS])}\n`);
  const file = o.save ? writeResult(result, o.outDir) : undefined;
  console.log(`${result.summary}${file ? `; result: ${file}` : ''}`);
}

function buildResult(
  run: ReturnType<typeof startRun>,
  o: WorkflowCli,
  knobs: NodeKnobs,
  affinities: number,
  w: Work,
  f: WorkflowFigures,
  postgres: Awaited<ReturnType<typeof postgresInfo>>,
): BenchResult {
  const k = describeKnobs(knobs);
  const rps = Math.round(f.rps);
  const table: Record<string, string | number> = {
    Nodes: o.nodes,
    Logs: o.logLevel === 'silent' ? 'off' : o.logLevel,
    'max-parallel-tasks-in-cluster-default': o.maxParallelTasksInClusterDefault ?? '-',
    'batch-size': k.batchSize ?? '-',
    'polling-delay': k.pollingDelay ?? '-',
    'new-batch-size': k.completerBatchSize,
    'max-parallel-tasks-in-node': k.maxParallelTasksInNode,
    'manage-delay': `${k.completerFlushMs} ms`,
    'plan-factor': k.planFactor === undefined ? '-' : k.planFactor.toFixed(1),
    'Total tasks': f.totalTasks.toLocaleString('en-US').replace(/,/g, '_'),
    'Total time': `${round(f.seconds, 1)} sec`,
    RPM: Math.round(f.rpm),
    RPS: rps,
  };
  const headlineRun = o.pipelines >= TARGETS.workflow.pipelines && o.nodes === 1;
  return finishRun(run, {
    summary:
      `workflow: ${f.totalTasks} tasks (P=${o.pipelines}, A=${affinities}, L1=${o.l1}, L2=${o.l2}, ` +
      `${o.taskDurationMs} ms ${o.taskDurationMs > 0 ? o.taskWork : ''}${o.runtimeOnly ? ', runtime only' : ''}) on ${o.nodes} node${o.nodes > 1 ? 's' : ''}` +
      ` in ${round(f.seconds, 2)} s = ${rps} RPS, all ${f.pipelinesDone} pipelines DONE; ` +
      `child start p50 ${f.childStartLatency.p50Ms} ms, p99 ${f.childStartLatency.p99Ms} ms; ` +
      `PostgreSQL CPU ${f.postgres.cpuSeconds === null ? 'n/a' : `${Math.round((f.postgres.cpuSeconds / f.totalTasks) * 1e6)} µs`}` +
      ` and ${round(f.transactionsPerTask, 2)} transactions per task`,
    postgres,
    params: {
      pipelines: o.pipelines,
      affinities,
      l1: o.l1,
      l2: o.l2,
      taskDurationMs: o.taskDurationMs,
      taskWork: o.taskDurationMs > 0 ? o.taskWork : 'none',
      work: w,
      nodes: o.nodes,
      spawn: o.spawn,
      maxParallelTasksInClusterDefault: o.maxParallelTasksInClusterDefault ?? null,
      runtimeOnly: o.runtimeOnly,
      ...k,
    },
    figures: { ...f },
    headline: { name: 'RPS', value: rps, unit: 'tasks/s' },
    table,
    rows: [
      {
        ...table,
        'child start p50 (ms)': f.childStartLatency.p50Ms,
        'child start p99 (ms)': f.childStartLatency.p99Ms,
        ...costColumns(f.nodeCpuSeconds, f.postgres.cpuSeconds, f.transactionsPerTask),
      },
    ],
    targets: headlineRun
      ? [
          {
            name: `workflow RPS (P=${o.pipelines}, 1 node)`,
            goal: `>= ${TARGETS.workflow.rps}`,
            value: rps,
            met: rps >= TARGETS.workflow.rps,
          },
        ]
      : undefined,
  });
}

main().catch((error) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
