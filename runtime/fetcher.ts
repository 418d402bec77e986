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
import { Loop, type Timers } from '../loop/loop.ts';
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

export class Fetcher {
  private readonly loop: Loop<{ fetched: number }>;

  constructor(private readonly options: FetcherOptions) {
    this.loop = new Loop({
      name: 'fetcher',
      runOnce: () => this.runOnce(),
      delayMs: () => options.intervalMs,
      onError: options.onError,
      onSuccess: options.onSuccess,
      timers: options.timers,
    });
  }

  start(): void {
    this.loop.start();
  }

  stop(): Promise<void> {
    return this.loop.stop();
  }

  /** Fetch now (the planner assigned tasks to this node, or the connection came back). */
  wake(): void {
    this.loop.wake();
  }

  async runOnce(): Promise<{ fetched: number }> {
    if (this.options.stopping()) return { fetched: 0 };
    const tasks = await fetchAssignedTasks(this.options.db, this.options.nodeId);
    if (tasks.length > 0) this.options.deliver(tasks);
    return { fetched: tasks.length };
  }
}
