/**
 * Node processes for multi-process tests: `spawnNode(url, options)` starts test/fixtures/node-process.ts
 * against the database `url` and resolves once the node printed its ready line. Every process started
 * here is tracked until it exits; `killAllNodes()` (call it in afterAll) SIGKILLs the ones still alive
 * and waits for them, and a process-exit hook does the same if a test file dies first. The child also
 * stops by itself when its stdin pipe closes, so even a killed test runner leaves no node behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { NodeOptions } from '../../runtime/index.ts';
import { trackLeaks } from './leaks.ts';
import { onLines } from '../../scripts/local-cluster.ts';

const SCRIPT = fileURLToPath(new URL('../fixtures/node-process.ts', import.meta.url));
const TSX = import.meta.resolve('tsx');
const READY_TIMEOUT_MS = 30_000;
/** Lines of output kept per process for failure messages. */
const KEEP_LINES = 200;

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

const alive = new Set<ChildProcess>();

trackLeaks({
  what: 'node processes alive (call killAllNodes() in an after-hook)',
  left: () => [...alive].map((child) => `pid ${child.pid}`),
  cleanUp: killAllNodes,
});

process.once('exit', () => {
  for (const child of alive) child.kill('SIGKILL');
});

export async function spawnNode(url: string, options: SpawnOptions = {}): Promise<SpawnedNode> {
  const child = spawn(process.execPath, ['--import', TSX, SCRIPT, JSON.stringify(options)], {
    env: { ...process.env, DATABASE_URL: url },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  alive.add(child);
  const lines: string[] = [];
  const keep = (prefix: string, line: string) => {
    lines.push(`${prefix}${line}`);
    if (lines.length > KEEP_LINES) lines.shift();
  };
  const output = () => lines.join('\n');
  const stopped = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      alive.delete(child);
      resolve(code);
    });
  });
  onLines(child.stderr!, (line) => keep('stderr: ', line));

  const ready = new Promise<{ id: string; pid: number }>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`node process not ready within ${READY_TIMEOUT_MS} ms:\n${output()}`));
    }, READY_TIMEOUT_MS);
    onLines(child.stdout!, (line) => {
      const parsed = parseReady(line);
      if (parsed) {
        clearTimeout(timer);
        resolve(parsed);
      } else keep('', line);
    });
    void stopped.then((code) => {
      clearTimeout(timer);
      reject(new Error(`node process exited (code ${code}, ${child.signalCode}) before ready:\n${output()}`));
    });
  });
  const { id, pid } = await ready;
  return {
    id,
    pid,
    process: child,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    stopped,
    output,
  };
}

/** SIGKILLs every node process still alive and waits until they have exited. */
export async function killAllNodes(): Promise<void> {
  const left = [...alive];
  await Promise.all(
    left.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once('exit', () => resolve());
          child.kill('SIGKILL');
        }),
    ),
  );
}

/** Node processes started here that have not exited yet. */
export function liveNodeProcesses(): number {
  return alive.size;
}

function parseReady(line: string): { id: string; pid: number } | undefined {
  if (!line.startsWith('{"ready"')) return undefined;
  const parsed = JSON.parse(line) as { ready: boolean; id: string; pid: number };
  return parsed.ready ? { id: parsed.id, pid: parsed.pid } : undefined;
}
