/**
 * One run of the workflow benchmark: fresh tables, warm nodes, one GENERATED task, then wait until
 * every pipeline is marked. The clock is the database's: from just before GENERATED is scheduled to
 * the last JOIN1 commit (its `finished_at`, written last in its transaction), as the original computes
 * RPS. The run fails loudly when a pipeline is FAILED, a task is dead-lettered, a task is missing from
 * history or left pending.
 */
import type pg from 'pg';
import { decode, TaskmillClient } from '../../index.ts';
import { ServerUsageMeter, type ServerUsage } from '../bench-database.ts';
import { BenchCluster, type NodeReport } from '../cluster.ts';
import { warmUp } from '../flat/measure.ts';
import { summarizeLatencies, type LatencySummary } from '../latency-histogram.ts';
import type { NodeKnobs } from '../node-options.ts';
import { Progress } from '../../log/progress.ts';
import { benchNoop } from '../tasks/definitions.ts';
import { child1, child2, generated, parent, taskCounts } from './definitions.ts';
import { WORKFLOW_DB_ENV, WORKFLOW_SCHEMA } from './store.ts';
import type { Work } from './work.ts';

export const WORKFLOW_TASKS_MODULE = new URL('./definitions.ts', import.meta.url).href;

export interface WorkflowOptions {
  url: string;
  pool: pg.Pool;
  pipelines: number;
  affinities: number;
  l1: number;
  l2: number;
  work: Work;
  nodes: number;
  spawn: boolean;
  knobs: NodeKnobs;
  maxParallelInCluster?: number;
  /** Give up when no pipeline ends for this long. */
  stallTimeoutMs?: number;
  /** Self-test: run pipelines without affinity; pipelines sharing a key must then end FAILED. */
  breakAffinity?: boolean;
  /** Handlers that do no SQL of their own (Shape.runtimeOnly). */
  runtimeOnly?: boolean;
  /**
   * Node i's connection string, when not `url` (bench/hosts.ts: each node behind its own proxy); spawned
   * nodes' handlers then reach the workload's tables through it too.
   */
  nodeUrl?: (i: number) => string;
}

export interface WorkflowFigures {
  totalTasks: number;
  seconds: number;
  rps: number;
  rpm: number;
  pipelinesDone: number;
  /** Created -> handler start of CHILD1 and CHILD2 tasks (their key is already their workflow's). */
  childStartLatency: LatencySummary;
  /** Created -> handler start of PARENT tasks: includes waiting for older pipelines of the same affinity. */
  parentStartLatency: LatencySummary;
  nodeCpuSeconds: number;
  postgres: ServerUsage;
  transactionsPerTask: number;
  /** Rows the handlers wrote to perf_results (0 in the runtime-only variant). */
  resultRows: number;
  nodeReports: NodeReport[];
}

export async function runWorkflow(o: WorkflowOptions): Promise<WorkflowFigures> {
  await o.pool.query(WORKFLOW_SCHEMA);
  process.env[WORKFLOW_DB_ENV] = o.url;
  const counts = taskCounts(o.pipelines, o.l1, o.l2);
  const cluster = await BenchCluster.start({
    url: o.url,
    nodes: o.nodes,
    spawn: o.spawn,
    knobs: o.knobs,
    tasks: {
      module: WORKFLOW_TASKS_MODULE,
      exportName: 'workflowTasks',
      args: { maxParallelInCluster: o.maxParallelInCluster, warmup: true },
    },
    namePrefix: 'workflow',
    nodeUrl: o.nodeUrl,
    nodeEnv: o.nodeUrl && o.spawn ? (i) => ({ [WORKFLOW_DB_ENV]: o.nodeUrl!(i) }) : undefined,
  });
  let reports: NodeReport[] | undefined;
  try {
    await warmUp(cluster, o.pool, benchNoop, 200 * o.nodes);
    const meter = new ServerUsageMeter(o.pool);
    await meter.start();
    cluster.markStart();
    const {
      rows: [{ start }],
    } = await o.pool.query<{ start: Date }>('select clock_timestamp() as start');
    await new TaskmillClient({ pool: o.pool }).schedule(generated, {
      message: {
        pipelines: o.pipelines,
        affinities: o.affinities,
        l1: o.l1,
        l2: o.l2,
        work: o.work,
        breakAffinity: o.breakAffinity,
        runtimeOnly: o.runtimeOnly,
      },
    });
    await waitForPipelines(o.pool, cluster, o.pipelines, o.stallTimeoutMs ?? 300_000);
    const {
      rows: [{ seconds }],
    } = await o.pool.query<{ seconds: number }>(
      `select extract(epoch from max(finished_at) - $1::timestamptz)::float8 as seconds from perf_pipelines`,
      [start],
    );
    await meter.endWindow();
    reports = await cluster.stop();
    const postgres = await meter.stop();
    await assertComplete(o.pool, counts.byName);
    const latency = await startLatencies(o.pool);
    const {
      rows: [{ resultRows }],
    } = await o.pool.query<{ resultRows: number }>('select count(*)::int as "resultRows" from perf_results');
    return {
      totalTasks: counts.total,
      seconds,
      rps: counts.total / seconds,
      rpm: (counts.total / seconds) * 60,
      pipelinesDone: o.pipelines,
      ...latency,
      nodeCpuSeconds: reports.reduce((s, r) => s + r.cpuSeconds, 0),
      postgres,
      transactionsPerTask: postgres.transactions / counts.total,
      resultRows,
      nodeReports: reports,
    };
  } finally {
    if (!reports) await cluster.stop().catch(() => {});
  }
}

/** Polls the pipelines table; rejects at the first FAILED pipeline, dead letter, node error or stall. */
async function waitForPipelines(
  pool: pg.Pool,
  cluster: BenchCluster,
  pipelines: number,
  stallTimeoutMs: number,
): Promise<void> {
  let nodeError: unknown;
  const onError = (error: unknown) => (nodeError ??= error);
  cluster.on('error', onError);
  const bar = new Progress({ label: 'pipelines', total: pipelines });
  try {
    let last = -1;
    let lastChange = performance.now();
    for (;;) {
      if (nodeError) throw nodeError;
      const { rows } = await pool.query<{
        done: number;
        failed: number;
        detail: string | null;
        dead: number;
      }>(
        `select count(*)::int as done, count(*) filter (where state = 'FAILED')::int as failed,
           (select detail from perf_pipelines where state = 'FAILED' limit 1) as detail,
           (select count(*) from tm_dead_letters)::int as dead
         from perf_pipelines`,
      );
      const r = rows[0];
      if (r.failed > 0) throw new Error(`${r.failed} pipelines FAILED (affinity broken?): ${r.detail}`);
      if (r.dead > 0) {
        const { rows: dl } = await pool.query<{ name: string; error: string }>(
          'select name, error from tm_dead_letters limit 1',
        );
        throw new Error(`${r.dead} tasks dead-lettered, e.g. ${dl[0]?.name}: ${dl[0]?.error}`);
      }
      bar.update(r.done);
      if (r.done >= pipelines) return;
      if (r.done !== last) {
        last = r.done;
        lastChange = performance.now();
      } else if (performance.now() - lastChange > stallTimeoutMs) {
        throw new Error(`no pipeline ended for ${stallTimeoutMs / 1000} s (${r.done} of ${pipelines} done)`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    bar.end();
    cluster.off('error', onError);
  }
}

/** Every task of the run is in history as completed, none pending, none failed or dead. */
async function assertComplete(pool: pg.Pool, byName: Record<string, number>): Promise<void> {
  const { rows } = await pool.query<{ name: string; state: string; n: number }>(
    `select name, state, count(*)::int as n from tm_history where name like 'perf-%' group by 1, 2
     union all select name, 'pending', count(*)::int from tm_tasks group by 1
     union all select name, 'dead', count(*)::int from tm_dead_letters group by 1`,
  );
  const problems: string[] = [];
  for (const r of rows) if (r.state !== 'completed') problems.push(`${r.n} ${r.name} ${r.state}`);
  for (const [name, want] of Object.entries(byName)) {
    const got = rows.find((r) => r.name === name && r.state === 'completed')?.n ?? 0;
    if (got !== want) problems.push(`${name}: ${got} completed, expected ${want}`);
  }
  const { rows: pipelines } = await pool.query<{ n: number }>(
    `select count(*)::int as n from perf_pipelines where state = 'DONE'`,
  );
  if (problems.length > 0) throw new Error(`workflow run incomplete: ${problems.join('; ')}`);
  if (pipelines[0].n !== byName[parent.name]) {
    throw new Error(`${pipelines[0].n} pipelines DONE, expected ${byName[parent.name]}`);
  }
}

/** Handlers return their start time (wall clock ms); history has the creation time (database clock). */
async function startLatencies(pool: pg.Pool) {
  const { rows } = await pool.query<{ name: string; created: number; result: Buffer }>(
    `select name, extract(epoch from created_at)::float8 * 1000 as created, result from tm_history
     where name = any($1::text[])`,
    [[parent.name, child1.name, child2.name]],
  );
  const children: number[] = [];
  const parents: number[] = [];
  for (const r of rows) {
    const latency = decode<number>(r.result) - r.created;
    (r.name === parent.name ? parents : children).push(latency);
  }
  return { childStartLatency: summarizeLatencies(children), parentStartLatency: summarizeLatencies(parents) };
}
