/**
 * Local cluster: N taskmill node processes on this machine, one database. `taskmill cluster --nodes N`
 * (from a checkout or the installed package) and `tsx scripts/local-cluster.ts` call
 * `runLocalCluster()`; the processes are started and stopped by the one harness, node-process.ts.
 * The database is opened once, with the rule of
 * store/database.ts `openDatabase()`: `DATABASE_URL` when set, otherwise the embedded PostgreSQL,
 * which the cluster then starts (in a helper process, database-holder.ts) and stops last; every
 * node gets its URL as `DATABASE_URL`. Each node's output lines are prefixed with `[node-1]`,
 * `[node-2]`, ...; the cluster's own lines with `[cluster]`.
 *
 * The node module (a .ts or .js file; each process loads it through cluster-node.ts with
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
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { DatabaseHandle, EmbeddedOptions } from '../store/database.ts';
import { TaskmillError } from '../task/errors.ts';
import { NodeProcess, sibling } from './node-process.ts';

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

const RUNNER = sibling('cluster-node', import.meta.url);
const DB_HOLDER = sibling('database-holder', import.meta.url);

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
  process: NodeProcess | undefined;
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
    process: undefined,
    startedAt: 0,
    restartDelayMs,
    restartTimer: undefined,
  }));

  const launch = (slot: NodeSlot) => {
    const prefix = `[${slot.name}] `;
    const child = new NodeProcess({
      entry: RUNNER,
      args: [modulePath],
      name: slot.name,
      env: {
        ...process.env,
        ...options.env,
        DATABASE_URL: db.url,
        TASKMILL_NODE_INDEX: String(slot.index),
        TASKMILL_NODE_NAME: slot.name,
        TASKMILL_REGISTER_TIMEOUT_MS: String(registerTimeoutMs),
      },
      detached: true,
      onLine: (line, stream) => {
        if (stream === 'stderr' && line.trim()) slot.lastError = line;
        emit(prefix + line, { node: slot.index, name: slot.name, stream });
      },
    });
    slot.process = child;
    slot.pid = child.pid;
    slot.state = 'starting';
    slot.nodeId = undefined;
    slot.lastError = undefined;
    slot.startedAt = Date.now();
    say(`${slot.name} spawned (pid ${child.pid})`);
    child.registered.then(
      (node) => {
        if (slot.process !== child) return;
        slot.state = 'running';
        slot.nodeId = node.id;
        say(`${slot.name} started (pid ${child.pid}, node ${node.name} ${node.id})`);
      },
      () => {},
    );
    void child.exited.then(({ code, signal }) => {
      const registered = slot.state === 'running';
      slot.process = undefined;
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
      const alive = slots.filter((s) => s.process);
      if (alive.length > 0) say(`stopping ${alive.length} node(s)`);
      await Promise.all(
        alive.map((s) =>
          s.process!.stop(graceMs, () => say(`${s.name} still running after ${graceMs} ms: SIGKILL`)),
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
 * process (database-holder.ts), out of the terminal's process group so that Ctrl-C reaches the
 * cluster only and the server stops last, after the nodes.
 */
async function openClusterDatabase(options: LocalClusterOptions): Promise<DatabaseHandle> {
  const url = options.databaseUrl ?? options.env?.DATABASE_URL ?? process.env.DATABASE_URL;
  if (url) return { url, owner: false, stop: async () => {} };
  let errors = '';
  let first: ((line: string | undefined) => void) | undefined;
  const opened = new Promise<string | undefined>((resolve) => (first = resolve));
  const holder = new NodeProcess({
    entry: DB_HOLDER,
    args: [JSON.stringify(options.embedded ?? {})],
    name: 'embedded PostgreSQL',
    detached: true,
    onLine: (line, stream) => {
      if (stream === 'stdout') first?.(line);
      else errors = `${errors}${line}\n`.slice(-4_000);
    },
  });
  void holder.exited.then(() => first?.(undefined));
  const line = await opened;
  const parsed = line?.startsWith('{') ? (JSON.parse(line) as { url: string; owner: boolean }) : undefined;
  if (!parsed) {
    holder.kill('SIGKILL');
    throw new Error(`could not start the embedded PostgreSQL: ${errors.trim() || line || 'no output'}`);
  }
  if (!parsed.owner) return { url: parsed.url, owner: false, stop: async () => {} };
  let stopping: Promise<unknown> | undefined;
  return {
    url: parsed.url,
    owner: true,
    stop: async () => {
      await (stopping ??= holder.stop(LOCAL_CLUSTER_DEFAULTS.graceMs));
    },
  };
}
