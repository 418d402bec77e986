/**
 * Batched completer: collects task outcomes (task/outcome.ts) with what settle() decided of each, and
 * commits them in batches, flushed when `batchSize` outcomes or `maxBatchBytes` of payload wait, or
 * `flushIntervalMs` after the first one arrived, whichever comes first.
 *
 * Flushes that are not full are paced (`flushShare`): after a flush of several outcomes that took d ms,
 * the next partial one waits until d x (1 - share) / share ms have passed since it ended (at most
 * `maxFlushIntervalMs`), so the fixed cost of a commit (a transaction, its WAL flush, the planner's
 * wake-up) is spread over more outcomes when completions arrive faster than flushes. After a flush of
 * one outcome, or a quiet spell, the next still goes `flushIntervalMs` after its first outcome (tasks
 * run one after another gain nothing by waiting).
 *
 * One flush runs at a time; while more than `highWaterMark` outcomes or `highWaterMarkBytes` of payload
 * wait, `saturated` is true and the node stops dispatching (backpressure), so memory stays bounded
 * whatever the size of the results.
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
 *   COMPLETION_FAILED error, retried or ended by its task's retry policy (settle()'s `ifRejected`); a lone
 *   failure that fails is written again with a plain error text, then without a retry, then dropped
 *   (reported through onError). The other rows of the batch commit: one bad row never wedges the rest.
 *
 * Error texts are bounded when they arrive (`maxErrorBytes`, truncated with a marker) and stripped of
 * NUL characters, which PostgreSQL text cannot hold.
 *
 * Exactly-once tasks take the same path: their outcome arrives 'committed' (their worker thread wrote
 * it in the handler's own transaction, which is their guarantee), so a flush writes nothing for them
 * and only reports them, counted with the rest. So does an attempt that ended on a durable wait: its
 * thread committed the suspension (store/steps.ts suspendTask).
 *
 * States: idle -> pending (timer armed) -> flushing -> idle. Main thread only.
 */
import type pg from 'pg';
import { DEFAULT_MAX_ERROR_BYTES } from '../task/codec.ts';
import { TaskmillError } from '../task/errors.ts';
import { isConnectionError } from '../log/failure-log.ts';
import {
  errorHead,
  errorText,
  type CommittedOutcome,
  type Outcome,
  type SerializedError,
} from '../task/outcome.ts';
import type { FailedAttempt, Settlement } from '../task/settle.ts';
import {
  completeTasks,
  failTasks,
  failureBytes,
  storableError,
  successBytes,
  type Accepted,
  type Completion,
  type FailedAttemptOutcome,
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
  /** Longest wait of a partial batch when flushes are paced (see `flushShare`). */
  maxFlushIntervalMs: 50,
  /**
   * Share of the time partial flushes may take: after a flush of several outcomes that took d ms, the
   * next partial one starts at least d x (1 - share) / share ms after it ended. 1 turns pacing off (every partial batch goes after
   * `flushIntervalMs`).
   */
  flushShare: 0.1,
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
  /** Attempts that ended on a durable wait (their thread committed it): the tasks sleep, uncharged. */
  suspended: number;
  /** Outcomes refused because the task was reassigned meanwhile (fenced out). */
  stale: number;
  /** Every accepted outcome, with its task name (exactly-once ones too, committed by their thread). */
  accepted: Accepted[];
  /** Outcomes this flush wrote to the database (not those exactly-once threads committed themselves). */
  batchSize: number;
  /** Time its statements took, ms (0 when it wrote nothing). */
  durationMs: number;
}

/** A success waiting: its outcome, and what it becomes if the database refuses it. */
type Success = Completion & { task: Outcome['task'] };

interface Waiting<T> {
  item: T;
  bytes: number;
}

interface SuccessEntry extends Waiting<Success> {
  ifRejected: FailedAttempt;
}

export interface CompleterOptions {
  db: Pick<pg.Pool, 'query'>;
  nodeId: string;
  batchSize?: number;
  maxBatchBytes?: number;
  flushIntervalMs?: number;
  maxFlushIntervalMs?: number;
  flushShare?: number;
  highWaterMark?: number;
  highWaterMarkBytes?: number;
  /** Error texts longer than this (UTF-8 bytes) are truncated with a marker. */
  maxErrorBytes?: number;
  maxRetryDelayMs?: number;
  onFlush?: (result: FlushResult) => void;
  onError: (error: unknown) => void;
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
  private successes: SuccessEntry[] = [];
  private failures: Waiting<FailedAttemptOutcome>[] = [];
  /** Exactly-once outcomes their thread committed: reported by the next flush, written by none. */
  private committed: (CommittedOutcome & { task: Outcome['task'] })[] = [];
  private bytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private retryDelayMs = 0;
  private transientStreak = 0;
  /** How many times the database refused each failure row written alone. */
  private readonly refusals = new WeakMap<FailedAttemptOutcome, number>();
  private readonly batchSize: number;
  private readonly maxBatchBytes: number;
  private readonly flushIntervalMs: number;
  private readonly maxFlushIntervalMs: number;
  private readonly flushShare: number;
  /** End (performance.now()) and duration of the last flush that wrote something. */
  private lastFlushEnd = -Infinity;
  private lastFlushMs = 0;
  private readonly highWaterMark: number;
  private readonly highWaterMarkBytes: number;
  private readonly maxErrorBytes: number;
  private readonly maxRetryDelayMs: number;
  private drainedWaiters: (() => void)[] = [];

  constructor(private readonly options: CompleterOptions) {
    this.batchSize = options.batchSize ?? COMPLETER_DEFAULTS.batchSize;
    this.maxBatchBytes = options.maxBatchBytes ?? COMPLETER_DEFAULTS.maxBatchBytes;
    this.flushIntervalMs = options.flushIntervalMs ?? COMPLETER_DEFAULTS.flushIntervalMs;
    this.maxFlushIntervalMs = Math.max(
      this.flushIntervalMs,
      options.maxFlushIntervalMs ?? COMPLETER_DEFAULTS.maxFlushIntervalMs,
    );
    this.flushShare = options.flushShare ?? COMPLETER_DEFAULTS.flushShare;
    this.highWaterMark = options.highWaterMark ?? COMPLETER_DEFAULTS.highWaterMark;
    this.highWaterMarkBytes = options.highWaterMarkBytes ?? COMPLETER_DEFAULTS.highWaterMarkBytes;
    this.maxErrorBytes = options.maxErrorBytes ?? DEFAULT_MAX_ERROR_BYTES;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? COMPLETER_DEFAULTS.maxRetryDelayMs;
  }

  get pending(): number {
    return this.successes.length + this.failures.length + this.committed.length;
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

  /**
   * Takes an outcome with settle()'s decision of it: a success to commit, a failed attempt to charge, or
   * an exactly-once outcome already committed by its thread, to report. A task handed back (settled
   * 'hand-back') has nothing to commit and is not taken.
   */
  add(outcome: Outcome, settlement: Settlement): void {
    if (settlement.action === 'complete' && outcome.kind === 'done') {
      const bytes = successBytes(outcome);
      this.bytes += bytes;
      this.successes.push({ item: outcome, bytes, ifRejected: settlement.ifRejected });
    } else if (settlement.action === 'fail' && outcome.kind === 'failed') {
      const { retryDelayMs, deadLetter, cancelled } = settlement;
      this.addFailure({ ...outcome, settlement: { retryDelayMs, deadLetter, cancelled } });
    } else if (settlement.action === 'committed' && outcome.kind === 'committed') {
      this.committed.push(outcome);
    } else if (settlement.action !== 'hand-back') {
      throw new Error(`an outcome '${outcome.kind}' cannot be settled as '${settlement.action}'`);
    }
    this.schedule();
  }

  private addFailure(failure: FailedAttemptOutcome): void {
    const error = boundedError(failure.error, this.maxErrorBytes);
    const bounded = error === failure.error ? failure : { ...failure, error };
    const bytes = failureBytes(bounded);
    this.bytes += bytes;
    this.failures.push({ item: bounded, bytes });
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
      suspended: 0,
      stale: 0,
      accepted: [],
      batchSize: successes.length + failures.length,
      durationMs: 0,
    };
    // Committed by their threads: reported now, whatever becomes of the statements below.
    const committed = this.committed.splice(0);
    let written = 0;
    for (const c of committed) {
      written++;
      if (c.outcome !== 'stale')
        result.accepted.push({ id: c.task.id, name: c.task.name, outcome: c.outcome });
    }
    if (successes.length === 0 && failures.length === 0) {
      if (written > 0) this.report(result, written);
      this.afterFlush();
      return result;
    }
    for (const e of [...successes, ...failures]) this.bytes -= e.bytes;
    let flush!: () => void;
    this.flushing = new Promise((resolve) => (flush = resolve));
    /** Entries neither committed nor turned into something else yet. */
    const left = new Set<Waiting<unknown>>([...successes, ...failures]);
    const startedAt = performance.now();
    const write = async <T>(entries: Waiting<T>[], commit: (items: T[]) => Promise<Accepted[]>) => {
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
          this.refuseSuccess(entry, error);
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
      result.durationMs = performance.now() - startedAt;
      this.lastFlushEnd = startedAt + result.durationMs;
      // A lone outcome shows they do not arrive faster than flushes: waiting would add latency only.
      this.lastFlushMs = result.batchSize > 1 ? result.durationMs : 0;
      this.report(result, written);
      return result;
    } catch (error) {
      // Put back in front what did not commit; a completion is idempotent under fencing, so a retry is
      // safe even if the failed round trip had in fact committed.
      const back = <T>(taken: Waiting<T>[], queue: Waiting<T>[]) => {
        const kept = taken.filter((e) => left.has(e));
        for (const e of kept) this.bytes += e.bytes;
        queue.unshift(...kept);
      };
      back(successes, this.successes);
      back(failures, this.failures);
      if (isTransient(error)) this.transientStreak++;
      this.retryDelayMs = Math.min(this.maxRetryDelayMs, Math.max(50, this.retryDelayMs * 2));
      result.durationMs = performance.now() - startedAt;
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
  private async bisect<E>(
    entries: E[],
    write: (entries: E[]) => Promise<void>,
    refuse: (entry: E, error: unknown) => void,
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
  private refuseSuccess({ item, ifRejected }: SuccessEntry, error: unknown): void {
    const reason = describe(error);
    this.addFailure({
      kind: 'failed',
      task: item.task,
      error: completionFailed(
        `The task returned but its outcome (result, children, join messages) could not be committed: ${reason}`,
      ),
      stopRetry: false,
      settlement: { ...ifRejected, cancelled: false },
    });
    this.schedule();
    this.options.onError(
      new TaskmillError(
        'COMPLETION_FAILED',
        `The completion of task ${item.task.id} was refused by the database and recorded as a failed attempt: ${reason}`,
        { cause: error },
      ),
    );
  }

  /** A failure the database refused, alone: again with a plain error, then without a retry, then dropped. */
  private refuseFailure(failure: FailedAttemptOutcome, error: unknown): void {
    const refusals = (this.refusals.get(failure) ?? 0) + 1;
    const reason = describe(error);
    if (refusals > 2) {
      this.options.onError(
        new TaskmillError(
          'COMPLETION_FAILED',
          `The failure of task ${failure.task.id} could not be recorded and was dropped (the task stays with this node until it restarts): ${reason}`,
          { cause: error },
        ),
      );
      return;
    }
    const again: FailedAttemptOutcome = {
      ...failure,
      error: completionFailed(`The task failed, and its error could not be stored: ${reason}`),
      settlement: {
        ...failure.settlement,
        retryDelayMs: refusals === 2 ? null : failure.settlement.retryDelayMs,
      },
    };
    this.refusals.set(again, refusals);
    this.addFailure(again);
    this.schedule();
  }

  private report(result: FlushResult, written: number): void {
    for (const a of result.accepted) {
      if (a.outcome === 'completed') result.completed++;
      else if (a.outcome === 'retried') result.retried++;
      else if (a.outcome === 'dead') result.deadLettered++;
      else if (a.outcome === 'cancelled') result.cancelled++;
      else if (a.outcome === 'suspended') result.suspended++;
      else result.failed++;
    }
    result.stale = written - result.accepted.length;
    this.options.onFlush?.(result);
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
      }, this.partialFlushDelay());
    }
  }

  /** Wait before a partial batch goes: `flushIntervalMs`, or longer while the last flush is recent. */
  partialFlushDelay(now = performance.now()): number {
    const spacing = (this.lastFlushMs * (1 - this.flushShare)) / this.flushShare;
    const paced = this.lastFlushEnd + spacing - now;
    return Math.min(this.maxFlushIntervalMs, Math.max(this.flushIntervalMs, paced));
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

function completionFailed(message: string): SerializedError {
  return { name: 'TaskmillError', code: 'COMPLETION_FAILED', message };
}

/**
 * The error, bounded so that its errorText (the stored text) fits `maxBytes` UTF-8 bytes without NUL
 * characters: the same error when it does, else one whose message is the truncated text (with its
 * marker) after the error's head.
 */
export function boundedError(error: SerializedError, maxBytes: number): SerializedError {
  const text = errorText(error);
  const stored = storableError(text, maxBytes);
  if (stored === text) return error;
  const head = errorHead(error);
  return stored.startsWith(head)
    ? { name: error.name, code: error.code, message: stored.slice(head.length) }
    : { name: 'Error', message: stored };
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
