/**
 * One node process of a local cluster (scripts/local-cluster.ts spawns it; it is not meant to be run by
 * hand): loads the user's node module and keeps a node running until told to stop.
 *
 *   node --import tsx scripts/local-cluster-node.ts <module path>
 *
 * Environment: DATABASE_URL (set by the cluster), TASKMILL_NODE_INDEX (1-based), TASKMILL_NODE_NAME
 * (`node-1`, ...). The module shapes it accepts are described in scripts/local-cluster.ts.
 *
 * States: loading -> running -> stopping -> exited. The first SIGTERM or SIGINT (or the cluster's stdin
 * pipe closing, when the cluster process died) stops the node gracefully and exits 0 (1 if stopping
 * failed); further signals are ignored, the cluster escalates to SIGKILL after its grace period.
 */
import { fstatSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import path from 'node:path';
import { startNode, type NodeOptions, type TaskDefinition } from '../runtime/index.ts';

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
  tasks?: unknown;
  nodeOptions?: Partial<NodeOptions>;
}

const modulePath = process.argv[2];
if (!modulePath) {
  process.stderr.write('usage: local-cluster-node.ts <module path>\n');
  process.exit(2);
}
const ctx: ClusterNodeContext = {
  index: Number(process.env.TASKMILL_NODE_INDEX ?? 1),
  name: process.env.TASKMILL_NODE_NAME ?? `node-${process.env.TASKMILL_NODE_INDEX ?? 1}`,
};

const mod = (await import(pathToFileURL(path.resolve(modulePath)).href)) as NodeModule;
if (typeof mod.default === 'function' || Array.isArray(mod.default) || Array.isArray(mod.tasks)) {
  // Shapes 1 and 2: this process owns its signals from before the node starts; a stop requested while
  // it starts waits for the start, then stops the node.
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
  if (!(await started)) {
    // A function that returned nothing stoppable runs its node itself: hand the signals back to it.
    process.removeListener('SIGTERM', onTerm);
    process.removeListener('SIGINT', onInt);
    detach();
    if (!stopRequested) onParentGone(() => process.kill(process.pid, 'SIGTERM'));
  }
} else {
  // Shape 3: the module ran on import and owns its process; the parent's disappearance becomes a SIGTERM.
  onParentGone(() => process.kill(process.pid, 'SIGTERM'));
}

async function start(m: NodeModule): Promise<Stoppable | undefined> {
  if (typeof m.default === 'function') {
    const made: unknown = await (m.default as (c: ClusterNodeContext) => unknown)(ctx);
    return isStoppable(made) ? made : undefined;
  }
  const tasks = Array.isArray(m.default) ? m.default : Array.isArray(m.tasks) ? m.tasks : undefined;
  if (!tasks) return undefined;
  return startNode({
    name: ctx.name,
    ...m.nodeOptions,
    tasks: tasks as TaskDefinition[],
    handleSignals: false,
  });
}

function isStoppable(value: unknown): value is Stoppable {
  return typeof (value as Stoppable | undefined)?.stop === 'function';
}

/**
 * Calls `fn` when stdin is the cluster's pipe and it closes (the cluster process died). Returns a
 * function that cancels the watch.
 */
function onParentGone(fn: () => void): () => void {
  const stdin = fstatSync(0);
  if (!stdin.isFIFO() && !stdin.isSocket()) return () => {};
  process.stdin.on('end', fn);
  process.stdin.resume();
  return () => {
    process.stdin.removeListener('end', fn);
    process.stdin.pause();
  };
}
