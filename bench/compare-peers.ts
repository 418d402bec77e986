/**
 * taskmill side by side with the Node job queues people use, in one run on one PostgreSQL server:
 * the same burn-down (N pre-inserted no-op jobs) and latency run (sequential jobs, enqueue -> handler
 * start) through taskmill, graphile-worker (fastest preset and without local queue/batching), pg-boss,
 * BullMQ on PostgreSQL, BullMQ on Redis (when redis-server is installed) and a bare-SQL ceiling.
 * Every system runs in a fresh database, ANALYZEd after its pre-insert. Reports ratios to taskmill.
 *
 *   tsx bench/compare-peers.ts --tasks 100000 --samples 1000
 */
import { Command } from 'commander';
import { createBenchDatabase, openBenchServer } from './bench-database.ts';
import type { LatencySummary } from './latency-histogram.ts';
import { progressWanted } from '../log/progress.ts';
import { addNodeOptions, intArg, knobsFromCli, type NodeCliOptions } from './node-options.ts';
import { bareSqlPeer } from './peers/bare-sql.ts';
import { bullmqPeer } from './peers/bullmq.ts';
import { GRAPHILE_PRESETS, graphileWorkerPeer } from './peers/graphile-worker.ts';
import type { Peer, PeerBurnDown } from './peers/peer.ts';
import { pgBossPeer } from './peers/pg-boss.ts';
import { taskmillPeer } from './peers/taskmill.ts';
import {
  finishRun,
  postgresInfo,
  round,
  startRun,
  type PostgresInfo,
  type Target,
  reportResult,
} from './result-file.ts';
import { TARGETS } from './targets.ts';

interface CompareCli extends NodeCliOptions {
  tasks: number;
  samples: number;
  latency: boolean;
  only?: string;
  skip?: string;
  bareLoops: number;
  bareBatch: number;
  pgbossLoops: number;
  pgbossBatch: number;
  graphileConcurrency: number;
  bullmqConcurrency: number;
  bullmqRedisConcurrency: number;
  outDir?: string;
  save: boolean;
}

export interface PeerOutcome {
  id: string;
  label: string;
  settings: Record<string, unknown>;
  notes?: string[];
  skipped?: string;
  error?: string;
  burnDown?: PeerBurnDown;
  latency?: LatencySummary;
  /** taskmill tasks/s divided by this system's: above 1, taskmill is faster. */
  throughputRatio?: number;
  /** This system's p50 latency divided by taskmill's: above 1, taskmill is faster. */
  latencyRatio?: number;
}

function command(): Command {
  const cmd = new Command('compare-peers')
    .description('taskmill vs graphile-worker, pg-boss, BullMQ and a bare-SQL ceiling, side by side')
    .option('--tasks <n>', 'burn-down jobs per system', intArg('--tasks', 1), 20_000)
    .option('--samples <n>', 'latency samples per system', intArg('--samples', 1), 1_000)
    .option('--no-latency', 'skip the latency runs')
    .option('--only <ids>', 'comma-separated systems to run (taskmill always runs)')
    .option('--skip <ids>', 'comma-separated systems to leave out')
    .option('--bare-loops <n>', 'bare SQL: concurrent claim loops', intArg('--bare-loops', 1), 4)
    .option('--bare-batch <n>', 'bare SQL: tasks per claim', intArg('--bare-batch', 1), 500)
    .option('--pgboss-loops <n>', 'pg-boss: work() loops', intArg('--pgboss-loops', 1), 8)
    .option('--pgboss-batch <n>', 'pg-boss: jobs per fetch', intArg('--pgboss-batch', 1), 2_500)
    .option(
      '--graphile-concurrency <n>',
      'graphile-worker: concurrent jobs',
      intArg('--graphile-concurrency', 1),
      24,
    )
    .option(
      '--bullmq-concurrency <n>',
      'BullMQ on PostgreSQL: concurrency',
      intArg('--bullmq-concurrency', 1),
      32,
    )
    .option(
      '--bullmq-redis-concurrency <n>',
      'BullMQ on Redis: concurrency',
      intArg('--bullmq-redis-concurrency', 1),
      100,
    )
    .option('--out-dir <dir>', 'where the result file goes (default: results/, or TASKMILL_RESULTS_DIR)')
    .option('--no-save', 'do not write a result file');
  return addNodeOptions(cmd);
}

function peers(o: CompareCli): Peer[] {
  const all: Peer[] = [
    taskmillPeer(knobsFromCli(o)),
    ...GRAPHILE_PRESETS.map((p) => graphileWorkerPeer({ ...p, concurrency: o.graphileConcurrency })),
    pgBossPeer({ loops: o.pgbossLoops, batchSize: o.pgbossBatch }),
    bullmqPeer('postgres', o.bullmqConcurrency),
    bullmqPeer('redis', o.bullmqRedisConcurrency),
    bareSqlPeer({ loops: o.bareLoops, batch: o.bareBatch }),
  ];
  const list = (s?: string) => (s ? s.split(',').map((x) => x.trim()) : undefined);
  const only = list(o.only);
  const skip = list(o.skip) ?? [];
  const known = new Set(all.map((p) => p.id));
  for (const id of [...(only ?? []), ...skip]) {
    if (!known.has(id)) throw new Error(`unknown system ${id}; known: ${[...known].join(', ')}`);
  }
  return all.filter((p) => p.id === 'taskmill' || ((!only || only.includes(p.id)) && !skip.includes(p.id)));
}

async function main(): Promise<void> {
  const o = command().parse().opts<CompareCli>();
  const run = startRun('compare-peers');
  const server = await openBenchServer();
  const outcomes: PeerOutcome[] = [];
  let postgres: PostgresInfo | undefined;
  try {
    const info = await createBenchDatabase(server.url, 'peers_info', { migrate: false });
    postgres = await postgresInfo(info.pool);
    await info.drop();
    for (const peer of peers(o)) {
      if (progressWanted()) process.stderr.write(`${peer.label}...\n`);
      outcomes.push(await runPeer(peer, server.url, o));
    }
  } finally {
    await server.stop();
  }
  const base = outcomes[0];
  for (const p of outcomes) {
    if (base.burnDown && p.burnDown) p.throughputRatio = base.burnDown.tasksPerSec / p.burnDown.tasksPerSec;
    if (base.latency && p.latency && base.latency.p50Ms > 0)
      p.latencyRatio = p.latency.p50Ms / base.latency.p50Ms;
  }
  const rows = outcomes.map(tableRow);
  const targets = peerTargets(outcomes);
  const failed = outcomes.filter((p) => p.error);
  const result = finishRun(run, {
    summary:
      `compare-peers (${o.tasks} jobs, ${o.latency ? `${o.samples} latency samples` : 'no latency'}): ` +
      outcomes
        .map((p) =>
          p.burnDown
            ? `${p.id} ${round(p.burnDown.tasksPerSec, 0)}/s${p.id === 'taskmill' ? '' : ` (taskmill x${round(p.throughputRatio ?? 0, 2)})`}`
            : `${p.id} ${p.skipped ? 'skipped' : 'FAILED'}`,
        )
        .join(', '),
    postgres: postgres ?? null,
    params: { tasks: o.tasks, samples: o.latency ? o.samples : 0, systems: outcomes.map((p) => p.id) },
    figures: { systems: outcomes },
    headline: {
      name: 'taskmill / graphile-worker-fast',
      value: round(outcomes.find((p) => p.id === 'graphile-worker-fast')?.throughputRatio ?? 0, 2),
      unit: 'x',
    },
    table: {
      Jobs: o.tasks,
      ...Object.fromEntries(
        outcomes.map((p) => [`${p.id} /s`, p.burnDown ? round(p.burnDown.tasksPerSec, 0) : '-']),
      ),
    },
    rows,
    targets,
  });
  reportResult(result, o, rows);
  if (failed.length > 0) {
    console.error(`failed: ${failed.map((p) => `${p.id}: ${p.error}`).join('; ')}`);
    process.exitCode = 1;
  }
}

async function runPeer(peer: Peer, serverUrl: string, o: CompareCli): Promise<PeerOutcome> {
  const outcome: PeerOutcome = { id: peer.id, label: peer.label, settings: peer.settings, notes: peer.notes };
  const why = peer.unavailable?.();
  if (why) return { ...outcome, skipped: why };
  try {
    const db = await createBenchDatabase(serverUrl, peer.id, { migrate: peer.usesTaskmillSchema });
    try {
      outcome.burnDown = await peer.burnDown(db, o.tasks);
    } finally {
      await db.drop();
    }
    if (o.latency && peer.latency) {
      const samples = Math.min(o.samples, peer.maxLatencySamples ?? Infinity);
      const ldb = await createBenchDatabase(serverUrl, `${peer.id}_lat`, {
        migrate: peer.usesTaskmillSchema,
      });
      try {
        outcome.latency = await peer.latency(ldb, samples);
      } finally {
        await ldb.drop();
      }
    }
  } catch (error) {
    outcome.error = error instanceof Error ? error.message : String(error);
  }
  return outcome;
}

function tableRow(p: PeerOutcome): Record<string, string | number> {
  const b = p.burnDown;
  const l = p.latency;
  const status = p.skipped ? `skipped: ${p.skipped}` : p.error ? `FAILED: ${p.error}` : '';
  return {
    System: p.label,
    'Jobs/s': b ? round(b.tasksPerSec, 0) : status || '-',
    'taskmill x': p.throughputRatio === undefined ? '-' : round(p.throughputRatio, 2),
    'Time (s)': b ? round(b.seconds, 2) : '-',
    'Insert (s)': b ? round(b.insertSeconds, 2) : '-',
    'Latency p50 (ms)': l ? l.p50Ms : '-',
    'Latency p99 (ms)': l ? l.p99Ms : '-',
    'Latency samples': l ? l.count : '-',
    'p50 vs taskmill': p.latencyRatio === undefined ? '-' : `x${round(p.latencyRatio, 2)}`,
  };
}

function peerTargets(outcomes: PeerOutcome[]): Target[] {
  const targets: Target[] = [];
  const graphile = outcomes.find((p) => p.id === 'graphile-worker-fast');
  if (graphile?.throughputRatio !== undefined) {
    targets.push({
      name: 'burn-down vs graphile-worker (fastest)',
      goal: `>= ${TARGETS.burnDown.vsGraphileFastest}x`,
      value: round(graphile.throughputRatio, 2),
      met: graphile.throughputRatio >= TARGETS.burnDown.vsGraphileFastest,
    });
  }
  const bare = outcomes.find((p) => p.id === 'bare-sql');
  if (bare?.throughputRatio !== undefined) {
    targets.push({
      name: 'burn-down as a share of the bare-SQL ceiling',
      goal: `>= ${TARGETS.burnDown.ofBareSql}`,
      value: round(bare.throughputRatio, 2),
      met: bare.throughputRatio >= TARGETS.burnDown.ofBareSql,
    });
  }
  return targets;
}

main().catch((error) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
