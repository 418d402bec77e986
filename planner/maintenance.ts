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
import { releaseDanglingWaits } from '../store/waits.ts';
import { LoopingPart, type Timers } from '../loop/loop.ts';
import { inTransaction } from '../store/checkout.ts';
import { wakePlanner } from '../store/channels.ts';
import { deleteExpiredNodes } from '../store/nodes.ts';
import { handBackTasks, lockTasksOfDeadNodes, type HeldTask } from '../store/recovery.ts';
import { failTasks } from '../store/tasks.ts';
import { HistoryRetention } from './history-retention.ts';
import { DEFAULT_RETRY_POLICY, retryPolicySchema } from '../task/retry-policy.ts';
import { settle } from '../task/settle.ts';
import { errorText, type SerializedError } from '../task/outcome.ts';

export const MAINTENANCE_DEFAULTS = {
  intervalMs: 1_000,
  historyRetentionMs: 7 * 86_400_000,
};

export interface MaintenanceResult {
  deadNodes: number;
  recovered: number;
  purgedHistory: number;
  /** Waits on vanished tasks settled by the safety net (store/waits.ts); 0 in normal operation. */
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

export class Maintenance extends LoopingPart<MaintenanceResult> {
  private readonly history: HistoryRetention;

  constructor(private readonly options: MaintenanceOptions) {
    super({
      name: 'maintenance',
      delayMs: () => options.intervalMs ?? MAINTENANCE_DEFAULTS.intervalMs,
      onError: options.onError,
      timers: options.timers,
    });
    this.history = new HistoryRetention({
      db: options.db,
      retentionMs: options.historyRetentionMs ?? MAINTENANCE_DEFAULTS.historyRetentionMs,
      periodMs: options.historyPartitionMs,
    });
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
export function nodeDied(nodeId: string): SerializedError {
  return {
    name: 'TaskmillError',
    code: 'NODE_DIED',
    message:
      `node ${nodeId} stopped heartbeating while this task was running on it ` +
      '(the process crashed, was killed or lost the database); counted as a failed attempt.',
  };
}

/** The error text a task recovered from a dead node is stored with. */
export function nodeDiedError(nodeId: string): string {
  return errorText(nodeDied(nodeId));
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
  // Checked out through inTransaction: a session terminated mid-pass must fail the pass, not the process.
  return inTransaction(db, async (client) => {
    const dead = await deleteExpiredNodes(client, nodeTimeoutMs);
    const rows = await lockTasksOfDeadNodes(client, dead);
    const handedBack = rows.filter((t) => t.state !== 'running').map((t) => t.id);
    if (handedBack.length > 0) await handBackTasks(client, handedBack);
    const byNode = new Map<string, HeldTask[]>();
    for (const task of rows) {
      if (task.state !== 'running') continue;
      byNode.set(task.nodeId, [...(byNode.get(task.nodeId) ?? []), task]);
    }
    for (const [nodeId, tasks] of byNode) {
      const now = Date.now();
      await failTasks(
        client,
        nodeId,
        tasks.map((t) => {
          const parsed = retryPolicySchema.safeParse(t.options?.retry);
          const definition = {
            retry: parsed.success ? parsed.data : DEFAULT_RETRY_POLICY,
            deadLetter: t.options?.deadLetter !== false,
          };
          const failed = { kind: 'failed', error: nodeDied(nodeId), stopRetry: false } as const;
          const task = { attempt: t.attempt, createdAt: new Date(now - t.failingMs) };
          const settlement = settle({ ...failed, reason: 'node-died' }, definition, task, now);
          if (settlement.action !== 'fail')
            throw new Error(`a dead node's task settled as ${settlement.action}`);
          const { retryDelayMs, deadLetter } = settlement;
          return {
            ...failed,
            task: { id: t.id, assignment: t.assignment },
            settlement: { retryDelayMs, deadLetter, cancelled: false },
          };
        }),
      );
    }
    if (rows.length > 0) await wakePlanner(client);
    return { deadNodes: dead.length, recovered: rows.length };
  });
}
