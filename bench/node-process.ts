/**
 * One benchmark node in its own process, started by cluster.ts through cluster/node-process.ts. argv[2] is a JSON spec
 * `{url, name, knobs, tasks}`; the IPC protocol (ToNode / FromNode in cluster.ts) carries flush counts
 * up and `mark` / `stop` down. The node stops when told to, or when the harness goes away.
 */
import { reportRegistered } from '../cluster/node-process.ts';
import { startNode } from '../index.ts';
import { flushCounts, loadTasks, type FromNode, type TaskSource, type ToNode } from './cluster.ts';
import type { NodeKnobs } from './node-options.ts';

const spec = JSON.parse(process.argv[2] ?? '{}') as {
  url: string;
  name: string;
  knobs: NodeKnobs;
  tasks: TaskSource;
};

function send(msg: FromNode, then?: () => void): void {
  if (process.connected) process.send!(msg, undefined, undefined, () => then?.());
}

const node = await startNode({
  ...spec.knobs,
  name: spec.name,
  connectionString: spec.url,
  tasks: await loadTasks(spec.tasks),
});
node.on('flush', (result) => send({ type: 'flush', counts: flushCounts(result) }));
node.on('error', (error) => send({ type: 'error', message: String((error as Error)?.message ?? error) }));

let markCpu = process.cpuUsage();
let markAt = performance.now();
let stopping = false;

async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  await node.stop();
  const stats = node.stats();
  const cpu = process.cpuUsage(markCpu);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const wall = (performance.now() - markAt) / 1000;
  send(
    {
      type: 'stopped',
      report: {
        name: spec.name,
        pid: process.pid,
        nodes: 1,
        completed: stats.completed,
        failed: stats.failed,
        retried: stats.retried,
        stale: stats.stale,
        cpuSeconds,
        cpuCores: wall > 0 ? cpuSeconds / wall : 0,
      },
    },
    () => process.disconnect?.(),
  );
}

process.on('message', (msg: ToNode) => {
  if (msg.type === 'mark') {
    markCpu = process.cpuUsage();
    markAt = performance.now();
  } else if (msg.type === 'stop') {
    stop().catch((error) => {
      console.error(error);
      process.exit(1);
    });
  }
});
// The harness went away without stopping us: stop cleanly (tasks are handed back) and exit.
process.on('disconnect', () => {
  if (!stopping) stop().finally(() => process.exit(0));
});

reportRegistered(node.id, spec.name);
