/**
 * Local cluster: N taskmill node processes on this machine, one database.
 *
 *   tsx scripts/local-cluster.ts --nodes 3 --module ./my-node.ts [--restart] [--grace-ms 15000]
 *
 * (`taskmill cluster --nodes N` calls `runLocalCluster()`.) The database is opened once, with the rule of
 * runtime/database.ts `openDatabase()`: `DATABASE_URL` when set, otherwise the embedded PostgreSQL,
 * which the cluster then starts (in a helper process, scripts/local-cluster-db.ts) and stops last; every
 * node gets its URL as `DATABASE_URL`. Each node's output lines are prefixed with `[node-1]`,
 * `[node-2]`, ...; the cluster's own lines with `[cluster]`.
 *
 * The node module (a .ts or .js file; each process loads it through scripts/local-cluster-node.ts with
 * DATABASE_URL, TASKMILL_NODE_INDEX and TASKMILL_NODE_NAME set) takes one of three shapes:
 *   1. a tasks module, the same as `taskmill node --tasks` takes (cli/task-modules.ts decides): task
 *      definitions exported by name, as the default export, or in arrays (`export const a =
 *      defineTask(...)`, `export default [defA, defB]`), optionally `export const nodeOptions = {...}`
 *      (any startNode option): the process starts a node named `node-<i>` running them, and stops it
 *      gracefully on SIGTERM/SIGINT.
 *   2. a function: `export default async function ({ index, name }) { return startNode({...}) }`: it
 *      starts what it wants; if it returns something with `stop()` (a TaskmillNode), the process calls
 *      it on SIGTERM/SIGINT and then exits 0.
 *   3. anything else runs on import and owns its process (e.g. `startNode({..., handleSignals: true,
 *      name: process.env.TASKMILL_NODE_NAME })`).
 * Whatever the shape, a process must register a node within `registerTimeoutMs` (30 s): one that
 * does not exits with NO_NODE_EXIT_CODE, and the cluster stops with that error (`error`) instead of
 * reporting the node as started.
 *
 * States of the cluster: starting -> running -> stopping -> stopped. Per node process: starting ->
 * running (its node registered) -> exited -> (restarting -> starting)*: with `restart` on, a process
 * that exits without being asked (a crash, a kill, a non-zero exit) is started again with the same
 * index after a delay that doubles on each quick crash (500 ms up to 10 s), except one that registered
 * no node (NO_NODE_EXIT_CODE), which stops the cluster with an error, as does any process that exits
 * before registering when `restart` is off. Stop (Ctrl-C or SIGTERM in the CLI, `stop()` in code):
 * SIGTERM to every node, SIGKILL to those still alive after the grace period, then the database it
 * started. When every node has exited and none will restart, the cluster stops by itself.
 *
 * Nodes and the embedded server run in process groups of their own, so a terminal Ctrl-C reaches only
 * the cluster, which then stops them in order; if the cluster process dies, each of them sees its stdin
 * pipe close and stops.
 * Owned by the main thread of the cluster process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError } from 'commander';
import type { DatabaseHandle, EmbeddedOptions } from '../runtime/database.ts';
import { TaskmillError } from '../task/errors.ts';

export const LOCAL_CLUSTER_DEFAULTS = {
  /** SIGTERM to SIGKILL; above a node's default shutdownGraceMs (10 s) so it can finish in-flight tasks. */
  graceMs: 15_000,
  restartDelayMs: 500,
  maxRestartDelayMs: 10_000,
  /** A process that ran at least this long before crashing restarts after the initial delay again. */
  stableAfterMs: 10_000,
  /** A node process must have registered its node within this time (migrations on first start included). */
  registerTimeoutMs: 30_000,
};

/** Exit code of a node process whose module registered no node: bad input, nothing to restart. */
export const NO_NODE_EXIT_CODE = 2;

/** What a node process tells the cluster over IPC once its node is in tm_nodes. */
export interface RegisteredMessage {
  type: 'registered';
  id: string;
  name: string;
}

const RUNNER = fileURLToPath(new URL('./local-cluster-node.ts', import.meta.url));
const DB_HOLDER = fileURLToPath(new URL('./local-cluster-db.ts', import.meta.url));
const TSX = import.meta.resolve('tsx');

export interface LineSource {
  /** 1-based node index, 0 for the cluster's own lines. */
  node: number;
  name: string;
  stream: 'stdout' | 'stderr';
}

export interface LocalClusterOptions {
  /** Number of node processes. */
  nodes: number;
  /** Path of the node module (see the header for its shapes). */
  module: string;
  /** Extra environment for the node processes. */
  env?: Record<string, string>;
  /** Start a node process again when it exits without being asked to. */
  restart?: boolean;
  /** Receives every output line, already prefixed (default: this process's stdout / stderr). */
  onLine?: (line: string, source: LineSource) => void;
  /** Database to use; default `env.DATABASE_URL`, then `DATABASE_URL`, then the embedded server. */
  databaseUrl?: string;
  /** Where and how to start the embedded server when no URL is given. */
  embedded?: EmbeddedOptions;
  graceMs?: number;
  restartDelayMs?: number;
  /** How long a node process may take to register its node (default 30 s). */
  registerTimeoutMs?: number;
}

export interface ClusterNodeProcess {
  readonly index: number;
  readonly name: string;
  /** Process id of the current (or last) process of this node. */
  readonly pid: number | undefined;
  readonly restarts: number;
  /** starting: spawned, its node not registered yet; running: registered. */
  readonly state: 'starting' | 'running' | 'restarting' | 'exited';
  /** Id of the node the current (or last) process registered (tm_nodes.id). */
  readonly nodeId: string | undefined;
  /** Exit of the last process: code, or the signal that ended it. */
  readonly lastExit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
}

export interface LocalCluster {
  /** The database URL every node uses. */
  readonly url: string;
  readonly nodes: readonly ClusterNodeProcess[];
  /** Stops every node (SIGTERM, then SIGKILL after the grace period) and the database it started. */
  stop(): Promise<void>;
  /** Resolves once the cluster has stopped (asked to, or every node gone for good). */
  readonly stopped: Promise<void>;
  /**
   * Why the cluster stopped by itself when a node process exited before registering a node (a module
   * that starts none, a crash at start), else undefined. `code` is INVALID_CONFIG for a module that
   * registered no node.
   */
  readonly error: TaskmillError | Error | undefined;
}

interface NodeSlot {
  index: number;
  name: string;
  pid: number | undefined;
  restarts: number;
  state: 'starting' | 'running' | 'restarting' | 'exited';
  nodeId: string | undefined;
  /** The process's last stderr line, for the error when it registers no node. */
  lastError: string | undefined;
  lastExit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  child: ChildProcess | undefined;
  startedAt: number;
  restartDelayMs: number;
  restartTimer: NodeJS.Timeout | undefined;
}

export async function runLocalCluster(options: LocalClusterOptions): Promise<LocalCluster> {
  if (!Number.isInteger(options.nodes) || options.nodes < 1 || options.nodes > 256) {
    throw new Error(`nodes must be an integer between 1 and 256, got ${options.nodes}`);
  }
  const modulePath = path.resolve(options.module);
  if (!existsSync(modulePath)) throw new Error(`node module not found: ${modulePath}`);
  const graceMs = options.graceMs ?? LOCAL_CLUSTER_DEFAULTS.graceMs;
  const restartDelayMs = options.restartDelayMs ?? LOCAL_CLUSTER_DEFAULTS.restartDelayMs;
  const registerTimeoutMs = options.registerTimeoutMs ?? LOCAL_CLUSTER_DEFAULTS.registerTimeoutMs;
  const emit =
    options.onLine ??
    ((line: string, source: LineSource) =>
      (source.stream === 'stderr' ? process.stderr : process.stdout).write(`${line}\n`));
  const say = (line: string) => emit(`[cluster] ${line}`, { node: 0, name: 'cluster', stream: 'stderr' });

  const db = await openClusterDatabase(options);
  if (db.owner) say(`started embedded PostgreSQL at ${db.url}`);

  let phase: 'running' | 'stopping' | 'stopped' = 'running';
  let error: Error | undefined;
  let stopping: Promise<void> | undefined;
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((resolve) => (resolveStopped = resolve));

  const slots: NodeSlot[] = Array.from({ length: options.nodes }, (_, i) => ({
    index: i + 1,
    name: `node-${i + 1}`,
    pid: undefined,
    restarts: 0,
    state: 'exited',
    nodeId: undefined,
    lastError: undefined,
    lastExit: undefined,
    child: undefined,
    startedAt: 0,
    restartDelayMs,
    restartTimer: undefined,
  }));

  const launch = (slot: NodeSlot) => {
    const child = spawn(process.execPath, ['--import', TSX, RUNNER, modulePath], {
      env: {
        ...process.env,
        ...options.env,
        DATABASE_URL: db.url,
        TASKMILL_NODE_INDEX: String(slot.index),
        TASKMILL_NODE_NAME: slot.name,
        TASKMILL_REGISTER_TIMEOUT_MS: String(registerTimeoutMs),
      },
      stdio: ['pipe', 'pipe', 'pipe', 'ipc'],
      detached: true,
    });
    slot.child = child;
    slot.pid = child.pid;
    slot.state = 'starting';
    slot.nodeId = undefined;
    slot.lastError = undefined;
    slot.startedAt = Date.now();
    say(`${slot.name} spawned (pid ${child.pid})`);
    child.on('message', (message: RegisteredMessage) => {
      if (message?.type !== 'registered' || slot.child !== child) return;
      slot.state = 'running';
      slot.nodeId = message.id;
      say(`${slot.name} started (pid ${child.pid}, node ${message.name} ${message.id})`);
    });
    const prefix = `[${slot.name}] `;
    onLines(child.stdout!, (line) =>
      emit(prefix + line, { node: slot.index, name: slot.name, stream: 'stdout' }),
    );
    onLines(child.stderr!, (line) => {
      if (line.trim()) slot.lastError = line;
      emit(prefix + line, { node: slot.index, name: slot.name, stream: 'stderr' });
    });
    child.on('error', (error) => say(`${slot.name}: ${error.message}`));
    child.once('exit', (code, signal) => {
      child.stdin?.destroy();
      const registered = slot.state === 'running';
      slot.child = undefined;
      slot.state = 'exited';
      slot.lastExit = { code, signal };
      const how = signal ? `on ${signal}` : `with code ${code}`;
      say(`${slot.name} (pid ${child.pid}) exited ${how}${registered ? '' : ' before registering a node'}`);
      if (phase !== 'running') return;
      const crashed = signal !== null || code !== 0;
      if (!registered && (code === NO_NODE_EXIT_CODE || !options.restart)) {
        error =
          code === NO_NODE_EXIT_CODE
            ? new TaskmillError(
                'INVALID_CONFIG',
                `${slot.name} registered no node: ${slot.lastError ?? `${modulePath} started none`}`,
              )
            : new Error(
                `${slot.name} exited ${how} before registering a node` +
                  (slot.lastError ? `: ${slot.lastError}` : ''),
              );
        say(`error: ${error.message}`);
        void stop();
        return;
      }
      if (options.restart && crashed) {
        if (Date.now() - slot.startedAt >= LOCAL_CLUSTER_DEFAULTS.stableAfterMs)
          slot.restartDelayMs = restartDelayMs;
        const delay = slot.restartDelayMs;
        slot.restartDelayMs = Math.min(delay * 2, LOCAL_CLUSTER_DEFAULTS.maxRestartDelayMs);
        slot.state = 'restarting';
        say(`restarting ${slot.name} in ${delay} ms`);
        slot.restartTimer = setTimeout(() => {
          slot.restartTimer = undefined;
          if (phase !== 'running') return;
          slot.restarts++;
          launch(slot);
        }, delay);
        return;
      }
      if (slots.every((s) => s.state === 'exited')) {
        say('every node has exited');
        void stop();
      }
    });
  };

  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      phase = 'stopping';
      for (const slot of slots) {
        clearTimeout(slot.restartTimer);
        if (slot.state === 'restarting') slot.state = 'exited';
      }
      const alive = slots.filter((s) => s.child);
      if (alive.length > 0) say(`stopping ${alive.length} node(s)`);
      await Promise.all(
        alive.map((s) =>
          stopChild(s.child!, graceMs, () => say(`${s.name} still running after ${graceMs} ms: SIGKILL`)),
        ),
      );
      if (db.owner) {
        await db.stop();
        say('stopped embedded PostgreSQL');
      }
      phase = 'stopped';
      resolveStopped();
    })();
    return stopping;
  };

  say(`starting ${options.nodes} node(s) running ${modulePath}`);
  for (const slot of slots) launch(slot);
  return {
    url: db.url,
    nodes: slots,
    stop,
    stopped,
    get error() {
      return error;
    },
  };
}

/**
 * The cluster's database: the given URL, or `DATABASE_URL`, or an embedded server held by a detached
 * process (scripts/local-cluster-db.ts), out of the terminal's process group so that Ctrl-C reaches the
 * cluster only and the server stops last, after the nodes.
 */
async function openClusterDatabase(options: LocalClusterOptions): Promise<DatabaseHandle> {
  const url = options.databaseUrl ?? options.env?.DATABASE_URL ?? process.env.DATABASE_URL;
  if (url) return { url, owner: false, stop: async () => {} };
  const holder = spawn(
    process.execPath,
    ['--import', TSX, DB_HOLDER, JSON.stringify(options.embedded ?? {})],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    },
  );
  const exited = new Promise<void>((resolve) => holder.once('exit', () => resolve()));
  let errors = '';
  holder.stderr!.setEncoding('utf8').on('data', (chunk: string) => (errors = (errors + chunk).slice(-4_000)));
  const first = await new Promise<string | undefined>((resolve) => {
    onLines(holder.stdout!, resolve);
    void exited.then(() => resolve(undefined));
  });
  const opened = first?.startsWith('{') ? (JSON.parse(first) as { url: string; owner: boolean }) : undefined;
  if (!opened) {
    holder.kill('SIGKILL');
    throw new Error(`could not start the embedded PostgreSQL: ${errors.trim() || first || 'no output'}`);
  }
  if (!opened.owner) return { url: opened.url, owner: false, stop: async () => {} };
  let stopping: Promise<void> | undefined;
  return {
    url: opened.url,
    owner: true,
    stop: () => (stopping ??= stopChild(holder, LOCAL_CLUSTER_DEFAULTS.graceMs, () => {})),
  };
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
function stopChild(child: ChildProcess, graceMs: number, onKill: () => void): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => {
      onKill();
      child.kill('SIGKILL');
    }, graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** Calls `fn` for each line a child process writes (the last one even without a final newline). */
export function onLines(stream: NodeJS.ReadableStream, fn: (line: string) => void): void {
  let rest = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const parts = (rest + chunk).split('\n');
    rest = parts.pop()!;
    for (const line of parts) fn(line);
  });
  stream.on('end', () => {
    if (rest) fn(rest);
  });
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function keyValue(value: string, previous: Record<string, string>): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq < 1) throw new InvalidArgumentError('expected KEY=VALUE');
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65_535)
    throw new InvalidArgumentError('expected a port, 0 for any');
  return n;
}

/** CLI entry: runs until Ctrl-C / SIGTERM; exit code 0 when stopped on request, 1 when every node died. */
export async function main(argv = process.argv): Promise<void> {
  const program = new Command()
    .name('local-cluster')
    .description('Run N taskmill node processes locally against one database.')
    .requiredOption('-n, --nodes <n>', 'number of node processes', positiveInt)
    .requiredOption('-m, --module <path>', 'node module: task definitions, a start function, or a script')
    .option('-r, --restart', 'restart a node process that crashed', false)
    .option('--grace-ms <ms>', 'SIGTERM to SIGKILL grace period', positiveInt, LOCAL_CLUSTER_DEFAULTS.graceMs)
    .option('-e, --env <KEY=VALUE>', 'extra environment for the nodes (repeatable)', keyValue, {})
    .option('--pg-dir <dir>', 'data folder of the embedded PostgreSQL (without DATABASE_URL)')
    .option('--pg-port <port>', 'port of the embedded PostgreSQL, 0 for any free one', port)
    .parse(argv);
  const o = program.opts<{
    nodes: number;
    module: string;
    restart: boolean;
    graceMs: number;
    env: Record<string, string>;
    pgDir?: string;
    pgPort?: number;
  }>();
  const started = runLocalCluster({
    nodes: o.nodes,
    module: o.module,
    restart: o.restart,
    graceMs: o.graceMs,
    env: o.env,
    embedded: { dataDir: o.pgDir && path.resolve(o.pgDir), port: o.pgPort },
  });
  // Listening from before the start completes, so a Ctrl-C during it stops whatever has started.
  let requested = false;
  const onSignal = () => {
    requested = true;
    // A start that fails is reported by the await below.
    started.then((cluster) => cluster.stop()).catch(() => {});
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const cluster = await started;
  await cluster.stopped;
  if (cluster.error) process.stderr.write(`local-cluster: ${cluster.error.message}\n`);
  process.exitCode = cluster.error ? (cluster.error instanceof TaskmillError ? 2 : 1) : requested ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((error: unknown) => {
    process.stderr.write(`local-cluster: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
