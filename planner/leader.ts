/**
 * The planner lease: one row in tm_leader, held by one node until `expires_at` (database time). The
 * holder renews it every third of its time to live; any node takes it once it has expired, or at
 * once when the holder releases it on stop (it notifies LEADER_CHANNEL so others retry immediately).
 *
 * States: follower -> leader (acquired) -> follower (lost, released, or renewal overdue by local clock).
 * The overdue case is noticed when `isLeader` is read and, at the latest, by a timer set for the end of
 * the local view, so `onChange(false)` is on time even when every loop is stuck in a statement (a
 * black-holed connection): the leadership intervals the node reports are the ones it acted on.
 * `isLeader` is written by this loop only and read by the planner and maintenance (main thread).
 */
import type pg from 'pg';
import { Loop, type Timers } from '../loop/loop.ts';
import { notifyLeaseReleased } from '../store/channels.ts';
import { releaseLease, takeOrRenewLease } from '../store/leader.ts';

export { LEADER_CHANNEL } from '../store/channels.ts';
export const DEFAULT_LEASE_TTL_MS = 5_000;

export interface LeaderLeaseOptions {
  db: pg.Pool;
  nodeId: string;
  ttlMs?: number;
  /**
   * Leadership began or ended `at` (epoch ms by `now`): when the lease was taken or lost, or, for a
   * local view that lapsed, the moment it lapsed (which may be before the change is noticed).
   */
  onChange?: (leader: boolean, at: number) => void;
  onError: (error: unknown) => void;
  timers?: Timers;
  now?: () => number;
}

export class LeaderLease {
  private leader = false;
  private validUntil = 0;
  /** The row may be ours: the last pass acquired or renewed it (even if the local view has lapsed since). */
  private mayHold = false;
  private readonly loop: Loop<{ leader: boolean }>;
  readonly ttlMs: number;
  private readonly now: () => number;
  private lapseTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: LeaderLeaseOptions) {
    this.ttlMs = options.ttlMs ?? DEFAULT_LEASE_TTL_MS;
    this.now = options.now ?? Date.now;
    this.loop = new Loop({
      name: 'leader',
      runOnce: () => this.runOnce(),
      delayMs: () => Math.max(10, Math.floor(this.ttlMs / 3)),
      onError: (error) => {
        this.options.onError(error);
        this.checkOverdue();
      },
      timers: options.timers,
    });
  }

  /** True while this node holds an unexpired lease (judged conservatively by the local clock). */
  get isLeader(): boolean {
    this.checkOverdue();
    return this.leader;
  }

  start(): void {
    this.loop.start();
  }

  wake(): void {
    this.loop.wake();
  }

  async runOnce(): Promise<{ leader: boolean }> {
    const started = this.now();
    const leader = await takeOrRenewLease(this.options.db, this.options.nodeId, this.ttlMs);
    this.mayHold = leader;
    // Counted from before the query was sent, so a slow round trip shortens our view of the lease.
    if (leader) {
      this.validUntil = started + this.ttlMs * 0.9;
      clearTimeout(this.lapseTimer);
      this.lapseTimer = setTimeout(() => this.checkOverdue(), Math.max(0, this.validUntil - this.now()) + 1);
      this.lapseTimer.unref();
    }
    this.set(leader);
    return { leader };
  }

  async stop(): Promise<void> {
    await this.loop.stop();
    clearTimeout(this.lapseTimer);
    // Released even when our own view of the lease has lapsed (renewals stalled): the row may still be
    // ours, and leaving it would make the next leader wait for it to expire.
    if (!this.mayHold) return;
    this.mayHold = false;
    this.set(false);
    await releaseLease(this.options.db, this.options.nodeId);
    await notifyLeaseReleased(this.options.db);
  }

  private checkOverdue(): void {
    if (this.leader && this.now() > this.validUntil) this.set(false, this.validUntil);
  }

  private set(leader: boolean, at = this.now()): void {
    if (leader === this.leader) return;
    this.leader = leader;
    this.options.onChange?.(leader, at);
  }
}
