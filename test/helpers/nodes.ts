/** In-process test nodes with fast timings; every node started here is stopped by stopAllNodes(). */
import { startNode, type NodeOptions, type TaskmillNode } from '../../index.ts';
import { all } from '../fixtures/definitions.ts';
import { trackLeaks } from './leaks.ts';

export const FAST = {
  heartbeatIntervalMs: 100,
  nodeTimeoutMs: 1_000,
  shutdownGraceMs: 2_000,
  abortGraceMs: 200,
  logLevel: 'silent',
  threads: 2,
  planner: {
    leaseTtlMs: 600,
    maintenanceIntervalMs: 100,
    pollingDelay: { 0: 100, 1: 10, 100: 0 },
  },
} satisfies Partial<NodeOptions>;

const started = new Set<TaskmillNode>();

trackLeaks({
  what: 'test nodes not stopped (call stopAllNodes() in an after-hook)',
  left: () => [...started].filter((n) => n.state !== 'stopped').map((n) => `${n.name} (${n.state})`),
  cleanUp: stopAllNodes,
});

export async function startTestNode(url: string, options: Partial<NodeOptions> = {}): Promise<TaskmillNode> {
  const node = await startNode({
    ...FAST,
    ...options,
    planner: options.planner === false ? false : { ...FAST.planner, ...(options.planner ?? {}) },
    connectionString: url,
    tasks: options.tasks ?? all,
  });
  started.add(node);
  return node;
}

export async function stopAllNodes(): Promise<void> {
  await Promise.all([...started].map((n) => n.stop()));
  // A node whose stop() resolved without it being stopped stays, for the leak check to report.
  for (const n of started) if (n.state === 'stopped') started.delete(n);
}

export function runningNodes(): number {
  return [...started].filter((n) => n.state !== 'stopped').length;
}
