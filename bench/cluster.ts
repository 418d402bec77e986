/**
 * The nodes of a benchmark run: N nodes in this process, or N node processes (bench/node-process.ts,
 * started by the project's one process harness, cluster/node-process.ts), each reporting its flushes
 * and, when stopped, its CPU time over IPC. Every node runs a planner (the lease elects one), as in a
 * real deployment.
 *
 * States: starting -> running -> stopped. `stop()` is idempotent and returns one report per node
 * (in-process nodes share one report: their CPU cannot be told apart). Main thread of the harness only.
 */
import { EventEmitter } from 'node:events';
import { NodeProcess } from '../cluster/node-process.ts';
import { startNode, type TaskDefinition, type TaskmillNode } from '../index.ts';
import type { NodeKnobs } from './node-options.ts';

/** Where a node gets its task definitions: `module[exportName](args)` returns them. */
export interface TaskSource {
  module: string;
  exportName: string;
  args?: unknown;
}

export interface ClusterOptions {
  url: string;
  nodes: number;
  spawn: boolean;
  knobs: NodeKnobs;
  tasks: TaskSource;
  /** Node names are `${namePrefix}-${i}`. */
  namePrefix?: string;
  /** Node i's connection string, when the nodes do not all use `url` (e.g. each behind its own proxy). */
  nodeUrl?: (i: number) => string;
  /** Extra environment of node process i (spawned nodes only: in-process nodes share this process's). */
  nodeEnv?: (i: number) => NodeJS.ProcessEnv;
}

/** Outcome counts of one flush, by kind and per completed task name. */
export interface FlushCounts {
  completed: number;
  retried: number;
  failed: number;
  deadLettered: number;
  stale: number;
  completedByName: Record<string, number>;
}

export interface NodeReport {
  name: string;
  pid: number;
  /** Nodes sharing this process (and so this CPU figure). */
  nodes: number;
  completed: number;
  failed: number;
  retried: number;
  stale: number;
  /** CPU seconds of the process (main thread and worker threads) since markStart(). */
  cpuSeconds: number;
  /** cpuSeconds / wall seconds since markStart(): 1.0 = one core busy. */
  cpuCores: number;
}

export interface ClusterEvents {
  flush: [FlushCounts];
  error: [unknown];
}

/** Messages of the IPC protocol between the harness and bench/node-process.ts. */
export type ToNode = { type: 'mark' } | { type: 'stop' };
export type FromNode =
  | { type: 'flush'; counts: FlushCounts }
  | { type: 'error'; message: string }
  | { type: 'stopped'; report: NodeReport };

export async function loadTasks(source: TaskSource): Promise<TaskDefinition[]> {
  const mod = (await import(source.module)) as Record<string, unknown>;
  const factory = mod[source.exportName];
  if (typeof factory !== 'function') {
    throw new Error(`${source.module} has no function export ${source.exportName}`);
  }
  return (factory as (args: unknown) => TaskDefinition[])(source.args);
}

export function flushCounts(result: {
  completed: number;
  retried: number;
  failed: number;
  deadLettered: number;
  stale: number;
  accepted: { name: string; outcome: string }[];
}): FlushCounts {
  const completedByName: Record<string, number> = {};
  for (const a of result.accepted) {
    if (a.outcome === 'completed') completedByName[a.name] = (completedByName[a.name] ?? 0) + 1;
  }
  return {
    completed: result.completed,
    retried: result.retried,
    failed: result.failed,
    deadLettered: result.deadLettered,
    stale: result.stale,
    completedByName,
  };
}

export class BenchCluster extends EventEmitter<ClusterEvents> {
  /** Totals over every flush of every node. */
  readonly totals: FlushCounts = {
    completed: 0,
    retried: 0,
    failed: 0,
    deadLettered: 0,
    stale: 0,
    completedByName: {},
  };
  private readonly local: TaskmillNode[] = [];
  private readonly children: NodeProcess[] = [];
  private markCpu = process.cpuUsage();
  private markAt = performance.now();
  private stopping: Promise<NodeReport[]> | undefined;

  private constructor(private readonly options: ClusterOptions) {
    super();
  }

  static async start(options: ClusterOptions): Promise<BenchCluster> {
    if (options.nodeEnv && !options.spawn) {
      throw new Error(
        'nodeEnv applies to spawned nodes only: in-process nodes share the harness environment',
      );
    }
    const cluster = new BenchCluster(options);
    try {
      if (options.spawn) await cluster.spawnAll();
      else await cluster.startLocal();
    } catch (error) {
      await cluster.stop().catch(() => {});
      throw error;
    }
    return cluster;
  }

  /** In-process nodes (empty when spawned). */
  get nodes(): readonly TaskmillNode[] {
    return this.local;
  }

  /** Resets the CPU baselines: call when the measured part begins. */
  markStart(): void {
    this.markCpu = process.cpuUsage();
    this.markAt = performance.now();
    for (const child of this.children) child.send({ type: 'mark' } satisfies ToNode);
  }

  stop(): Promise<NodeReport[]> {
    this.stopping ??= this.stopAll();
    return this.stopping;
  }

  private record(counts: FlushCounts): void {
    const t = this.totals;
    t.completed += counts.completed;
    t.retried += counts.retried;
    t.failed += counts.failed;
    t.deadLettered += counts.deadLettered;
    t.stale += counts.stale;
    for (const [name, n] of Object.entries(counts.completedByName)) {
      t.completedByName[name] = (t.completedByName[name] ?? 0) + n;
    }
    this.emit('flush', counts);
  }

  /** Node errors go to whoever waits on the run; with nobody listening they are printed, not thrown. */
  private fail(error: unknown): void {
    if (this.listenerCount('error') > 0) this.emit('error', error);
    else console.error('node error:', error);
  }

  private async startLocal(): Promise<void> {
    const tasks = await loadTasks(this.options.tasks);
    for (let i = 0; i < this.options.nodes; i++) {
      const node = await startNode({
        ...this.options.knobs,
        name: `${this.options.namePrefix ?? 'bench'}-${i}`,
        connectionString: this.options.nodeUrl?.(i) ?? this.options.url,
        tasks,
      });
      node.on('flush', (result) => this.record(flushCounts(result)));
      node.on('error', (error) => this.fail(error));
      this.local.push(node);
    }
  }

  private async spawnAll(): Promise<void> {
    await Promise.all(Array.from({ length: this.options.nodes }, (_, i) => this.spawnOne(i)));
  }

  private async spawnOne(i: number): Promise<void> {
    const spec = {
      url: this.options.nodeUrl?.(i) ?? this.options.url,
      name: `${this.options.namePrefix ?? 'bench'}-${i}`,
      knobs: this.options.knobs,
      tasks: this.options.tasks,
    };
    const child = new NodeProcess({
      entry: new URL('./node-process.ts', import.meta.url),
      args: [JSON.stringify(spec)],
      execArgv: process.execArgv,
      env: { ...process.env, ...this.options.nodeEnv?.(i) },
      name: `node process ${spec.name}`,
      // The harness's stdout carries only its summary line: node output goes to stderr.
      onLine: (line) => process.stderr.write(`${line}\n`),
      onMessage: (message) => {
        const msg = message as FromNode;
        if (msg.type === 'flush') this.record(msg.counts);
        else if (msg.type === 'error') this.fail(new Error(`${spec.name}: ${msg.message}`));
      },
    });
    this.children.push(child);
    void child.exited.then(({ code }) => {
      if (!this.stopping) this.fail(new Error(`node process ${spec.name} exited (code ${code})`));
    });
    await child.registered;
  }

  private async stopAll(): Promise<NodeReport[]> {
    const reports: NodeReport[] = [];
    if (this.local.length > 0) {
      await Promise.all(this.local.map((n) => n.stop()));
      const stats = this.local.map((n) => n.stats());
      const cpu = process.cpuUsage(this.markCpu);
      const seconds = (cpu.user + cpu.system) / 1e6;
      const wall = (performance.now() - this.markAt) / 1000;
      reports.push({
        name: `${this.options.namePrefix ?? 'bench'}-in-process`,
        pid: process.pid,
        nodes: this.local.length,
        completed: sum(stats.map((s) => s.completed)),
        failed: sum(stats.map((s) => s.failed)),
        retried: sum(stats.map((s) => s.retried)),
        stale: sum(stats.map((s) => s.stale)),
        cpuSeconds: seconds,
        cpuCores: wall > 0 ? seconds / wall : 0,
      });
    }
    reports.push(...(await Promise.all(this.children.map((c) => stopChild(c)))));
    return reports;
  }
}

function stopChild(child: NodeProcess): Promise<NodeReport> {
  if (!child.running) {
    return Promise.reject(
      new Error(`node process ${child.pid} is not running (exit code ${child.child.exitCode})`),
    );
  }
  let report: NodeReport | undefined;
  child.child.on('message', (msg: FromNode) => {
    if (msg.type === 'stopped') report = msg.report;
  });
  child.send({ type: 'stop' } satisfies ToNode);
  return child.exited.then(({ code }) => {
    if (report) return report;
    throw new Error(`node process ${child.pid} exited with code ${code} without a report`);
  });
}

function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
