/**
 * The plan past one PostgreSQL, run on one machine (docs/scaling.md, "Past one PostgreSQL"): for each
 * shard count (default 1, 2 and 3), that many PostgreSQL servers, each with its own database and node
 * processes (its own planner), and the flat burn-down (no-op tasks) scheduled through one ShardedClient.
 * Reports the aggregate throughput per shard count, each shard's PostgreSQL CPU per task, and the
 * speed-up over one shard. Every server shares this machine's cores with every node: the speed-up is
 * bounded by them (a real deployment gives each shard its own server).
 *
 * Starts one embedded server per shard (in .taskmill/bench-shards/, removed afterwards) unless
 * --shard-urls names servers. Prints one summary line on stdout and writes results/shards-<time>.json.
 *
 *   tsx bench/shards.ts --shards 1,2,3 --tasks 30000
 */
import { availableParallelism } from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import pg from 'pg';
import {
  addNodeKnobOptions,
  describeKnobs,
  intArg,
  knobsFromCli,
  type NodeKnobCliOptions,
} from './node-options.ts';
import { finishRun, postgresInfo, round, startRun, type BenchResult, reportResult } from './result-file.ts';
import { runShardsRow, type ShardsRow } from './shards/run.ts';
import { startShardServers } from './shards/servers.ts';

interface ShardsCli extends NodeKnobCliOptions {
  shards: number[];
  tasks: number;
  warmup: number;
  nodesPerShard: number;
  shardUrls?: string[];
  outDir?: string;
  save: boolean;
}

function countList(value: string): number[] {
  const counts = value.split(',').map((v) => Number(v.trim()));
  if (counts.length === 0 || counts.some((n) => !Number.isInteger(n) || n < 1 || n > 16)) {
    throw new InvalidArgumentError('--shards takes shard counts from 1 to 16, e.g. 1,2,3.');
  }
  return [...new Set(counts)].sort((a, b) => a - b);
}

function command(): Command {
  const cmd = new Command('shards')
    .description(
      'Aggregate throughput of 1, 2, 3 taskmill shards (a PostgreSQL each) behind one ShardedClient',
    )
    .option('--shards <list>', 'shard counts to run, e.g. 1,2,3', countList, [1, 2, 3])
    .option('--tasks <n>', 'no-op tasks per shard count, over all shards', intArg('--tasks', 1), 20_000)
    .option('--warmup <n>', 'tasks each shard runs before measuring', intArg('--warmup'), 500)
    .option('--nodes-per-shard <n>', 'node processes per shard', intArg('--nodes-per-shard', 1), 1)
    .option(
      '--shard-urls <urls>',
      'use these servers (comma-separated) instead of starting embedded ones',
      (v) => v.split(',').map((u) => u.trim()),
    )
    .option('--out-dir <dir>', 'where the result file goes (default: results/, or TASKMILL_RESULTS_DIR)')
    .option('--no-save', 'do not write a result file');
  return addNodeKnobOptions(cmd);
}

async function main(): Promise<void> {
  const o = command().parse().opts<ShardsCli>();
  const run = startRun('shards');
  const knobs = knobsFromCli(o);
  const servers = await startShardServers(Math.max(...o.shards), o.shardUrls);
  const rows: ShardsRow[] = [];
  let postgres: BenchResult['postgres'] = null;
  try {
    const info = new pg.Client({ connectionString: servers.urls[0] });
    await info.connect();
    postgres = await postgresInfo(info).finally(() => info.end());
    for (const k of o.shards) {
      const row = await runShardsRow({
        servers: servers.urls.slice(0, k),
        tasks: o.tasks,
        warmupPerShard: o.warmup,
        nodesPerShard: o.nodesPerShard,
        knobs,
      });
      rows.push(row);
      process.stderr.write(`${describeRow(row, rows[0])}\n`);
    }
  } finally {
    await servers.stop();
  }
  const result = buildResult(run, o, knobs, rows, postgres);
  reportResult(result, o);
}

function describeRow(row: ShardsRow, first: ShardsRow): string {
  const per = row.perShard.map((s) => `${s.shard} ${Math.round(s.tasksPerSec)}/s`).join(', ');
  return (
    `${row.shards} shard${row.shards > 1 ? 's' : ''}: ${row.tasks} tasks in ${round(row.seconds, 2)} s = ` +
    `${Math.round(row.tasksPerSec)} tasks/s (speed-up ${speedUp(row, first)}; ${per})`
  );
}

function speedUp(row: ShardsRow, first: ShardsRow): string {
  return `${round(row.tasksPerSec / first.tasksPerSec, 2)}x`;
}

function buildResult(
  run: ReturnType<typeof startRun>,
  o: ShardsCli,
  knobs: ReturnType<typeof knobsFromCli>,
  rows: ShardsRow[],
  postgres: BenchResult['postgres'],
): BenchResult {
  const cores = availableParallelism();
  const first = rows[0];
  const last = rows[rows.length - 1];
  const micros = (v: number | null) => (v === null ? 'n/a' : Math.round(v));
  const table: Record<string, string | number> = { Tasks: o.tasks, Cores: cores };
  for (const r of rows)
    table[`${r.shards} shard${r.shards > 1 ? 's' : ''} (tasks/s)`] = Math.round(r.tasksPerSec);
  table['Speed-up'] = speedUp(last, first);
  return finishRun(run, {
    summary:
      `shards: ${o.tasks} no-op tasks through the ShardedClient on ${cores} cores: ` +
      rows
        .map((r) => `${r.shards} shard${r.shards > 1 ? 's' : ''} ${Math.round(r.tasksPerSec)} tasks/s`)
        .join(', ') +
      ` (${speedUp(last, first)} with ${last.shards}); PostgreSQL CPU per task ` +
      rows.map((r) => `${micros(r.postgresCpuMicrosPerTask)} µs`).join(' / '),
    postgres,
    params: {
      shards: o.shards,
      tasks: o.tasks,
      warmupPerShard: o.warmup,
      nodesPerShard: o.nodesPerShard,
      embeddedServers: !o.shardUrls,
      cores,
      ...describeKnobs(knobs),
    },
    figures: { rows },
    headline: {
      name: `throughput with ${last.shards} shards`,
      value: Math.round(last.tasksPerSec),
      unit: 'tasks/s',
    },
    table,
    rows: rows.map((r) => ({
      Shards: r.shards,
      Tasks: r.tasks,
      'Time (s)': round(r.seconds, 2),
      'Tasks/s': Math.round(r.tasksPerSec),
      'Speed-up': speedUp(r, first),
      'Slowest / fastest shard (s)': `${round(Math.max(...r.perShard.map((s) => s.seconds)), 2)} / ${round(Math.min(...r.perShard.map((s) => s.seconds)), 2)}`,
      'Scheduled/s': Math.round(r.scheduledPerSec),
      'PG CPU (s)': r.postgresCpuSeconds === null ? 'n/a' : round(r.postgresCpuSeconds),
      'PG CPU/task (µs)': micros(r.postgresCpuMicrosPerTask),
      'Node CPU (s)': round(r.nodeCpuSeconds),
    })),
    notes: [
      `All ${last.shards} servers and their nodes share this machine's ${cores} cores: the speed-up is bounded by ` +
        'them, not by the design (each shard has its own PostgreSQL and planner).',
    ],
  });
}

main().catch((error) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
