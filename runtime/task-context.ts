/** What a handler receives besides its message. Lives in the worker thread. */
import type { ScheduleContext } from './schedule-context.ts';
import type { TaskDefinition } from './task-definition.ts';

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
}

export type TaskHandler<M = unknown, R = unknown> = (message: M, ctx: TaskContext) => R | Promise<R>;

/** Optional named export `onFailure` of a handler module: return false to stop retrying. */
export type FailureHook<M = unknown> = (error: unknown, message: M, ctx: TaskContext) => boolean | void;
