/**
 * Watches, from a node that runs no planner, whether any node of the cluster leads the planner. A
 * cluster whose nodes all run without one (`planner: false`, `taskmill node --no-planner`) leaves its
 * tasks ready forever while every node looks healthy; this says so, once per absence: a warning when
 * no unexpired lease has existed for longer than the lease time to live, and an info line when a
 * leader is back.
 *
 * States: watching -> missing (no lease seen) -> warned (missing for longer than ttlMs) -> watching
 * (a lease seen again). Written and read by the main thread only; times are database times.
 */
import { leaseExpiry } from '../store/leader.ts';
import type { Queryable } from '../store/queryable.ts';
import { LoopingPart, type Timers } from '../loop/loop.ts';

export interface PlannerWatchOptions {
  db: Queryable;
  /** The lease time to live: how long the cluster may go without a leader before it is reported. */
  ttlMs: number;
  /** The node's logger (pino), or anything with these two methods. */
  log: { info(message: string): void; warn(fields: object, message: string): void };
  onError: (error: unknown) => void;
  timers?: Timers;
}

export interface PlannerWatchResult {
  /** Some node holds an unexpired planner lease. */
  leader: boolean;
  /** Since when (database time) no node has led the planner, as far as this watch knows; null with a leader. */
  missingSince: Date | null;
  /** This pass logged the warning. */
  warned: boolean;
}

export class PlannerWatch extends LoopingPart<PlannerWatchResult> {
  private startedAt: Date | undefined;
  private missingSince: Date | null = null;
  private warned = false;

  constructor(private readonly options: PlannerWatchOptions) {
    super({
      name: 'planner-watch',
      delayMs: () => options.ttlMs,
      onError: options.onError,
      timers: options.timers,
    });
  }

  /** Whether the warning is standing: no planner leader for longer than the lease. */
  get plannerMissing(): boolean {
    return this.warned;
  }

  async runOnce(): Promise<PlannerWatchResult> {
    const { now, expiresAt } = await leaseExpiry(this.options.db);
    this.startedAt ??= now;
    if (expiresAt && expiresAt > now) {
      if (this.warned) this.options.log.info('a node leads the planner again; ready tasks are handed out');
      this.missingSince = null;
      this.warned = false;
      return { leader: true, missingSince: null, warned: false };
    }
    // Counted from this watch's start at the earliest, so a cluster starting up is given one lease time.
    this.missingSince ??= expiresAt && expiresAt > this.startedAt ? expiresAt : this.startedAt;
    const missingMs = now.getTime() - this.missingSince.getTime();
    let warned = false;
    if (!this.warned && missingMs > this.options.ttlMs) {
      this.options.log.warn(
        { missingSince: this.missingSince, missingMs },
        'no node of the cluster runs a planner: ready tasks are not handed out. Start a node with its ' +
          'planner enabled (without --no-planner / planner: false)',
      );
      this.warned = warned = true;
    }
    return { leader: false, missingSince: this.missingSince, warned };
  }
}
