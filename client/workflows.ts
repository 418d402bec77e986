/**
 * Workflows: every task carries a workflow id (a root task opens a new one; children inherit it). A
 * workflow's state is computed from the rows wherever they are: pending in the hot table, ended in
 * history or the dead-letter table.
 */
import type pg from 'pg';
import { TaskmillError } from '../task/errors.ts';
import { isUuid } from '../task/schedule-context.ts';
import { cancelTasks, countWorkflowTasks, uncancelledWorkflowTasks, type Queryable } from '../store/tasks.ts';

export interface WorkflowStatus {
  id: string;
  ready: number;
  waiting: number;
  /** Waiting on ctx.sleep() or ctx.waitForEvent() (docs/durable-waits.md). */
  sleeping: number;
  assigned: number;
  running: number;
  completed: number;
  failed: number;
  cancelled: number;
  dead: number;
  /** Tasks not ended yet. */
  pending: number;
  total: number;
  /** No task left pending (and at least one task known). */
  done: boolean;
}

export async function workflowStatus(db: Queryable, id: string): Promise<WorkflowStatus | undefined> {
  if (!isUuid(id))
    throw new TaskmillError('INVALID_ARGUMENT', `Workflow id must be a UUID, got ${JSON.stringify(id)}.`);
  const rows = await countWorkflowTasks(db, id);
  if (rows.length === 0) return undefined;
  const status: WorkflowStatus = {
    id,
    ready: 0,
    waiting: 0,
    sleeping: 0,
    assigned: 0,
    running: 0,
    completed: 0,
    failed: 0,
    cancelled: 0,
    dead: 0,
    pending: 0,
    total: 0,
    done: false,
  };
  for (const { state, n } of rows) status[state as 'ready'] += n;
  status.pending = status.ready + status.waiting + status.sleeping + status.assigned + status.running;
  status.total = status.pending + status.completed + status.failed + status.cancelled + status.dead;
  status.done = status.pending === 0;
  return status;
}

/** Tells of ended tasks: `watch(onEnd)` calls onEnd after tasks ended until the returned function is called. */
export interface TaskEnds {
  watch(onEnd: () => void): Promise<() => void>;
}

export interface WaitForWorkflowOptions {
  /** Reject with a TIMEOUT error after this long (default 60 s). */
  timeoutMs?: number;
  /** Without `ended`: read the workflow's state this often (default 100 ms). */
  pollMs?: number;
  signal?: AbortSignal;
  /** Read the workflow's state again when tasks end (the task-ended notification), instead of polling. */
  ended?: TaskEnds;
  /** Called with each status read while waiting, the final one included (progress bars). */
  onStatus?: (status: WorkflowStatus) => void;
}

/**
 * Resolves with the final status once no task of the workflow is pending; rejects after timeoutMs. With
 * `ended`, it listens before its first read, so a task that ends between a read and the wait is heard.
 */
export async function waitForWorkflow(
  db: Queryable,
  id: string,
  options: WaitForWorkflowOptions = {},
): Promise<WorkflowStatus> {
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  let woken = false;
  let wake: (() => void) | undefined;
  const stopWatching = await options.ended?.watch(() => {
    woken = true;
    wake?.();
  });
  // An abort ends the wait at once (the next read decides), with or without `ended`.
  const onAbort = () => wake?.();
  options.signal?.addEventListener('abort', onAbort);
  try {
    for (;;) {
      woken = false;
      const status = await workflowStatus(db, id);
      if (!status) throw new TaskmillError('NOT_FOUND', `No workflow ${id}.`);
      options.onStatus?.(status);
      if (status.done) return status;
      if (Date.now() > deadline || options.signal?.aborted) {
        throw new TaskmillError('TIMEOUT', `Workflow ${id} still has ${status.pending} pending tasks.`);
      }
      if (woken) continue;
      // Past the deadline by a millisecond, so that the last read decides.
      const untilDeadline = deadline - Date.now() + 1;
      const delay = options.ended ? untilDeadline : Math.min(options.pollMs ?? 100, untilDeadline);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    stopWatching?.();
  }
}

/**
 * Cancels a workflow: its pending tasks end as cancelled, running ones are aborted on their nodes.
 * Tasks the running ones would have spawned are never created (a cancelled task commits nothing).
 */
export async function cancelWorkflow(
  db: Pick<pg.Pool, 'query'>,
  id: string,
): Promise<{ cancelled: number; requested: number }> {
  if (!isUuid(id))
    throw new TaskmillError('INVALID_ARGUMENT', `Workflow id must be a UUID, got ${JSON.stringify(id)}.`);
  if (!(await workflowStatus(db, id))) throw new TaskmillError('NOT_FOUND', `No workflow ${id}.`);
  const total = { cancelled: 0, requested: 0 };
  // Tasks completing meanwhile may add children; repeat until nothing new is left to cancel.
  for (let round = 0; round < 100; round++) {
    const ids = await uncancelledWorkflowTasks(db, id);
    if (ids.length === 0) break;
    for (const r of await cancelTasks(db, ids)) {
      total[r.outcome]++;
    }
  }
  return total;
}
