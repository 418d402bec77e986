/**
 * Node processes for multi-process tests: `spawnNode(url, options)` starts test/fixtures/node-process.ts
 * against the database `url` through the project's one process harness (cluster/node-process.ts) and
 * resolves once its node has registered. Every process started here is tracked until it exits;
 * `killAllNodes()` (call it in afterAll) SIGKILLs the ones still alive and waits for them, the leak
 * check of every test file (leak-check.ts) fails the file when one is left, and the harness kills them if
 * a test file dies first. The child also stops by itself when its stdin pipe closes, so even a killed
 * test runner leaves no node behind.
 */
import type { ChildProcess } from 'node:child_process';
import { killAllNodeProcesses, liveNodeProcesses as live, NodeProcess } from '../../cluster/node-process.ts';
import type { NodeOptions } from '../../index.ts';

const SCRIPT = new URL('../fixtures/node-process.ts', import.meta.url);
const READY_TIMEOUT_MS = 30_000;

/** Options of the node in the child process: JSON-serialisable node options (tasks are the fixtures). */
export type SpawnOptions = Omit<
  Partial<NodeOptions>,
  'tasks' | 'pool' | 'connectionString' | 'handleSignals'
>;

export interface SpawnedNode {
  /** The node id (tm_nodes.id). */
  id: string;
  pid: number;
  process: ChildProcess;
  kill(signal?: NodeJS.Signals): void;
  /** Resolves with the exit code once the process has exited (null when a signal ended it). */
  stopped: Promise<number | null>;
  /** The process's recent stdout and stderr lines, for failure messages. */
  output(): string;
}

export async function spawnNode(url: string, options: SpawnOptions = {}): Promise<SpawnedNode> {
  const node = new NodeProcess({
    entry: SCRIPT,
    args: [JSON.stringify(options)],
    name: 'node process',
    env: { ...process.env, DATABASE_URL: url },
  });
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    node.kill('SIGKILL');
  }, READY_TIMEOUT_MS);
  const { id } = await node.registered
    .catch((error: Error) => {
      throw late ? new Error(`not registered within ${READY_TIMEOUT_MS} ms: ${error.message}`) : error;
    })
    .finally(() => clearTimeout(timer));
  return {
    id,
    pid: node.pid!,
    process: node.child,
    kill: (signal = 'SIGTERM') => node.kill(signal),
    stopped: node.exited.then(({ code }) => code),
    output: () => node.output(),
  };
}

/** SIGKILLs every node process still alive and waits until they have exited. */
export const killAllNodes = killAllNodeProcesses;

/** Node processes started here that have not exited yet. */
export function liveNodeProcesses(): number {
  return live().length;
}
