/**
 * Many nodes on simulated hosts against one PostgreSQL (docs/scaling.md, "Sizing"): 1, 2, 4 and 8 node
 * processes, each connecting through its own TCP proxy (bench/tcp-proxy.ts) that adds a latency each
 * way, as a node on another host would see the database. Runs the flat burn-down and the workflow
 * workload at each node count; every row has the throughput, PostgreSQL CPU per task and transactions
 * per task (the same meter as bench:flat and bench:workflow), and the connections the server saw
 * (pg_stat_activity sampled during the run: peak, mean, by application). The proxies run in this
 * process, so their CPU is the harness's, not the nodes'.
 *
 * Uses DATABASE_URL, else the embedded server; a fresh database per row. Prints one summary line on
 * stdout and writes results/hosts-<time>.json.
 *
 *   tsx bench/hosts.ts --nodes-list 1,2,4,8 --latency-ms 2 --tasks 20000 --pipelines 40
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { createBenchDatabase, openBenchServer, type BenchDatabase } from './bench-database.ts';
import { runBurnDown } from './flat/burn-down.ts';
import { ConnectionSampler, type ConnectionSummary } from './hosts/connection-sampler.ts';
import {
  addNodeKnobOptions,
  describeKnobs,
  intArg,
  knobsFromCli,
  numberArg,
  type NodeKnobCliOptions,
  type NodeKnobs,
} from './node-options.ts';
import { finishRun, postgresInfo, round, startRun, type BenchResult, reportResult } from './result-file.ts';
import { proxyForUrl, type TcpProxy } from './tcp-proxy.ts';
import { calibrate } from './tasks/cpu-work.ts';
import { runWorkflow } from './workflow/run.ts';
import type { Work, WorkflowShapeCli } from './workflow/work.ts';
import type { ServerUsage } from './bench-database.ts';

type BenchName = 'flat' | 'workflow';

interface HostsCli extends NodeKnobCliOptions, WorkflowShapeCli {
  nodesList: number[];
  benches: BenchName[];
  latencyMs: number;
  tasks: number;
  sampleMs: number;
  outDir?: string;
  save: boolean;
}

export interface HostsRow {
  bench: BenchName;
  nodes: number;
  latencyMs: number;
  tasks: number;
  seconds: number;
  tasksPerSec: number;
  postgres: ServerUsage;
  postgresCpuMicrosPerTask: number | null;
  transactionsPerTask: number;
  nodeCpuSeconds: number;
  connections: ConnectionSummary;
  /** Bytes through the nodes' proxies, both ways, over the whole row (warm-up included). */
  proxyBytes: number;
}

function list<T extends string | number>(name: string, parse: (v: string) => T | undefined) {
  return (value: string): T[] => {
    const items = value.split(',').map((v) => parse(v.trim()));
    if (items.length === 0 || items.some((v) => v === undefined)) {
      throw new InvalidArgumentError(`${name}: a comma-separated list, e.g. see --help.`);
    }
    return [...new Set(items as T[])];
  };
}

function command(): Command {
  const cmd = new Command('hosts')
    .description('1, 2, 4 and 8 node processes behind per-node TCP proxies with latency, flat and workflow')
    .option(
      '--nodes-list <list>',
      'node counts, e.g. 1,2,4,8',
      list('--nodes-list', (v) =>
        /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 64 ? Number(v) : undefined,
      ),
      [1, 2, 4, 8],
    )
    .option(
      '--benches <list>',
      'flat, workflow or both',
      list<BenchName>('--benches', (v) => (v === 'flat' || v === 'workflow' ? v : undefined)),
      ['flat', 'workflow'],
    )
    .option(
      '--latency-ms <ms>',
      'latency each proxy adds each way (a round trip gains twice this)',
      numberArg('--latency-ms'),
      2,
    )
    .option('--tasks <n>', 'flat: no-op tasks per row', intArg('--tasks', 1), 10_000)
    .option('--pipelines <n>', 'workflow: P pipelines per row', intArg('--pipelines', 1), 20)
    .option('--affinities <n>', 'workflow: A affinities (default: P)', intArg('--affinities', 1))
    .option('--l1 <n>', 'workflow: L1', intArg('--l1', 1), 10)
    .option('--l2 <n>', 'workflow: L2', intArg('--l2', 1), 10)
    .option(
      '--task-duration-ms <ms>',
      'workflow: time every pipeline task spends',
      numberArg('--task-duration-ms'),
      1,
    )
    .addOption(
      new Option('--task-work <kind>', 'workflow: how the duration is spent')
        .choices(['cpu', 'sleep'])
        .default('sleep'),
    )
    .option('--sample-ms <ms>', 'read pg_stat_activity this often', intArg('--sample-ms', 10), 200)
    .option('--out-dir <dir>', 'where the result file goes (default: results/, or TASKMILL_RESULTS_DIR)')
    .option('--no-save', 'do not write a result file');
  return addNodeKnobOptions(cmd);
}

function work(o: HostsCli): Work {
  if (o.taskDurationMs <= 0) return { mode: 'none' };
  if (o.taskWork === 'sleep') return { mode: 'sleep', ms: o.taskDurationMs };
  return { mode: 'cpu', iterations: calibrate(o.taskDurationMs) };
}

async function main(): Promise<void> {
  const o = command().parse().opts<HostsCli>();
  const run = startRun('hosts');
  const knobs = knobsFromCli(o);
  const server = await openBenchServer();
  const rows: HostsRow[] = [];
  let postgres: BenchResult['postgres'] = null;
  try {
    for (const bench of o.benches) {
      for (const nodes of o.nodesList) {
        const row = await runRow(server.url, bench, nodes, o, knobs, async (db) => {
          postgres ??= await postgresInfo(db.pool);
        });
        rows.push(row);
        process.stderr.write(`${describeRow(row)}\n`);
      }
    }
  } finally {
    await server.stop();
  }
  const result = buildResult(run, o, knobs, rows, postgres);
  reportResult(result, o);
}

/** One bench at one node count: a fresh database, one proxy per node, the sampler around the run. */
async function runRow(
  serverUrl: string,
  bench: BenchName,
  nodes: number,
  o: HostsCli,
  knobs: NodeKnobs,
  onDatabase: (db: BenchDatabase) => Promise<void>,
): Promise<HostsRow> {
  const db = await createBenchDatabase(serverUrl, `hosts_${bench}_${nodes}`);
  const proxies: TcpProxy[] = [];
  const sampler = new ConnectionSampler(db.pool, o.sampleMs);
  try {
    await onDatabase(db);
    for (let i = 0; i < nodes; i++) proxies.push(await proxyForUrl(db.url, { latencyMs: o.latencyMs }));
    const where = {
      url: db.url,
      pool: db.pool,
      nodes,
      spawn: true,
      knobs,
      nodeUrl: (i: number) => proxies[i].url(db.url),
    };
    sampler.start();
    const f =
      bench === 'flat'
        ? await runBurnDown({ ...where, tasks: o.tasks, progressLabel: `flat, ${nodes} nodes` })
        : await runWorkflow({
            ...where,
            pipelines: o.pipelines,
            affinities: o.affinities ?? o.pipelines,
            l1: o.l1,
            l2: o.l2,
            work: work(o),
          });
    const connections = await sampler.stop();
    const tasks = 'totalTasks' in f ? f.totalTasks : f.tasks;
    const tasksPerSec = 'rps' in f ? f.rps : f.tasksPerSec;
    const cpu = f.postgres.cpuSeconds;
    return {
      bench,
      nodes,
      latencyMs: o.latencyMs,
      tasks,
      seconds: f.seconds,
      tasksPerSec,
      postgres: f.postgres,
      postgresCpuMicrosPerTask: cpu === null ? null : (cpu / tasks) * 1e6,
      transactionsPerTask: f.transactionsPerTask,
      nodeCpuSeconds: f.nodeCpuSeconds,
      connections,
      proxyBytes: proxies.reduce((n, p) => n + p.stats().bytesUp + p.stats().bytesDown, 0),
    };
  } finally {
    await sampler.stop();
    await Promise.all(proxies.map((p) => p.close()));
    await db.drop().catch((error) => console.error('could not drop the bench database:', error));
  }
}

function describeRow(r: HostsRow): string {
  return (
    `${r.bench}, ${r.nodes} node${r.nodes > 1 ? 's' : ''} at +${r.latencyMs} ms each way: ${r.tasks} tasks in ` +
    `${round(r.seconds, 2)} s = ${Math.round(r.tasksPerSec)} tasks/s; PostgreSQL CPU ${micros(r.postgresCpuMicrosPerTask)} µs/task; ` +
    `connections peak ${r.connections.peak} (${Object.entries(r.connections.atPeak)
      .map(([app, n]) => `${app} ${n}`)
      .join(', ')})`
  );
}

function micros(v: number | null): string | number {
  return v === null ? 'n/a' : Math.round(v);
}

function buildResult(
  run: ReturnType<typeof startRun>,
  o: HostsCli,
  knobs: NodeKnobs,
  rows: HostsRow[],
  postgres: BenchResult['postgres'],
): BenchResult {
  const of = (bench: BenchName) => rows.filter((r) => r.bench === bench);
  const series = (bench: BenchName) =>
    of(bench)
      .map((r) => Math.round(r.tasksPerSec))
      .join(' / ');
  const counts = o.nodesList.join('/');
  const table: Record<string, string | number> = { 'Latency (ms each way)': o.latencyMs, Nodes: counts };
  for (const bench of o.benches) {
    table[`${bench} tasks/s`] = series(bench);
    table[`${bench} PG µs/task`] = of(bench)
      .map((r) => micros(r.postgresCpuMicrosPerTask))
      .join(' / ');
    table[`${bench} peak connections`] = of(bench)
      .map((r) => r.connections.peak)
      .join(' / ');
  }
  const head = rows.filter((r) => r.bench === o.benches[0]).at(-1)!;
  return finishRun(run, {
    summary:
      `hosts: ${counts} node processes, each behind a proxy adding ${o.latencyMs} ms each way: ` +
      o.benches
        .map(
          (b) =>
            `${b} ${series(b)} tasks/s (PostgreSQL CPU ${of(b)
              .map((r) => micros(r.postgresCpuMicrosPerTask))
              .join(' / ')} µs/task, peak connections ${of(b)
              .map((r) => r.connections.peak)
              .join(' / ')})`,
        )
        .join('; '),
    postgres,
    params: {
      nodesList: o.nodesList,
      benches: o.benches,
      latencyMs: o.latencyMs,
      tasks: o.tasks,
      pipelines: o.pipelines,
      affinities: o.affinities ?? o.pipelines,
      l1: o.l1,
      l2: o.l2,
      taskDurationMs: o.taskDurationMs,
      taskWork: o.taskWork,
      sampleMs: o.sampleMs,
      ...describeKnobs(knobs),
    },
    figures: { rows },
    headline: {
      name: `${head.bench} throughput with ${head.nodes} nodes`,
      value: Math.round(head.tasksPerSec),
      unit: 'tasks/s',
    },
    table,
    rows: rows.map((r) => ({
      Bench: r.bench,
      Nodes: r.nodes,
      'Latency (ms)': r.latencyMs,
      Tasks: r.tasks,
      'Time (s)': round(r.seconds, 2),
      'Tasks/s': Math.round(r.tasksPerSec),
      'PG CPU/task (µs)': micros(r.postgresCpuMicrosPerTask),
      'Xact/task': round(r.transactionsPerTask, 2),
      'Node CPU (s)': round(r.nodeCpuSeconds),
      'Peak connections': r.connections.peak,
      'Mean connections': round(r.connections.mean),
      'At peak': Object.entries(r.connections.atPeak)
        .map(([app, n]) => `${app} ${n}`)
        .join(', '),
    })),
    notes: [
      'Every node process and PostgreSQL share this machine; the proxies run in the harness process. ' +
        'Connections are server-side (pg_stat_activity), the harness own pool excluded.',
    ],
  });
}

main().catch((error) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
