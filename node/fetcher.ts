/**
 * The fetcher of a node: takes the tasks the planner assigned to the node (assigned -> running, in one
 * statement, store/tasks.ts fetchAssignedTasks) and hands them to the node, which puts them in its
 * mailboxes. It runs when the planner's NOTIFY names the node (`wake()`), and every `intervalMs` in
 * case a notification was lost or notifications are off. Tasks the planner started on its own node
 * never pass here: they come with the planner's pass (PassResult.startedLocally).
 *
 * States: stopped -> running -> stopped, the lifecycle of its Loop; `runOnce()` fetches nothing once
 * `stopping()` says the node is stopping (what is assigned then is handed back by the node's stop).
 * Main thread only.
 */
import type pg from 'pg';
import { LoopingPart, type Timers } from '../loop/loop.ts';
import { fetchAssignedTasks, type FetchedTask } from '../store/tasks.ts';

export interface FetcherOptions {
  db: Pick<pg.Pool, 'query'>;
  nodeId: string;
  intervalMs: number;
  /** Receives each non-empty fetch, after its statement committed. */
  deliver: (tasks: FetchedTask[]) => void;
  stopping: () => boolean;
  onError: (error: unknown) => void;
  onSuccess?: () => void;
  timers?: Timers;
}

export class Fetcher extends LoopingPart<{ fetched: number }> {
  constructor(private readonly options: FetcherOptions) {
    super({
      name: 'fetcher',
      delayMs: () => options.intervalMs,
      onError: options.onError,
      onSuccess: options.onSuccess,
      timers: options.timers,
    });
  }

  async runOnce(): Promise<{ fetched: number }> {
    if (this.options.stopping()) return { fetched: 0 };
    const tasks = await fetchAssignedTasks(this.options.db, this.options.nodeId);
    if (tasks.length > 0) this.options.deliver(tasks);
    return { fetched: tasks.length };
  }
}
