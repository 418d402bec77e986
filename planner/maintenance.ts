/**
 * Leader-only housekeeping, on its own loop:
 * - dead-node recovery: nodes whose heartbeat is older than the node timeout (database time) are
 *   removed and every task they held goes back to ready. Recovery is by lease, never by age: a task
 *   that has run for hours on a live node is left alone.
 * - retention: history partitions past the retention are dropped and upcoming ones created
 *   (history-retention.ts); `purgedHistory` counts the rows that went.
 *
 * States: stopped -> running -> stopped; passes do nothing unless this node leads.
 */
import type pg from 'pg';
import { releaseDanglingWaits } from './dangling-waits.ts';
import { Loop, type Timers } from '../runtime/loop.ts';
import { PLANNER_CHANNEL } from '../runtime/task-store.ts';
import { HistoryRetention } from './history-retention.ts';

export const MAINTENANCE_DEFAULTS = {
  intervalMs: 1_000,
  historyRetentionMs: 7 * 86_400_000,
};

export interface MaintenanceResult {
  deadNodes: number;
  recovered: number;
  purgedHistory: number;
  /** Waits on vanished tasks settled by the safety net (dangling-waits.ts); 0 in normal operation. */
  danglingWaits: number;
}

export interface MaintenanceOptions {
  db: pg.Pool;
  isLeader: () => boolean;
  nodeTimeoutMs: number;
  intervalMs?: number;
  historyRetentionMs?: number;
  /** History partition period; default derived from the retention (history-retention.ts). */
  historyPartitionMs?: number;
  onResult?: (result: MaintenanceResult) => void;
  onError: (error: unknown) => void;
  timers?: Timers;
}

export class Maintenance {
  private readonly loop: Loop<MaintenanceResult>;
  private readonly history: HistoryRetention;

  constructor(private readonly options: MaintenanceOptions) {
    this.history = new HistoryRetention({
      db: options.db,
      retentionMs: options.historyRetentionMs ?? MAINTENANCE_DEFAULTS.historyRetentionMs,
      periodMs: options.historyPartitionMs,
    });
    this.loop = new Loop({
      name: 'maintenance',
      runOnce: () => this.runOnce(),
      delayMs: () => options.intervalMs ?? MAINTENANCE_DEFAULTS.intervalMs,
      onError: options.onError,
      timers: options.timers,
    });
  }

  start(): void {
    this.loop.start();
  }

  stop(): Promise<void> {
    return this.loop.stop();
  }

  async runOnce(): Promise<MaintenanceResult> {
    if (!this.options.isLeader()) return { deadNodes: 0, recovered: 0, purgedHistory: 0, danglingWaits: 0 };
    const result = {
      ...(await recoverDeadNodes(this.options.db, this.options.nodeTimeoutMs)),
      purgedHistory: 0,
      danglingWaits: await releaseDanglingWaits(this.options.db),
    };
    const history = await this.history.runOnce();
    result.purgedHistory = history.dropped.reduce((sum, p) => sum + p.rows, history.purgedFromDefault);
    if (result.deadNodes + result.recovered + result.purgedHistory + result.danglingWaits > 0) {
      this.options.onResult?.(result);
    }
    return result;
  }
}

/** Removes expired nodes and hands every task held by a node that is not alive back to the planner. */
export async function recoverDeadNodes(
  db: Pick<pg.Pool, 'query'>,
  nodeTimeoutMs: number,
): Promise<{ deadNodes: number; recovered: number }> {
  const { rows } = await db.query<{ dead: number; recovered: number }>(
    `with dead as (
       delete from tm_nodes where heartbeat_at < now() - $1 * interval '1 millisecond' returning id),
     recovered as (
       update tm_tasks t set state = 'ready', node_id = null
       where t.node_id is not null
         and (t.node_id in (select id from dead) or not exists (select 1 from tm_nodes n where n.id = t.node_id))
       returning t.id)
     select (select count(*) from dead)::int as dead, (select count(*) from recovered)::int as recovered,
       case when (select count(*) from recovered) > 0 then pg_notify('${PLANNER_CHANNEL}', '') end`,
    [nodeTimeoutMs],
  );
  return { deadNodes: rows[0].dead, recovered: rows[0].recovered };
}
