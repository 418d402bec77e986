/** What a handler receives besides its message. Lives in the worker thread. */
import type pg from 'pg';
import type { ScheduleContext } from '../task/schedule-context.ts';
import type { TaskDefinition } from '../task/task-definition.ts';
import type { EventWaitOptions, EventWaitResult } from './durable-run.ts';

export type { EventWaitOptions, EventWaitResult } from './durable-run.ts';

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
  /**
   * Runs `fn` once for this task: its value (msgpack) is recorded in the database when it returns, and
   * every later attempt (after a crash, a failure or a wait) gets the recorded value without running it
   * again. Names are unique within a run. At-least-once tasks only (docs/durable-waits.md).
   */
  step<T>(name: string, fn: () => T | Promise<T>): Promise<T>;
  /**
   * Sleeps `ms` without holding a thread or a connection: this attempt ends, and the task continues in
   * a later one (not a retry) once the time has passed; finished ctx.step() calls are not redone.
   */
  sleep(ms: number): Promise<void>;
  /**
   * Waits for sendEvent(name, key, payload) like ctx.sleep(): resolves with `{ timedOut: false,
   * payload }`, or `{ timedOut: true }` once `timeoutMs` has passed without the event.
   */
  waitForEvent<T = unknown>(name: string, options: EventWaitOptions): Promise<EventWaitResult<T>>;
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
