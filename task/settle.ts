/**
 * What becomes of a task after one of its attempts: one pure decision, `settle(end, definition, task,
 * now)`, for every way an attempt ends (its handler returned, it failed, timed out, was cancelled or
 * aborted by a shutdown, it was committed in its worker thread, or its node died). The node and
 * dead-node recovery call it; the completer and tm_fail then write what it decided. The database
 * still has the last word on two things it alone knows: the fence (a task reassigned meanwhile is
 * fenced out, whatever was decided) and a cancellation requested while the attempt ran (tm_complete
 * and tm_fail end such a task as cancelled).
 */
import type { AbortReason, TaskOutcome } from './outcome.ts';
import { nextRetryDelay, type RetryPolicy } from './retry-policy.ts';

export type { AbortReason } from './outcome.ts';

/**
 * How an attempt ended, as the node (or dead-node recovery) saw it: its outcome (task/outcome.ts) and
 * why it was aborted, if it was. A failure's error code TASK_CANCELLED (thrown by the handler) also
 * stops the retries.
 */
export type AttemptEnd = TaskOutcome & { reason?: AbortReason };

/** What settle needs of the task's definition; undefined for a definition this node does not know. */
export interface SettleDefinition {
  retry: RetryPolicy;
  /** False: a task that failed every attempt ends in history as failed, not in the dead-letter table. */
  deadLetter: boolean;
}

/** What settle needs of the task: attempts made before this one, and when it was created. */
export interface SettleTask {
  attempt: number;
  createdAt: Date;
}

/** If the attempt is charged as failed: its next attempt (null: none) and where it ends otherwise. */
export interface FailedAttempt {
  /** Milliseconds until the next attempt; null: it ends (dead-letter table or failed history). */
  retryDelayMs: number | null;
  deadLetter: boolean;
  /** Ended by a cancellation: recorded as cancelled, never retried. */
  cancelled: boolean;
}

export type Settlement =
  /** Commit the success; `ifRejected`: what the attempt becomes if the database refuses the commit. */
  | { action: 'complete'; ifRejected: FailedAttempt }
  /** Nothing left to write: committed in the worker thread's own transaction, or fenced out there. */
  | { action: 'committed' }
  /**
   * Back to the planner, uncharged: the node stopped while it ran, or (lost) the planner had already
   * taken it back from a node it declared dead. Nothing is written for it either way.
   */
  | { action: 'hand-back' }
  /** Charge the failed attempt. */
  | ({ action: 'fail' } & FailedAttempt);

export function settle(
  end: AttemptEnd,
  definition: SettleDefinition | undefined,
  task: SettleTask,
  now: number,
): Settlement {
  switch (end.kind) {
    case 'done':
      return { action: 'complete', ifRejected: failed(definition, task, now, false, false) };
    case 'committed':
      return { action: 'committed' };
    case 'failed': {
      if (end.reason === 'shutdown' || end.reason === 'lost') return { action: 'hand-back' };
      const cancelled = end.reason === 'cancel';
      const stop =
        cancelled ||
        end.stopRetry ||
        (end.error.name === 'TaskmillError' && end.error.code === 'TASK_CANCELLED');
      const attempt = failed(definition, task, now, stop, cancelled);
      // The node's death, not the task, is the likely cause: another attempt runs at once.
      if (end.reason === 'node-died' && attempt.retryDelayMs !== null) attempt.retryDelayMs = 0;
      return { action: 'fail', ...attempt };
    }
  }
}

function failed(
  definition: SettleDefinition | undefined,
  task: SettleTask,
  now: number,
  stop: boolean,
  cancelled: boolean,
): FailedAttempt {
  const delay =
    stop || !definition
      ? undefined
      : nextRetryDelay(definition.retry, task.attempt + 1, now - task.createdAt.getTime());
  return { retryDelayMs: delay ?? null, deadLetter: definition?.deadLetter ?? true, cancelled };
}
