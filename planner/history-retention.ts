/**
 * History retention by partition: tm_history is range-partitioned by finished_at (migration 004), and
 * the leader's maintenance calls `runOnce()` each pass to
 *   1. drop the partitions whose whole range is past the retention (DROP TABLE, never DELETE),
 *   2. delete the expired rows of the default partition (rows that landed there and were never moved),
 *   3. create the partitions of the current period and the next `aheadPeriods`, and of any period the
 *      default partition holds rows for, moving those rows into them.
 * docs/history.md explains the period, the lock levels, and why a range is attached only while no
 * transaction can still insert into it.
 *
 * Stateless between passes: the catalog is the state. A pass holds the `history` lease of tm_locks
 * (store/locks.ts), so two nodes that both believe they lead never manage partitions at once. It is a
 * row, not a session advisory lock, because a pooler in transaction mode (PgBouncer) may run the
 * pass's statements, and an unlock, on different server sessions (docs/connections.md).
 */
import type pg from 'pg';
import { randomUUID } from 'node:crypto';
import { checkout } from '../store/checkout.ts';
import { releaseLock, takeLock } from '../store/locks.ts';
import {
  addPartition,
  defaultPartitionSlots,
  dropPartition,
  listPartitions,
  purgeDefaultPartition,
  purgeKeysAndProgress,
  type HistoryPartition,
} from '../store/history.ts';

/** Candidate partition periods; the period of a retention is the largest one within a quarter of it. */
export const HISTORY_PERIODS_MS = [
  1_000,
  5_000,
  15_000,
  60_000,
  5 * 60_000,
  15 * 60_000,
  3_600_000,
  6 * 3_600_000,
  86_400_000,
  7 * 86_400_000,
] as const;

export const HISTORY_RETENTION_DEFAULTS = {
  /** Partitions exist for the current period and this many after it... */
  aheadPeriods: 3,
  /**
   * ...and at least this far ahead, so short periods (tests, demos) ride out a leader failover
   * (lease TTL plus a maintenance interval) without rows landing in the default partition.
   */
  aheadMinMs: 10_000,
  /**
   * How long a DDL statement waits for its lock before giving up until the next pass. Completions that
   * arrive meanwhile queue behind it (DROP asks for ACCESS EXCLUSIVE on tm_history), so this bounds the
   * stall a blocked drop can cause on the hot path.
   */
  lockTimeoutMs: 100,
};

/** When a range may be attached (database time); see attachable(). */
const ATTACH_TIMING = {
  /** A range that starts in the future is attached only if it starts at least this far ahead... */
  leadMs: 2_000,
  /** ...and the attaching transaction reaches its end this long before the range starts. */
  guardMs: 500,
  /** A range in the past is attached only once it ends this long before the oldest open transaction. */
  pastMarginMs: 1_000,
};

/** The tm_locks lease of partition management. */
const HISTORY_LOCK = 'history';
/**
 * Time to live of the lease: far longer than a pass (each of its statements gives up after
 * lockTimeoutMs), so it only matters when its holder died mid-pass: management resumes after it.
 */
export const HISTORY_LOCK_TTL_MS = 10 * 60_000;
const LOCK_NOT_AVAILABLE = '55P03';

/** The partition period for a retention: rows live between the retention and 1.25 × it. */
export function historyPeriodMs(retentionMs: number): number {
  const fitting = HISTORY_PERIODS_MS.filter((p) => p <= retentionMs / 4);
  return fitting.length > 0 ? fitting[fitting.length - 1] : HISTORY_PERIODS_MS[0];
}

export { listPartitions, type HistoryPartition } from '../store/history.ts';

export interface HistoryRetentionResult {
  /** Another pass held the partition lease, so this pass did nothing. */
  skipped: boolean;
  /** Partitions attached, with the rows moved into each from the default partition. */
  created: (Omit<HistoryPartition, 'name'> & { moved: number })[];
  /** Partitions dropped, with their row counts (estimates for vacuumed partitions; see migration 004). */
  dropped: (HistoryPartition & { rows: number })[];
  /** Expired rows deleted from the default partition. */
  purgedFromDefault: number;
  /** Idempotency/debounce keys and progress values of tasks gone (store/history.ts purgeKeysAndProgress). */
  purgedKeysAndProgress: number;
  /** Why statements gave up (a lock not granted in time, a range too close) until the next pass. */
  deferred: string[];
}

export interface HistoryRetentionOptions {
  db: Pick<pg.Pool, 'connect' | 'query'>;
  retentionMs: number;
  /** Partition period; default historyPeriodMs(retentionMs). A whole number of seconds. */
  periodMs?: number;
  aheadPeriods?: number;
  lockTimeoutMs?: number;
  /**
   * The time that decides what is expired and which periods are current (default: database time).
   * Whether a range may still receive rows is always judged by database time.
   */
  now?: () => Date;
}

interface Range {
  from: number;
  to: number;
}

export class HistoryRetention {
  readonly periodMs: number;
  private readonly aheadPeriods: number;
  private readonly lockTimeoutMs: number;

  constructor(private readonly options: HistoryRetentionOptions) {
    this.periodMs = options.periodMs ?? historyPeriodMs(options.retentionMs);
    if (!Number.isInteger(this.periodMs / 1000) || this.periodMs < 1000) {
      throw new RangeError(
        `History partition period must be a whole number of seconds, got ${this.periodMs} ms.`,
      );
    }
    this.aheadPeriods = options.aheadPeriods ?? HISTORY_RETENTION_DEFAULTS.aheadPeriods;
    this.lockTimeoutMs = options.lockTimeoutMs ?? HISTORY_RETENTION_DEFAULTS.lockTimeoutMs;
  }

  async runOnce(): Promise<HistoryRetentionResult> {
    const result: HistoryRetentionResult = {
      skipped: false,
      created: [],
      dropped: [],
      purgedFromDefault: 0,
      purgedKeysAndProgress: 0,
      deferred: [],
    };
    const holder = randomUUID();
    if (!(await takeLock(this.options.db, HISTORY_LOCK, holder, HISTORY_LOCK_TTL_MS))) {
      return { ...result, skipped: true };
    }
    try {
      // One connection for the pass (its statements commit one by one); checkout() keeps a connection
      // that breaks meanwhile from ending the process.
      const { client, release } = await checkout(this.options.db);
      try {
        await this.manage(client, result);
      } finally {
        release();
      }
    } finally {
      // A lease left behind (the database went away) frees itself when it expires.
      await releaseLock(this.options.db, HISTORY_LOCK, holder).catch(() => {});
    }
    return result;
  }

  private async manage(client: pg.PoolClient, result: HistoryRetentionResult): Promise<void> {
    const times = await readTimes(client);
    const now = (this.options.now?.() ?? times.dbNow).getTime();
    const expiredBefore = now - this.options.retentionMs;

    let partitions = await listPartitions(client);
    for (const p of partitions.filter((p) => p.to.getTime() <= expiredBefore)) {
      const rows = await deferOnLock(result, () => dropPartition(client, p.name, this.lockTimeoutMs));
      if (rows !== undefined) result.dropped.push({ ...p, rows });
    }
    if (result.dropped.length > 0) partitions = await listPartitions(client);

    result.purgedFromDefault = await purgeDefaultPartition(client, new Date(expiredBefore));
    result.purgedKeysAndProgress = await purgeKeysAndProgress(client, new Date(expiredBefore));

    // A range that starts this far ahead (database time) receives no row before the attach commits.
    const futureFrom = times.dbNow.getTime() + ATTACH_TIMING.leadMs;
    // A range that ends before this receives no more rows: every open transaction started later, and
    // finished_at is its start time (now()).
    const pastUntil =
      Math.min(times.dbNow.getTime(), times.oldestTransaction?.getTime() ?? Infinity) -
      ATTACH_TIMING.pastMarginMs;

    const covered: Range[] = partitions.map((p) => ({ from: p.from.getTime(), to: p.to.getTime() }));
    for (const slot of await this.slotsToCover(client, now)) {
      const range = { from: slot * this.periodMs, to: (slot + 1) * this.periodMs };
      if (range.to <= expiredBefore) continue;
      for (const gap of gaps(range, covered)) {
        const piece = attachable(gap, futureFrom, pastUntil);
        if (!piece) continue;
        const commitBefore = piece.from >= futureFrom ? piece.from - ATTACH_TIMING.guardMs : null;
        const moved = await deferOnLock(result, () =>
          addPartition(
            client,
            new Date(piece.from),
            new Date(piece.to),
            this.lockTimeoutMs,
            commitBefore === null ? null : new Date(commitBefore),
          ),
        );
        if (moved === undefined) continue;
        covered.push(piece);
        result.created.push({
          from: new Date(piece.from),
          to: new Date(piece.to),
          moved,
        });
      }
    }
  }

  /** The current period, the ones ahead, and every period the default partition has rows for. */
  private async slotsToCover(client: pg.PoolClient, now: number): Promise<number[]> {
    const current = Math.floor(now / this.periodMs);
    const ahead = Math.max(
      this.aheadPeriods,
      Math.ceil(HISTORY_RETENTION_DEFAULTS.aheadMinMs / this.periodMs),
    );
    const slots = new Set(Array.from({ length: ahead + 1 }, (_, i) => current + i));
    for (const slot of await defaultPartitionSlots(client, this.periodMs)) slots.add(slot);
    return [...slots].sort((a, b) => a - b);
  }
}

async function readTimes(client: pg.PoolClient): Promise<{ dbNow: Date; oldestTransaction: Date | null }> {
  const { rows } = await client.query<{ db_now: Date; oldest: Date | null }>(
    `select clock_timestamp() as db_now,
       (select min(xact_start) from pg_stat_activity
        where datname = current_database() and pid <> pg_backend_pid()) as oldest`,
  );
  return { dbNow: rows[0].db_now, oldestTransaction: rows[0].oldest };
}

/** The parts of `range` that no partition covers. */
export function gaps(range: Range, covered: Range[]): Range[] {
  const result: Range[] = [];
  let from = range.from;
  for (const c of [...covered].sort((a, b) => a.from - b.from)) {
    if (c.to <= from || c.from >= range.to) continue;
    if (c.from > from) result.push({ from, to: c.from });
    from = Math.max(from, c.to);
    if (from >= range.to) break;
  }
  if (from < range.to) result.push({ from, to: range.to });
  return result;
}

/**
 * The part of an uncovered range that may be attached now: all of it when it starts after
 * `futureFrom` or ends before `pastUntil`; its part after `futureFrom` (from a whole second) when it
 * spans the present; nothing otherwise. A row routed to the default partition while a range covering
 * it is attached fails the default's new constraint, so a range that may still receive rows waits.
 */
export function attachable(gap: Range, futureFrom: number, pastUntil: number): Range | undefined {
  if (gap.from >= futureFrom || gap.to <= pastUntil) return gap;
  const from = Math.ceil(futureFrom / 1000) * 1000;
  return from < gap.to ? { from, to: gap.to } : undefined;
}

async function deferOnLock<T>(result: HistoryRetentionResult, run: () => Promise<T>): Promise<T | undefined> {
  try {
    return await run();
  } catch (error) {
    if ((error as { code?: string }).code !== LOCK_NOT_AVAILABLE) throw error;
    result.deferred.push((error as Error).message);
    return undefined;
  }
}
