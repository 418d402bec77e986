/**
 * Leader-only housekeeping, on its own loop:
 * - dead-node recovery: nodes whose heartbeat is older than the node timeout (database time) are
 *   removed and every task they held is taken back: tasks they had not fetched go back to ready,
 *   tasks they were running are charged a failed attempt (recoverDeadNodes). Recovery is by lease,
 *   never by age: a task that has run for hours on a live node is left alone.
 * - retention: history partitions past the retention are dropped and upcoming ones created
 *   (history-retention.ts); `purgedHistory` counts the rows that went.
 *
 * States: stopped -> running -> stopped; passes do nothing unless this node leads.
 */
import type pg from 'pg';
import { releaseDanglingWaits } from './dangling-waits.ts';
import { checkout } from '../runtime/checkout.ts';
import { Loop, type Timers } from '../runtime/loop.ts';
import { PLANNER_CHANNEL } from '../runtime/task-store.ts';
import { HistoryRetention } from './history-retention.ts';
import { DEFAULT_RETRY_POLICY, nextRetryDelay, retryPolicySchema } from '../runtime/retry-policy.ts';

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
  /** Called after a pass that did something (any count above 0); not after a pass with nothing to do. */
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

/** The error a task that was running on a dead node is charged with. */
export function nodeDiedError(nodeId: string): string {
  return (
    `TaskmillError [NODE_DIED]: node ${nodeId} stopped heartbeating while this task was running on it ` +
    '(the process crashed, was killed or lost the database); counted as a failed attempt.'
  );
}

interface HeldTask {
  id: string;
  node_id: string;
  state: 'assigned' | 'running';
  assignment: number;
  attempt: number;
  failing_ms: number;
  options: { retry?: unknown; deadLetter?: unknown } | null;
}

/**
 * Removes expired nodes and takes back every task held by a node that is not alive, in one
 * transaction. What the rows say decides what a task is charged:
 * - `assigned` (the node never fetched it): back to ready, uncharged.
 * - `running` (fetched: executing, or queued in the node's mailboxes; the rows cannot tell which):
 *   one failed attempt (NODE_DIED), decided by the task's retry policy like any failure: ready again at
 *   once if another attempt is allowed, else the dead-letter table (or failed history). A task that
 *   kills its node therefore ends in the dead letters instead of looping. Definitions unknown to the
 *   database get the default retry policy and dead letters.
 */
export async function recoverDeadNodes(
  db: Pick<pg.Pool, 'connect'>,
  nodeTimeoutMs: number,
): Promise<{ deadNodes: number; recovered: number }> {
  // Through checkout(): a session terminated mid-transaction fails the pass, not the process (a
  // checked-out pg client without an 'error' listener ends the process when its connection breaks).
  const held = await checkout(db);
  const client = held.client;
  let broken = false;
  try {
    await client.query('begin');
    const dead = await client.query<{ id: string }>(
      `delete from tm_nodes where heartbeat_at < now() - $1 * interval '1 millisecond' returning id`,
      [nodeTimeoutMs],
    );
    const { rows } = await client.query<HeldTask>(
      `select t.id, t.node_id, t.state, t.assignment, t.attempt,
         extract(epoch from now() - t.created_at) * 1000 as failing_ms, d.options
       from tm_tasks t left join tm_task_defs d on d.name = t.name
       where t.node_id is not null
         and (t.node_id = any($1) or not exists (select 1 from tm_nodes n where n.id = t.node_id))
       order by t.id
       for update of t`,
      [dead.rows.map((r) => r.id)],
    );
    const handedBack = rows.filter((t) => t.state !== 'running').map((t) => t.id);
    if (handedBack.length > 0) {
      await client.query(`update tm_tasks set state = 'ready', node_id = null where id = any($1)`, [
        handedBack,
      ]);
    }
    const byNode = new Map<string, HeldTask[]>();
    for (const task of rows) {
      if (task.state !== 'running') continue;
      byNode.set(task.node_id, [...(byNode.get(task.node_id) ?? []), task]);
    }
    for (const [nodeId, tasks] of byNode) {
      const decisions = tasks.map((t) => {
        const parsed = retryPolicySchema.safeParse(t.options?.retry);
        const policy = parsed.success ? parsed.data : DEFAULT_RETRY_POLICY;
        const retry = nextRetryDelay(policy, t.attempt + 1, Number(t.failing_ms));
        // Another attempt runs at once: the node's death, not the task, is the likely cause.
        return { retryMs: retry === undefined ? null : 0, deadLetter: t.options?.deadLetter !== false };
      });
      await client.query(`select 1 from tm_fail($1, $2, $3, $4, $5, $6, $7)`, [
        nodeId,
        tasks.map((t) => t.id),
        tasks.map((t) => t.assignment),
        tasks.map(() => nodeDiedError(nodeId)),
        decisions.map((d) => d.retryMs),
        decisions.map((d) => d.deadLetter),
        tasks.map(() => false),
      ]);
    }
    if (rows.length > 0) await client.query(`select pg_notify('${PLANNER_CHANNEL}', '')`);
    await client.query('commit');
    return { deadNodes: dead.rowCount ?? 0, recovered: rows.length };
  } catch (error) {
    await client.query('rollback').catch(() => (broken = true));
    throw error;
  } finally {
    held.release(broken);
  }
}
