/** What a handler receives besides its message. Lives in the worker thread. */
import type pg from 'pg';
import type { ScheduleContext } from '../task/schedule-context.ts';
import type { TaskDefinition } from '../task/task-definition.ts';

export interface TaskContext {
  taskId: string;
  name: string;
  /** 1 on the first attempt. */
  attempt: number;
  workflowId: string;
  affinityGroup: string | null;
  affinity: string | null;
  parentId: string | null;
  /** Aborted on timeout, cancellation or node shutdown; a handler should stop soon after. */
  signal: AbortSignal;
  /**
   * Schedules a child task, committed atomically with this task's completion (a rerun after a crash
   * never leaves duplicates). Inherits workflow and affinity unless the context names others.
   */
  schedule<M>(def: TaskDefinition<M>, ctx?: ScheduleContext<M>): string;
  /**
   * Schedules a join task that runs once the listed tasks (children scheduled by this handler) and
   * everything they spawn have ended, successfully or not. Committed with this task's completion.
   */
  scheduleJoin<M>(def: TaskDefinition<M>, ctx: ScheduleContext<M> | undefined, taskIds: string[]): string;
  /**
   * Sends a message to the join tasks of `def` waiting on this task (directly, or through the task
   * that spawned it). Delivered with this task's completion; a failed attempt sends nothing.
   */
  sendToJoin<M>(def: TaskDefinition<M>, message: unknown): void;
  /**
   * Reports how far the task has come: a number or a JSON value (at most 8 KiB as JSON). Cheap to
   * call often: the last value wins, and it is written at most every few hundred milliseconds, and
   * when the attempt ends. Readers see it in getTask(), the HTTP API, the CLI, the dashboard and
   * waitForTask()'s onProgress.
   */
  progress(value: unknown): void;
  /** For a join task: messages sent to it by its branch, in the order they were committed. */
  joinMessages: unknown[];
  /** For a join task: results of the tasks it listed that returned one. */
  joinResults: { taskId: string; result: unknown }[];
  /**
   * Exactly-once tasks only: a database client inside the transaction that also commits this task's
   * completion, children and join messages. Undefined for at-least-once tasks.
   */
  db: pg.ClientBase | undefined;
}

export type TaskHandler<M = unknown, R = unknown> = (message: M, ctx: TaskContext) => R | Promise<R>;

/** Optional named export `onFailure` of a handler module: return false to stop retrying. */
export type FailureHook<M = unknown> = (error: unknown, message: M, ctx: TaskContext) => boolean | void;
