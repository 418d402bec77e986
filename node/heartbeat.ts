/**
 * The node's registration and heartbeat: upserts its tm_nodes row (capacity, task names, load, CPU,
 * connections in use and budget) every `intervalMs`, stamped with database time. If the row had
 * disappeared (the planner declared the node dead and took its tasks back), the upsert re-creates it
 * and `onReregistered` tells the node to drop the tasks it had queued and abort those it was running:
 * they belong to someone else now.
 *
 * States: unregistered -> registered (first beat) -> (lost -> registered)* -> removed (stop).
 */
import { availableParallelism } from 'node:os';
import type pg from 'pg';
import { Loop, type Timers } from '../loop/loop.ts';
import { beat, deleteNode } from '../store/nodes.ts';

export const DEFAULT_HEARTBEAT_INTERVAL_MS = 1_000;

export interface NodeRegistration {
  id: string;
  name: string;
  capacity: number;
  taskNames: string[];
}

export interface HeartbeatOptions {
  db: pg.Pool;
  node: NodeRegistration;
  intervalMs?: number;
  inFlight: () => number;
  /** Connections the node has open now and its budget (connection-budget.ts); reported with each beat. */
  connections?: () => { inUse: number; max: number };
  /**
   * The node's row was re-created: the planner had declared the node dead and taken back the tasks
   * it held. Seen by the row's started_at changing, since the statement that re-created the row may be
   * an earlier beat the client gave up on and the network delivered late.
   */
  onReregistered: () => void;
  onError: (error: unknown) => void;
  /** Called after each beat that reached the database. */
  onBeat?: () => void;
  timers?: Timers;
}

export class Heartbeat {
  private readonly loop: Loop<{ inserted: boolean }>;
  private beats = 0;
  /** started_at of the node's row as the last beat saw it (database time, epoch ms). */
  private registeredAt: number | undefined;
  private lastCpu = process.cpuUsage();
  private lastWall = performance.now();

  constructor(private readonly options: HeartbeatOptions) {
    this.loop = new Loop({
      name: 'heartbeat',
      runOnce: () => this.runOnce(),
      delayMs: () => options.intervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS,
      onError: options.onError,
      onSuccess: () => options.onBeat?.(),
      // The beat is the node's liveness: while the database is away it backs off only to twice its
      // interval, so the node is seen alive again within moments of the database coming back.
      maxBackoffMs: 2 * (options.intervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS),
      timers: options.timers,
    });
  }

  start(): void {
    this.loop.start();
  }

  async runOnce(): Promise<{ inserted: boolean }> {
    const { node } = this.options;
    const { inserted, startedAt } = await beat(this.options.db, node, {
      inFlight: this.options.inFlight(),
      cpu: this.cpu(),
      connections: this.options.connections?.(),
    });
    const registered = startedAt.getTime();
    if (this.registeredAt !== undefined && registered !== this.registeredAt) this.options.onReregistered();
    this.registeredAt = registered;
    this.beats++;
    return { inserted };
  }

  /** Stops beating and removes the node row. */
  async stop(): Promise<void> {
    await this.loop.stop();
    if (this.beats > 0) await deleteNode(this.options.db, this.options.node.id);
  }

  /** Share of the machine's CPU this process used since the last beat (0..1). */
  private cpu(): number {
    const cpu = process.cpuUsage(this.lastCpu);
    const wall = performance.now() - this.lastWall;
    this.lastCpu = process.cpuUsage();
    this.lastWall = performance.now();
    if (wall <= 0) return 0;
    return Math.min(1, (cpu.user + cpu.system) / 1000 / wall / availableParallelism());
  }
}
