/**
 * The LISTEN/NOTIFY channels taskmill sessions talk on, and the planner wake-up. The planner's channel
 * is also named by tm_planner_channel() (migrations/005), which tm_notify_planner() (migrations/015) and
 * so every wake-up uses; test/architecture.test.ts checks that the two names agree. The plpgsql
 * functions wake it through tm_wake_planner(), which notifies only when some task is ready, waiting or
 * sleeping.
 */
import type { Queryable } from './queryable.ts';

/** Channel the planner listens on: new ready tasks or freed capacity. */
export const PLANNER_CHANNEL = 'taskmill_planner';
/** Channel nodes listen on: payload is the id of a node that has new assignments. */
export const NODE_CHANNEL = 'taskmill_node';
/** Channel a node listens on for cancellations: payload `nodeId:taskId`. */
export const CANCEL_CHANNEL = 'taskmill_cancel';
/** Channel the lease holder notifies when it releases the lease, so others retry at once. */
export const LEADER_CHANNEL = 'taskmill_leader';
/**
 * Channel of migration 006's trigger on tm_history and tm_dead_letters: payload is up to 200
 * comma-separated ids of tasks that ended (client/task-waiter.ts listens).
 */
export const TASK_ENDED_CHANNEL = 'taskmill_task_ended';
/**
 * Channel of the nodes' progress flushes (store/progress.ts): payload is up to 200 comma-separated ids
 * of tasks whose progress changed (client/task-waiter.ts listens for onProgress callbacks).
 */
export const TASK_PROGRESS_CHANNEL = 'taskmill_task_progress';

/** Wakes the planner, unconditionally (delivered when the caller's transaction commits, at once outside one). */
export async function wakePlanner(db: Queryable): Promise<void> {
  await db.query(`select tm_notify_planner()`);
}

/** Wakes the nodes waiting for the leader lease. */
export async function notifyLeaseReleased(db: Queryable): Promise<void> {
  await db.query(`select pg_notify($1, '')`, [LEADER_CHANNEL]);
}
