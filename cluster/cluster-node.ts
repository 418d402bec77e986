/**
 * One node process of a local cluster (local-cluster.ts spawns it through node-process.ts; it is not
 * meant to be run by hand): loads the user's node module, keeps a node running until told to stop,
 * and tells the cluster once that node has registered.
 *
 *   node cluster-node.js <module path>      (compiled; from sources: node --import tsx cluster-node.ts)
 *
 * Environment: DATABASE_URL (set by the cluster), TASKMILL_NODE_INDEX (1-based), TASKMILL_NODE_NAME
 * (`node-1`, ...), TASKMILL_REGISTER_TIMEOUT_MS. The module shapes it accepts are described in
 * local-cluster.ts; what counts as task definitions is decided by cli/task-modules.ts, the
 * loader of `taskmill node --tasks`, so both commands accept the same tasks modules.
 *
 * Registration: the cluster hears `{ type: 'registered', id, name }` on the IPC channel once the node
 * is in tm_nodes. A node this process starts (definitions) or is handed back (a function returning
 * it) is known at once; otherwise (a script, a function returning nothing) the process waits for a
 * tm_nodes row named TASKMILL_NODE_NAME or `<host>-<pid>` (the default name) that started after the
 * process did. No node within the timeout: the reason goes to stderr and the process exits with
 * NO_NODE_EXIT_CODE, which the cluster reports as an error instead of a started node.
 *
 * States: loading -> registering -> running -> stopping -> exited. The first SIGTERM or SIGINT (or the
 * cluster's stdin pipe closing, when the cluster process died) stops the node gracefully and exits 0
 * (1 if stopping failed); further signals are ignored, the cluster escalates to SIGKILL after its grace
 * period.
 */
import { hostname } from 'node:os';
import { pathToFileURL } from 'node:url';
import path from 'node:path';
import pg from 'pg';
import { taskDefinitionsOf } from '../task/task-definition.ts';
import { startNode, type NodeOptions } from '../index.ts';
import { LOCAL_CLUSTER_DEFAULTS, NO_NODE_EXIT_CODE } from './local-cluster.ts';
import { onParentGone, reportRegistered } from './node-process.ts';
import { findNodeStartedSince } from '../store/nodes.ts';

const REGISTER_POLL_MS = 100;

/** What the cluster tells a function-shaped module about the process it runs in. */
export interface ClusterNodeContext {
  /** 1-based position of this process in the cluster (kept across restarts). */
  index: number;
  /** `node-<index>`: a good node name. */
  name: string;
}

interface Stoppable {
  stop(): Promise<void>;
}

interface NodeModule {
  default?: unknown;
  nodeOptions?: Partial<NodeOptions>;
  [name: string]: unknown;
}

const modulePath = process.argv[2];
if (!modulePath) {
  process.stderr.write('usage: cluster-node <module path>\n');
  process.exit(2);
}
const ctx: ClusterNodeContext = {
  index: Number(process.env.TASKMILL_NODE_INDEX ?? 1),
  name: process.env.TASKMILL_NODE_NAME ?? `node-${process.env.TASKMILL_NODE_INDEX ?? 1}`,
};
const registerTimeoutMs =
  Number(process.env.TASKMILL_REGISTER_TIMEOUT_MS) || LOCAL_CLUSTER_DEFAULTS.registerTimeoutMs;
// Database time before the module runs: a node row that started earlier belongs to an older process.
const since = await databaseNow();

const mod = (await import(pathToFileURL(path.resolve(modulePath)).href)) as NodeModule;
const defs = taskDefinitionsOf(mod);
if (typeof mod.default === 'function' || defs.length > 0) {
  // Definitions or a function: this process owns its signals from before the node starts; a stop
  // requested while it starts waits for the start, then stops the node.
  const started = start(mod);
  let stopRequested: string | undefined;
  const stop = (why: string) => {
    if (stopRequested) return;
    stopRequested = why;
    process.stderr.write(`${why}: stopping\n`);
    void started
      .then((node) => {
        if (!node) return process.kill(process.pid, 'SIGTERM');
        return node.stop().then(() => process.exit(0));
      })
      .catch((error: unknown) => {
        process.stderr.write(`stop failed: ${String(error)}\n`);
        process.exit(1);
      });
  };
  const onTerm = () => stop('SIGTERM');
  const onInt = () => stop('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  const detach = onParentGone(() => stop('cluster process gone'));
  const node = await started;
  const { id, name } = (node ?? {}) as { id?: unknown; name?: unknown };
  if (node && typeof id === 'string') report(id, typeof name === 'string' ? name : ctx.name);
  else if (node) await awaitRegistration();
  else {
    // A function that returned nothing stoppable runs its node itself: hand the signals back to it.
    process.removeListener('SIGTERM', onTerm);
    process.removeListener('SIGINT', onInt);
    detach();
    if (!stopRequested) onParentGone(() => process.kill(process.pid, 'SIGTERM'));
    await awaitRegistration();
  }
} else {
  // A script: it ran on import and owns its process; the parent's disappearance becomes a SIGTERM.
  onParentGone(() => process.kill(process.pid, 'SIGTERM'));
  await awaitRegistration();
}

async function start(m: NodeModule): Promise<Stoppable | undefined> {
  if (typeof m.default === 'function') {
    const made: unknown = await (m.default as (c: ClusterNodeContext) => unknown)(ctx);
    return isStoppable(made) ? made : undefined;
  }
  return startNode({ name: ctx.name, ...m.nodeOptions, tasks: defs, handleSignals: false });
}

function isStoppable(value: unknown): value is Stoppable {
  return typeof (value as Stoppable | undefined)?.stop === 'function';
}

function report(id: string, name: string): void {
  reportRegistered(id, name);
  // The channel must not keep a script's process alive once it has said what it had to say.
  process.channel?.unref();
}

async function databaseNow(): Promise<Date> {
  const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
  try {
    return (await client.query<{ now: Date }>(`select clock_timestamp() as now`)).rows[0].now;
  } finally {
    await client.end();
  }
}

/** Waits for a node of this process in tm_nodes; exits with NO_NODE_EXIT_CODE when none comes. */
async function awaitRegistration(): Promise<void> {
  const names = [ctx.name, `${hostname()}-${process.pid}`];
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 1 });
  const deadline = Date.now() + registerTimeoutMs;
  try {
    for (;;) {
      const node = await findNodeStartedSince(pool, names, since).catch(() => undefined);
      if (node) return report(node.id, node.name);
      if (Date.now() >= deadline) break;
      await new Promise((resolve) => setTimeout(resolve, REGISTER_POLL_MS));
    }
  } finally {
    await pool.end().catch(() => {});
  }
  process.stderr.write(
    `${modulePath} registered no node within ${registerTimeoutMs} ms. A node module exports task ` +
      'definitions (defineTask() results, named, default or in arrays: what `taskmill node --tasks` ' +
      'takes), or a default function that starts a node and returns it, or starts a node itself named ' +
      'process.env.TASKMILL_NODE_NAME.\n',
  );
  process.exit(NO_NODE_EXIT_CODE);
}
