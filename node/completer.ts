/**
 * Batched completer: collects task outcomes and commits them in batches, flushed when `batchSize`
 * outcomes or `maxBatchBytes` of payload wait, or `flushIntervalMs` after the first one arrived,
 * whichever comes first. One flush runs at a time; while more than `highWaterMark` outcomes or
 * `highWaterMarkBytes` of payload wait, `saturated` is true and the node stops dispatching
 * (backpressure), so memory stays bounded whatever the size of the results.
 *
 * A batch is bounded by count and by bytes (results, children's messages, join messages, error text):
 * the whole batch travels as a few array parameters of one statement, hex-encoded into one string.
 * A flush that fails is handled by what failed:
 * - the database is unreachable (connection refused, terminated, server restarting): the outcomes are
 *   not at fault and are all kept, retried with a backoff doubling up to `maxRetryDelayMs`, for as long
 *   as the node lives; if it dies, the planner takes its tasks back;
 * - a transient conflict (deadlock, serialization failure, lock timeout): the batch is retried as is
 *   with the same backoff, up to MAX_TRANSIENT_RETRIES times in a row, then treated as below;
 * - anything else (a row the database refuses, a statement too large to build): the batch is bisected
 *   until the rows that fail are alone. A lone success that fails becomes a failed attempt with a
 *   COMPLETION_FAILED error, retried or ended by its task's retry policy (`Success.ifRejected`); a lone
 *   failure that fails is written again with a plain error text, then without a retry, then dropped
 *   (reported through onError). The other rows of the batch commit: one bad row never wedges the rest.
 *
 * Error texts are bounded when they arrive (`maxErrorBytes`, truncated with a marker) and stripped of
 * NUL characters, which PostgreSQL text cannot hold.
 *
 * States: idle -> pending (timer armed) -> flushing -> idle. Main thread only.
 */
import type pg from 'pg';
import { DEFAULT_MAX_ERROR_BYTES } from '../task/codec.ts';
import { TaskmillError } from '../task/errors.ts';
import { isConnectionError } from '../log/failure-log.ts';
import {
  completeTasks,
  failTasks,
  failureBytes,
  storableError,
  successBytes,
  type Accepted,
  type Failure,
  type Success,
} from '../store/tasks.ts';

const MiB = 1024 * 1024;

export const COMPLETER_DEFAULTS = {
  batchSize: 500,
  /**
   * Payload bytes one flush carries at most (a single larger outcome still goes, alone). Bytea arrays
   * travel as hex text, so a flush builds strings of about twice this; twelve 24 MB results in one
   * statement exceeded V8's largest string.
   */
  maxBatchBytes: 32 * MiB,
  /** distributed-task-framework `manage-delay` plays this role on the completion side. */
  flushIntervalMs: 5,
  highWaterMark: 5_000,
  highWaterMarkBytes: 256 * MiB,
  /** Longest wait between two attempts of a failing flush. */
  maxRetryDelayMs: 5_000,
};

/** Consecutive transient failures (deadlock, serialization) after which a batch is bisected instead. */
export const MAX_TRANSIENT_RETRIES = 5;

/** SQLSTATEs of conflicts that a retry of the same statement usually resolves. */
const TRANSIENT_SQLSTATES = new Set(['40001', '40P01', '55P03']);

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
  db: Pick<pg.Pool, 'query'>;
  nodeId: string;
  batchSize?: number;
  maxBatchBytes?: number;
  flushIntervalMs?: number;
  highWaterMark?: number;
  highWaterMarkBytes?: number;
  /** Error texts longer than this (UTF-8 bytes) are truncated with a marker. */
  maxErrorBytes?: number;
  maxRetryDelayMs?: number;
  onFlush?: (result: FlushResult) => void;
  onError: (error: unknown) => void;
}

interface Entry<T> {
  item: T;
  bytes: number;
}

/**
 * Removes from the front of `queue` the longest run of at most `maxCount` entries and `maxBytes` bytes;
 * with `atLeastOne`, the first entry is taken even when it alone exceeds `maxBytes`.
 */
export function takeBatch<T extends { bytes: number }>(
  queue: T[],
  maxCount: number,
  maxBytes: number,
  atLeastOne = true,
): T[] {
  let n = 0;
  let bytes = 0;
  while (n < queue.length && n < maxCount) {
    const size = queue[n].bytes;
    if (bytes + size > maxBytes && !(n === 0 && atLeastOne)) break;
    bytes += size;
    n++;
  }
  return queue.splice(0, n);
}

/** True when an error says the database cannot be reached at all (not the fault of any row). */
export function isDatabaseUnavailable(error: unknown): boolean {
  if (isConnectionError(error)) return true;
  const message = (error as { message?: unknown } | undefined)?.message;
  return typeof message === 'string' && message.includes('after calling end on the pool');
}

export class Completer {
  private successes: Entry<Success>[] = [];
  private failures: Entry<Failure>[] = [];
  private bytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private retryDelayMs = 0;
  private transientStreak = 0;
  /** How many times the database refused each failure row written alone. */
  private readonly refusals = new WeakMap<Failure, number>();
  private readonly batchSize: number;
  private readonly maxBatchBytes: number;
  private readonly flushIntervalMs: number;
  private readonly highWaterMark: number;
  private readonly highWaterMarkBytes: number;
  private readonly maxErrorBytes: number;
  private readonly maxRetryDelayMs: number;
  private drainedWaiters: (() => void)[] = [];

  constructor(private readonly options: CompleterOptions) {
    this.batchSize = options.batchSize ?? COMPLETER_DEFAULTS.batchSize;
    this.maxBatchBytes = options.maxBatchBytes ?? COMPLETER_DEFAULTS.maxBatchBytes;
    this.flushIntervalMs = options.flushIntervalMs ?? COMPLETER_DEFAULTS.flushIntervalMs;
    this.highWaterMark = options.highWaterMark ?? COMPLETER_DEFAULTS.highWaterMark;
    this.highWaterMarkBytes = options.highWaterMarkBytes ?? COMPLETER_DEFAULTS.highWaterMarkBytes;
    this.maxErrorBytes = options.maxErrorBytes ?? DEFAULT_MAX_ERROR_BYTES;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? COMPLETER_DEFAULTS.maxRetryDelayMs;
  }

  get pending(): number {
    return this.successes.length + this.failures.length;
  }

  /** Payload bytes of the outcomes waiting. */
  get pendingBytes(): number {
    return this.bytes;
  }

  get saturated(): boolean {
    return this.pending >= this.highWaterMark || this.bytes >= this.highWaterMarkBytes;
  }

  /** Delay before the next attempt of a failed flush (0 after a success). */
  get retryDelay(): number {
    return this.retryDelayMs;
  }

  succeed(success: Success): void {
    this.successes.push(this.entry(success, successBytes(success)));
    this.schedule();
  }

  fail(failure: Failure): void {
    const error = storableError(failure.error, this.maxErrorBytes);
    const bounded = error === failure.error ? failure : { ...failure, error };
    this.failures.push(this.entry(bounded, failureBytes(bounded)));
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
        const wait = Math.min(this.retryDelayMs, Math.max(0, deadline - Date.now()));
        await new Promise((resolve) => setTimeout(resolve, wait));
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

  /**
   * One flush: up to batchSize outcomes and maxBatchBytes bytes (at least one outcome). Throws when the
   * database is unreachable (or a conflict persists), after putting back what was not committed.
   */
  async runOnce(): Promise<FlushResult> {
    const successes = takeBatch(this.successes, this.batchSize, this.maxBatchBytes);
    const usedBytes = successes.reduce((n, e) => n + e.bytes, 0);
    const failures = takeBatch(
      this.failures,
      this.batchSize - successes.length,
      this.maxBatchBytes - usedBytes,
      successes.length === 0,
    );
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
    for (const e of [...successes, ...failures]) this.bytes -= e.bytes;
    let flush!: () => void;
    this.flushing = new Promise((resolve) => (flush = resolve));
    /** Entries neither committed nor turned into something else yet. */
    const left = new Set<Entry<unknown>>([...successes, ...failures]);
    let written = 0;
    const write = async <T>(entries: Entry<T>[], commit: (items: T[]) => Promise<Accepted[]>) => {
      const accepted = await commit(entries.map((e) => e.item));
      for (const e of entries) left.delete(e);
      written += entries.length;
      result.accepted.push(...accepted);
    };
    try {
      const { db, nodeId } = this.options;
      await this.bisect(
        successes,
        (batch) => write(batch, (items) => completeTasks(db, nodeId, items)),
        (entry, error) => {
          left.delete(entry);
          this.refuseSuccess(entry.item, error);
        },
      );
      await this.bisect(
        failures,
        (batch) => write(batch, (items) => failTasks(db, nodeId, items)),
        (entry, error) => {
          left.delete(entry);
          this.refuseFailure(entry.item, error);
        },
      );
      this.retryDelayMs = 0;
      this.transientStreak = 0;
      this.report(result, written);
      return result;
    } catch (error) {
      // Put back in front what did not commit; a completion is idempotent under fencing, so a retry is
      // safe even if the failed round trip had in fact committed.
      const back = <T>(taken: Entry<T>[], queue: Entry<T>[]) => {
        const kept = taken.filter((e) => left.has(e));
        for (const e of kept) this.bytes += e.bytes;
        queue.unshift(...kept);
      };
      back(successes, this.successes);
      back(failures, this.failures);
      if (isTransient(error)) this.transientStreak++;
      this.retryDelayMs = Math.min(this.maxRetryDelayMs, Math.max(50, this.retryDelayMs * 2));
      if (written > 0) this.report(result, written);
      throw error;
    } finally {
      this.flushing = undefined;
      flush();
      this.afterFlush();
    }
  }

  /**
   * Writes `entries` with `write`; when the database refuses the batch for a reason that is not the
   * database being away, writes each half on its own, down to single rows, which `refuse` takes over.
   */
  private async bisect<T>(
    entries: Entry<T>[],
    write: (entries: Entry<T>[]) => Promise<void>,
    refuse: (entry: Entry<T>, error: unknown) => void,
  ): Promise<void> {
    if (entries.length === 0) return;
    try {
      await write(entries);
    } catch (error) {
      if (!this.isRowError(error)) throw error;
      if (entries.length === 1) {
        refuse(entries[0], error);
        return;
      }
      const half = Math.ceil(entries.length / 2);
      await this.bisect(entries.slice(0, half), write, refuse);
      await this.bisect(entries.slice(half), write, refuse);
    }
  }

  private isRowError(error: unknown): boolean {
    if (isDatabaseUnavailable(error)) return false;
    return !isTransient(error) || this.transientStreak >= MAX_TRANSIENT_RETRIES;
  }

  /** A success the database refused, alone: a failed attempt, retried or ended by its task's policy. */
  private refuseSuccess(success: Success, error: unknown): void {
    const reason = describe(error);
    this.fail({
      id: success.id,
      assignment: success.assignment,
      error:
        `TaskmillError [COMPLETION_FAILED]: The task returned but its outcome (result, children, join ` +
        `messages) could not be committed: ${reason}`,
      retryDelayMs: success.ifRejected?.retryDelayMs ?? null,
      deadLetter: success.ifRejected?.deadLetter ?? true,
      cancelled: false,
    });
    this.options.onError(
      new TaskmillError(
        'COMPLETION_FAILED',
        `The completion of task ${success.id} was refused by the database and recorded as a failed attempt: ${reason}`,
        { cause: error },
      ),
    );
  }

  /** A failure the database refused, alone: again with a plain error, then without a retry, then dropped. */
  private refuseFailure(failure: Failure, error: unknown): void {
    const refusals = (this.refusals.get(failure) ?? 0) + 1;
    const reason = describe(error);
    if (refusals > 2) {
      this.options.onError(
        new TaskmillError(
          'COMPLETION_FAILED',
          `The failure of task ${failure.id} could not be recorded and was dropped (the task stays with this node until it restarts): ${reason}`,
          { cause: error },
        ),
      );
      return;
    }
    const again: Failure = {
      ...failure,
      error: `TaskmillError [COMPLETION_FAILED]: The task failed, and its error could not be stored: ${reason}`,
      retryDelayMs: refusals === 2 ? null : failure.retryDelayMs,
    };
    this.refusals.set(again, refusals);
    this.fail(again);
  }

  private report(result: FlushResult, written: number): void {
    for (const a of result.accepted) {
      if (a.outcome === 'completed') result.completed++;
      else if (a.outcome === 'retried') result.retried++;
      else if (a.outcome === 'dead') result.deadLettered++;
      else if (a.outcome === 'cancelled') result.cancelled++;
      else result.failed++;
    }
    result.stale = written - result.accepted.length;
    this.options.onFlush?.(result);
  }

  private entry<T>(item: T, bytes: number): Entry<T> {
    this.bytes += bytes;
    return { item, bytes };
  }

  private schedule(): void {
    if (this.flushing) return;
    if (this.pending >= this.batchSize || this.bytes >= this.maxBatchBytes) {
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

function isTransient(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && TRANSIENT_SQLSTATES.has(code);
}

/** A database error in one line, bounded: its SQLSTATE, message and detail. */
function describe(error: unknown): string {
  const e = error as { code?: unknown; message?: unknown; detail?: unknown } | undefined;
  const code = typeof e?.code === 'string' ? ` [${e.code}]` : '';
  const detail = typeof e?.detail === 'string' ? ` (${e.detail})` : '';
  const name = error instanceof Error ? error.name : 'Error';
  return `${name}${code}: ${String(e?.message ?? error)}${detail}`.slice(0, 2_000);
}
