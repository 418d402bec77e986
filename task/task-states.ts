/**
 * The states a user sees, one vocabulary for every surface: the library (getTask, listTasks,
 * clusterStats), the CLI, the HTTP API and its OpenAPI document, the dashboard and the metrics.
 *
 * The hot table stores only `ready`, `waiting`, `sleeping`, `assigned` and `running`; history stores `completed`,
 * `failed` and `cancelled`; the dead-letter table holds `dead`. Two states are derived from a stored
 * `ready` row whose not-before time is still in the future (database time):
 * - `retrying`: it has failed attempts and waits for its next one (at `notBefore`);
 * - `delayed`: it has not run yet and waits for its first attempt (a delay or runAt).
 * A `ready` task is due: the planner hands it to a node on its next pass.
 */
import { DEFAULT_RETRY_POLICY, nextRetryDelay, type RetryPolicy } from './retry-policy.ts';

/** Every state a task can be in, in the order of its life. */
export const TASK_STATES = [
  'waiting',
  'sleeping',
  'delayed',
  'ready',
  'retrying',
  'assigned',
  'running',
  'completed',
  'failed',
  'cancelled',
  'dead',
] as const;

export type TaskStatus = (typeof TASK_STATES)[number];

/** States of tasks still in the hot table. */
export const PENDING_STATES = [
  'waiting',
  'sleeping',
  'delayed',
  'ready',
  'retrying',
  'assigned',
  'running',
] as const satisfies readonly TaskStatus[];
/** States of tasks that ended (history). */
export const ENDED_STATES = ['completed', 'failed', 'cancelled'] as const satisfies readonly TaskStatus[];
/** What queue depths count (status, /api/stats, the dashboard, taskmill_queue_depth): pending and dead. */
export const DEPTH_STATES = [...PENDING_STATES, 'dead'] as const satisfies readonly TaskStatus[];
export type DepthState = (typeof DEPTH_STATES)[number];

/** One line per state, for help texts and the docs. */
export const STATE_DESCRIPTIONS: Record<TaskStatus, string> = {
  waiting: 'waits for the tasks it depends on or joins',
  sleeping:
    'ended an attempt on ctx.sleep() or ctx.waitForEvent(): continues when the wait ends (at notBefore) or the event arrives',
  delayed: 'not due yet (a delay or runAt): waits for its first attempt',
  ready: 'due: the planner hands it to a node on its next pass',
  retrying: 'failed, and waits for its next attempt (at notBefore) under its retry policy',
  assigned: 'handed to a node, not started yet',
  running: 'running on a node',
  completed: 'ended successfully',
  failed: 'ended by failures, without a dead letter (history)',
  cancelled: 'ended by a cancellation',
  dead: 'failed every attempt and sits in the dead-letter table (can be requeued)',
};

export function isTaskStatus(value: unknown): value is TaskStatus {
  return (TASK_STATES as readonly unknown[]).includes(value);
}

/**
 * SQL for the visible state of a tm_tasks row (`prefix` is the table alias with its dot, if any;
 * `attempts` the name of its attempt column: `attempts` in tm_any_task).
 * Compared with now(), so every reader of one database agrees.
 */
export function visibleStateSql(prefix = '', attempts = 'attempt'): string {
  const p = prefix;
  return `(case when ${p}state = 'ready' and ${p}not_before > now()
      then case when ${p}${attempts} > 0 then 'retrying' else 'delayed' end else ${p}state end)`;
}

/** The visible state of a stored one, the same rule as visibleStateSql. */
export function visibleState(
  stored: string,
  attempts: number,
  notBefore: Date | null,
  now: Date,
): TaskStatus {
  if (stored === 'ready' && notBefore && notBefore > now) return attempts > 0 ? 'retrying' : 'delayed';
  return stored as TaskStatus;
}

/** What a pending task's retry policy still allows, as `taskmill task show` and getTask report it. */
export interface RetryOutlook {
  /** The policy of the task's definition as its nodes registered it (the default when none did). */
  policy: RetryPolicy;
  /** Whether `policy` came from a registered definition (false: the default policy was assumed). */
  registered: boolean;
  /** Failed attempts so far. */
  attemptsSoFar: number;
  /** Attempts still to come at most, the next one included; null when the policy sets no bound. */
  attemptsLeft: number | null;
  /** When the next attempt may start: notBefore of a waiting row, null while it runs or waits on others. */
  nextAttemptAt: Date | null;
  /** The latest time the last allowed attempt starts if every attempt fails at once; null when unbounded. */
  lastAttemptBy: Date | null;
}

/** Further attempts after the first counted here are simulated; a policy allowing more is "unbounded". */
const OUTLOOK_HORIZON = 100_000;

/**
 * Attempts the policy still allows a pending task, simulating that each attempt fails the moment it
 * starts (the most attempts the policy can give; a slow attempt uses up the time limits sooner).
 */
export function retryOutlook(
  policy: RetryPolicy | undefined,
  task: { state: TaskStatus; attempts: number; createdAt: Date; notBefore: Date | null },
  now: Date,
): RetryOutlook {
  const effective = policy ?? DEFAULT_RETRY_POLICY;
  const waitingToRun = task.state === 'delayed' || task.state === 'ready' || task.state === 'retrying';
  const nextAttemptAt = waitingToRun ? (task.notBefore ?? now) : null;
  let at = Math.max(now.getTime(), nextAttemptAt?.getTime() ?? now.getTime());
  let left = 1;
  for (let failures = task.attempts + 1; ; failures++) {
    const delay = nextRetryDelay(effective, failures, at - task.createdAt.getTime());
    if (delay === undefined) break;
    if (left >= OUTLOOK_HORIZON) {
      return {
        policy: effective,
        registered: policy !== undefined,
        attemptsSoFar: task.attempts,
        attemptsLeft: null,
        nextAttemptAt,
        lastAttemptBy: null,
      };
    }
    left++;
    at += delay;
  }
  return {
    policy: effective,
    registered: policy !== undefined,
    attemptsSoFar: task.attempts,
    attemptsLeft: left,
    nextAttemptAt,
    lastAttemptBy: new Date(at),
  };
}

/** The policy in words: "BACKOFF: first retry after 10 s, then 5 s x 2^(n-1), ...". */
export function describeRetryPolicy(policy: RetryPolicy): string {
  const s = (ms: number) => (ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`);
  switch (policy.mode) {
    case 'OFF':
      return 'OFF: never retried';
    case 'FIXED':
      return `FIXED: retried every ${s(policy.delayMs)}, ${policy.maxRetries === -1 ? 'without a retry limit' : `at most ${policy.maxRetries} times`}, while within ${s(policy.maxIntervalMs)} of its creation`;
    case 'BACKOFF':
      return `BACKOFF: first retry after ${s(policy.initialDelayMs)}, retry n after ${s(policy.delayPeriodMs)} x 2^(n-1), at most ${policy.maxRetries} times, while within ${s(policy.maxDelayMs)} of its creation`;
  }
}
