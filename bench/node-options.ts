/**
 * The node knobs every benchmark accepts on its command line (batch size, plan factor, polling delay
 * map, limits, threads, micro-batch size, completer batch and flush, fetch interval, pool size), turned
 * into NodeOptions, and the effective configuration they give once defaults are applied (recorded in
 * every result so a run can be repeated exactly).
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { NodeOptions } from '../index.ts';
import { NODE_DEFAULTS, parseNodeConfig, type NodeConfig } from '../node/node-config.ts';

/** Node options a benchmark sets; plain data, so it can be passed to spawned node processes. */
export type NodeKnobs = Omit<NodeOptions, 'tasks' | 'pool' | 'connectionString'>;

export function intArg(name: string, min = 0) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be an integer >= ${min}.`);
    return n;
  };
}

export function numberArg(name: string, min = 0) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < min) throw new InvalidArgumentError(`${name} must be a number >= ${min}.`);
    return n;
  };
}

/**
 * `10` (one delay whatever the pass found) or `0:1000,100:10,1000:0` (found tasks: delay ms), the
 * distributed-task-framework polling-delay map.
 */
export function parsePollingDelay(value: string): Record<number, number> {
  const text = value.trim();
  if (/^\d+$/.test(text)) return { 0: Number(text) };
  const map: Record<number, number> = {};
  for (const part of text.split(',')) {
    const m = /^\s*(\d+)\s*:\s*(\d+)\s*$/.exec(part);
    if (!m) {
      throw new InvalidArgumentError(
        `polling delay must be a number of ms or a map like 0:1000,100:10,1000:0 (got ${JSON.stringify(value)}).`,
      );
    }
    map[Number(m[1])] = Number(m[2]);
  }
  if (map[0] === undefined) throw new InvalidArgumentError('the polling delay map needs an entry for 0.');
  return map;
}

export function formatPollingDelay(map: Record<number, number>): string {
  const entries = Object.entries(map).sort((a, b) => Number(a[0]) - Number(b[0]));
  if (entries.length === 1) return `${entries[0][1]} ms`;
  return entries.map(([k, v]) => `${k}:${v}`).join(',');
}

/** Adds the number of nodes, where they run, and the node knobs to a command. */
export function addNodeOptions(command: Command): Command {
  return addNodeKnobOptions(
    command
      .option('--nodes <n>', 'number of nodes', intArg('--nodes', 1), 1)
      .option('--spawn', 'run each node in its own process instead of all in this one', false),
  );
}

/** Adds the node knobs alone, for benches that decide the nodes themselves (shards.ts, hosts.ts). */
export function addNodeKnobOptions(command: Command): Command {
  return command
    .option('--batch-size <n>', 'planner: most tasks claimed per pass', intArg('--batch-size', 1))
    .option(
      '--plan-factor <x>',
      'planner: a node may hold capacity x plan factor tasks',
      numberArg('--plan-factor', 1),
    )
    .option(
      '--polling-delay <map>',
      'planner: delay after a pass, `10` or `0:1000,100:10,1000:0` (tasks found: ms)',
      parsePollingDelay,
    )
    .option(
      '--max-parallel-tasks-in-node <n>',
      'node: most tasks running at once',
      intArg('--max-parallel-tasks-in-node', 1),
    )
    .option('--threads <n>', 'node: worker threads', intArg('--threads', 1))
    .option(
      '--micro-batch-size <n>',
      'node: most tasks per worker-thread run',
      intArg('--micro-batch-size', 1),
    )
    .option(
      '--completer-batch-size <n>',
      'node: most outcomes per commit',
      intArg('--completer-batch-size', 1),
    )
    .option(
      '--completer-flush-ms <n>',
      'node: wait before a partial commit after a quiet spell',
      intArg('--completer-flush-ms'),
    )
    .option(
      '--completer-max-flush-ms <n>',
      'node: longest wait before a partial commit while commits are paced',
      intArg('--completer-max-flush-ms'),
    )
    .option(
      '--completer-flush-share <x>',
      'node: share of the time partial commits may take (1: no pacing)',
      numberArg('--completer-flush-share', 0.01),
    )
    .option(
      '--fetch-interval-ms <n>',
      'node: fetch assignments at least this often',
      intArg('--fetch-interval-ms', 1),
    )
    .option(
      '--max-connections <n>',
      'node: connection budget, every connection it opens (maxConnections)',
      intArg('--max-connections', 1),
    )
    .addOption(
      new Option('--notifications <on|off>', 'LISTEN/NOTIFY wake-ups').choices(['on', 'off']).default('on'),
    )
    .addOption(
      new Option(
        '--log-level <level>',
        'node log level (in-process nodes log to stdout, spawned ones to stderr)',
      )
        .choices(['silent', 'fatal', 'error', 'warn', 'info', 'debug', 'trace'])
        .default('silent'),
    );
}

export interface NodeCliOptions extends NodeKnobCliOptions {
  nodes: number;
  spawn: boolean;
}

export interface NodeKnobCliOptions {
  batchSize?: number;
  planFactor?: number;
  pollingDelay?: Record<number, number>;
  maxParallelTasksInNode?: number;
  threads?: number;
  microBatchSize?: number;
  completerBatchSize?: number;
  completerFlushMs?: number;
  completerMaxFlushMs?: number;
  completerFlushShare?: number;
  fetchIntervalMs?: number;
  maxConnections?: number;
  notifications: 'on' | 'off';
  logLevel: NonNullable<NodeOptions['logLevel']>;
}

/** Only what was given; the runtime's defaults fill the rest. */
export function knobsFromCli(o: NodeKnobCliOptions): NodeKnobs {
  const planner: Record<string, unknown> = {};
  if (o.batchSize !== undefined) planner.batchSize = o.batchSize;
  if (o.planFactor !== undefined) planner.planFactor = o.planFactor;
  if (o.pollingDelay !== undefined) planner.pollingDelay = o.pollingDelay;
  const completer: Record<string, unknown> = {};
  if (o.completerBatchSize !== undefined) completer.batchSize = o.completerBatchSize;
  if (o.completerFlushMs !== undefined) completer.flushIntervalMs = o.completerFlushMs;
  if (o.completerMaxFlushMs !== undefined) completer.maxFlushIntervalMs = o.completerMaxFlushMs;
  if (o.completerFlushShare !== undefined) completer.flushShare = o.completerFlushShare;
  const knobs: NodeKnobs = { logLevel: o.logLevel, notifications: o.notifications === 'on' };
  if (Object.keys(planner).length > 0) knobs.planner = planner;
  if (Object.keys(completer).length > 0) knobs.completer = completer as NodeKnobs['completer'];
  if (o.maxParallelTasksInNode !== undefined) knobs.maxParallelTasksInNode = o.maxParallelTasksInNode;
  if (o.threads !== undefined) knobs.threads = o.threads;
  if (o.microBatchSize !== undefined) knobs.maxBatchSize = o.microBatchSize;
  if (o.fetchIntervalMs !== undefined) knobs.fetchIntervalMs = o.fetchIntervalMs;
  if (o.maxConnections !== undefined) knobs.maxConnections = o.maxConnections;
  return knobs;
}

/** The knobs in force once the runtime's defaults are applied (validated like a node start does). */
export function effectiveConfig(knobs: NodeKnobs): Omit<NodeConfig, 'tasks' | 'pool' | 'connectionString'> {
  const {
    tasks: _t,
    pool: _p,
    connectionString: _c,
    ...config
  } = parseNodeConfig({
    ...knobs,
    tasks: [],
    connectionString: 'postgres://validation-only',
  });
  return config;
}

export interface KnobsRecord {
  batchSize: number | undefined;
  planFactor: number | undefined;
  pollingDelay: string | undefined;
  maxParallelTasksInNode: number;
  threads: number;
  microBatchSize: number;
  completerBatchSize: number;
  completerFlushMs: number;
  completerMaxFlushMs: number;
  completerFlushShare: number;
  fetchIntervalMs: number;
  maxConnections: number;
  notifications: boolean;
  logLevel: string;
}

/** The knobs as recorded in results: flat, named like the command-line options. */
export function describeKnobs(knobs: NodeKnobs): KnobsRecord {
  const c = effectiveConfig(knobs);
  const planner = c.planner || undefined;
  return {
    batchSize: planner?.batchSize,
    planFactor: planner?.planFactor,
    pollingDelay: planner ? formatPollingDelay(planner.pollingDelay as Record<number, number>) : undefined,
    maxParallelTasksInNode: c.maxParallelTasksInNode,
    threads: c.threads,
    microBatchSize: c.maxBatchSize,
    completerBatchSize: c.completer.batchSize,
    completerFlushMs: c.completer.flushIntervalMs,
    completerMaxFlushMs: c.completer.maxFlushIntervalMs,
    completerFlushShare: c.completer.flushShare,
    fetchIntervalMs:
      c.fetchIntervalMs ??
      (c.notifications ? NODE_DEFAULTS.fetchIntervalMs : NODE_DEFAULTS.fetchIntervalWithoutNotifyMs),
    maxConnections: c.maxConnections,
    notifications: c.notifications,
    logLevel: c.logLevel ?? 'default',
  };
}
