/**
 * Batched completer: collects task outcomes and commits them in batches, flushed when `batchSize`
 * outcomes wait or `flushIntervalMs` after the first one arrived, whichever comes first. One flush runs
 * at a time; while more than `highWaterMark` outcomes wait, `saturated` is true and the node stops
 * dispatching (backpressure). A flush that fails keeps its outcomes and is retried with a backoff:
 * nothing is dropped while the node lives, and if it dies the planner takes its tasks back.
 *
 * States: idle -> pending (timer armed) -> flushing -> idle. Main thread only.
 */
import type pg from 'pg';
import { completeTasks, failTasks, type Accepted, type Failure, type Success } from './task-store.ts';

export const COMPLETER_DEFAULTS = {
  batchSize: 500,
  /** distributed-task-framework `manage-delay` plays this role on the completion side. */
  flushIntervalMs: 5,
  highWaterMark: 5_000,
};

export interface FlushResult {
  completed: number;
  /** Failed attempts rescheduled by the retry policy. */
  retried: number;
  /** Tasks that failed for good, into the dead-letter table. */
  deadLettered: number;
  /** Tasks that failed for good, into history (dead-letter table off for their task). */
  failed: number;
  /** Tasks whose cancellation arrived before their outcome: they ended cancelled. */
  cancelled: number;
  /** Outcomes refused because the task was reassigned meanwhile (fenced out). */
  stale: number;
  /** Every accepted outcome, with its task name. */
  accepted: Accepted[];
}

export interface CompleterOptions {
  db: pg.Pool;
  nodeId: string;
  batchSize?: number;
  flushIntervalMs?: number;
  highWaterMark?: number;
  onFlush?: (result: FlushResult) => void;
  onError: (error: unknown) => void;
}

export class Completer {
  private successes: Success[] = [];
  private failures: Failure[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private retryDelayMs = 0;
  private readonly batchSize: number;
  private readonly flushIntervalMs: number;
  private readonly highWaterMark: number;
  private drainedWaiters: (() => void)[] = [];

  constructor(private readonly options: CompleterOptions) {
    this.batchSize = options.batchSize ?? COMPLETER_DEFAULTS.batchSize;
    this.flushIntervalMs = options.flushIntervalMs ?? COMPLETER_DEFAULTS.flushIntervalMs;
    this.highWaterMark = options.highWaterMark ?? COMPLETER_DEFAULTS.highWaterMark;
  }

  get pending(): number {
    return this.successes.length + this.failures.length;
  }

  get saturated(): boolean {
    return this.pending >= this.highWaterMark;
  }

  succeed(success: Success): void {
    this.successes.push(success);
    this.schedule();
  }

  fail(failure: Failure): void {
    this.failures.push(failure);
    this.schedule();
  }

  /**
   * Commits everything waiting now, retrying failed flushes until `deadline` (epoch ms). Returns the
   * outcomes left uncommitted (0 unless the database stayed unreachable): their tasks are taken back
   * by the planner once this node's heartbeat expires.
   */
  async drain(deadline = Infinity): Promise<number> {
    while ((this.pending > 0 || this.flushing) && Date.now() < deadline) {
      clearTimeout(this.timer);
      this.timer = undefined;
      if (this.flushing) {
        await this.flushing;
        continue;
      }
      try {
        await this.runOnce();
      } catch (error) {
        this.options.onError(error);
        await new Promise((resolve) => setTimeout(resolve, this.retryDelayMs));
      }
    }
    clearTimeout(this.timer);
    this.timer = undefined;
    return this.pending;
  }

  /** Resolves once nothing waits (used by backpressure). */
  whenDrained(): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainedWaiters.push(resolve));
  }

  /** One flush of up to batchSize outcomes. */
  async runOnce(): Promise<FlushResult> {
    const successes = this.successes.splice(0, this.batchSize);
    const failures = this.failures.splice(0, Math.max(0, this.batchSize - successes.length));
    const result: FlushResult = {
      completed: 0,
      retried: 0,
      deadLettered: 0,
      failed: 0,
      cancelled: 0,
      stale: 0,
      accepted: [],
    };
    if (successes.length === 0 && failures.length === 0) return result;
    let flush!: () => void;
    this.flushing = new Promise((resolve) => (flush = resolve));
    try {
      const accepted = [
        ...(successes.length > 0 ? await completeTasks(this.options.db, this.options.nodeId, successes) : []),
        ...(failures.length > 0 ? await failTasks(this.options.db, this.options.nodeId, failures) : []),
      ];
      for (const a of accepted) {
        if (a.outcome === 'completed') result.completed++;
        else if (a.outcome === 'retried') result.retried++;
        else if (a.outcome === 'dead') result.deadLettered++;
        else if (a.outcome === 'cancelled') result.cancelled++;
        else result.failed++;
      }
      result.accepted = accepted;
      result.stale = successes.length + failures.length - accepted.length;
      this.retryDelayMs = 0;
      this.options.onFlush?.(result);
      return result;
    } catch (error) {
      // Put them back in front; a completion is idempotent under fencing, so a retry is safe even if
      // the failed round trip had in fact committed.
      this.successes.unshift(...successes);
      this.failures.unshift(...failures);
      this.retryDelayMs = Math.min(5_000, Math.max(50, this.retryDelayMs * 2));
      throw error;
    } finally {
      this.flushing = undefined;
      flush();
      this.afterFlush();
    }
  }

  private schedule(): void {
    if (this.flushing) return;
    if (this.pending >= this.batchSize) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.startFlush();
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.startFlush();
      }, this.flushIntervalMs);
    }
  }

  private startFlush(): void {
    if (this.flushing) return;
    this.runOnce().catch((error) => this.options.onError(error));
  }

  private afterFlush(): void {
    if (this.pending === 0) {
      for (const resolve of this.drainedWaiters.splice(0)) resolve();
      return;
    }
    if (this.retryDelayMs > 0) {
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        this.startFlush();
      }, this.retryDelayMs);
    } else {
      this.schedule();
    }
  }
}
