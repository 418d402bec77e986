/**
 * A node's share of the planning: with the planner option, the leader lease and, while this node holds
 * it, the planning loop, cron and maintenance (dead-node recovery, history retention); without it, the
 * watch that warns once when no node of the cluster leads the planner.
 *
 * States: stopped -> started -> stopped, those of its parts: `start()` takes part in the lease election
 * at once (a first lease pass, then its loop), `stop()` stops every part, releasing the lease last.
 * Main thread only.
 */
import type pg from 'pg';
import { DEFAULT_LEASE_TTL_MS, LeaderLease } from '../planner/leader.ts';
import { PlannerWatch } from '../planner/planner-watch.ts';
import { Maintenance, type MaintenanceResult } from '../planner/maintenance.ts';
import { Cron } from '../planner/cron.ts';
import { Planner, type PassResult } from '../planner/planner.ts';
import type { Listener } from '../store/listener.ts';
import { LEADER_CHANNEL, PLANNER_CHANNEL } from '../store/channels.ts';
import type { FetchedTask } from '../store/tasks.ts';
import type { Logger } from '../log/logger.ts';
import type { NodeConfig } from './node-config.ts';

/**
 * Heartbeats to wait after the database came back before recovering dead nodes: a heartbeat backs off
 * to at most twice its interval while the database is away, so two beats and one of margin.
 */
const DATABASE_BACK_GRACE_BEATS = 3;

export interface PlanningOptions {
  db: pg.Pool;
  nodeId: string;
  config: NodeConfig;
  log: Logger;
  /** Tasks the planner started on this node (its share of a pass). */
  startedLocally: (tasks: FetchedTask[]) => void;
  onPass: (pass: PassResult) => void;
  onLeader: (leader: boolean) => void;
  /** After a maintenance pass that did something. */
  onMaintenance: (result: MaintenanceResult) => void;
  /** When the database last came back after an outage this node saw (epoch ms). */
  databaseBackAt: () => number;
  onError: (source: string) => (error: unknown) => void;
}

export class Planning {
  private readonly lease: LeaderLease | undefined;
  private readonly planner: Planner | undefined;
  private readonly watch: PlannerWatch | undefined;
  private readonly maintenance: Maintenance | undefined;
  private readonly cron: Cron | undefined;

  constructor(private readonly options: PlanningOptions) {
    const { db, config, log, onError } = options;
    const p = config.planner;
    if (!p) {
      this.watch = new PlannerWatch({
        db,
        ttlMs: DEFAULT_LEASE_TTL_MS,
        log,
        onError: onError('planner-watch'),
      });
      return;
    }
    this.lease = new LeaderLease({
      db,
      nodeId: options.nodeId,
      ttlMs: p.leaseTtlMs,
      onChange: (leader, at) => {
        log.info({ leader, at }, leader ? 'became planner leader' : 'lost planner leadership');
        if (leader) this.planner?.wake();
        if (leader) this.cron?.wake();
        options.onLeader(leader);
      },
      onError: onError('leader'),
    });
    const isLeader = () => this.lease!.isLeader;
    this.planner = new Planner({
      db,
      isLeader,
      batchSize: p.batchSize,
      planFactor: p.planFactor,
      pollingDelay: p.pollingDelay as Record<number, number>,
      nodeTimeoutMs: config.nodeTimeoutMs,
      nodeCpuLimit: p.nodeCpuLimit,
      wakeDebounceMs: p.wakeDebounceMs,
      fairness: p.fairness,
      localNodeId: options.nodeId,
      leaseHolderId: options.nodeId,
      onPass: (pass) => {
        const { leader, claimed, assigned, durationMs } = pass;
        log.debug({ leader, claimed, assigned, durationMs }, 'planner pass');
        if (pass.startedLocally.length > 0) options.startedLocally(pass.startedLocally);
        options.onPass(pass);
      },
      onError: onError('planner'),
    });
    this.cron = new Cron({
      db,
      isLeader,
      onResult: (result) => log.debug(result, 'cron pass'),
      onError: onError('cron'),
    });
    this.maintenance = new Maintenance({
      db,
      isLeader: () =>
        isLeader() &&
        Date.now() - options.databaseBackAt() >= DATABASE_BACK_GRACE_BEATS * config.heartbeatIntervalMs,
      nodeTimeoutMs: config.nodeTimeoutMs,
      intervalMs: p.maintenanceIntervalMs,
      historyRetentionMs: config.historyRetentionMs,
      onResult: (result) => {
        if (result.recovered > 0 || result.deadNodes > 0) log.warn(result, 'recovered tasks of dead nodes');
        options.onMaintenance(result);
      },
      onError: onError('maintenance'),
    });
  }

  /** True when this node runs a planner (it may not lead it). */
  get plans(): boolean {
    return this.planner !== undefined;
  }

  get isLeader(): boolean {
    return this.lease?.isLeader ?? false;
  }

  /** The planner's wake-ups: new tasks (PLANNER_CHANNEL) and a lease released (LEADER_CHANNEL). */
  async subscribe(listener: Listener): Promise<void> {
    if (!this.planner) return;
    await listener.subscribe(PLANNER_CHANNEL, () => this.planner!.wake());
    await listener.subscribe(LEADER_CHANNEL, () => this.lease!.wake());
  }

  async start(): Promise<void> {
    this.watch?.start();
    if (!this.lease) return;
    await this.lease.runOnce().catch(this.options.onError('leader'));
    this.lease.start();
    this.planner!.start();
    this.maintenance!.start();
    this.cron!.start();
  }

  /** Runs one planning pass now (when leader). */
  planOnce(): Promise<PassResult> {
    if (!this.planner) throw new Error('this node runs without a planner');
    return this.planner.runOnce();
  }

  /** Wakes the loops that may be backing off (after the database came back). */
  wake(): void {
    this.lease?.wake();
    this.planner?.wake();
    this.cron?.wake();
  }

  async stop(): Promise<void> {
    await this.planner?.stop();
    await this.maintenance?.stop();
    await this.cron?.stop();
    await this.watch?.stop();
    await this.lease?.stop().catch(this.options.onError('leader'));
  }
}
