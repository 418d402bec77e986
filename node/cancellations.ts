/**
 * How a node learns that tasks it holds are to be cancelled: a NOTIFY on CANCEL_CHANNEL names one task
 * (`nodeId:taskId`, `notified()`), and, in case a notification was lost or notifications are off, a
 * poll of the tasks whose cancellation was requested (store/tasks.ts cancelRequested) every
 * `intervalMs`. Each task found is handed to `cancel`, which drops it if still queued or aborts it if
 * running; a task may be handed over more than once, until its cancellation is committed.
 *
 * States: stopped -> running -> stopped, the lifecycle of its Loop. Main thread only.
 */
import type pg from 'pg';
import { LoopingPart, type Timers } from '../loop/loop.ts';
import { cancelRequested } from '../store/tasks.ts';

export interface CancellationsOptions {
  db: Pick<pg.Pool, 'query'>;
  nodeId: string;
  intervalMs: number;
  cancel: (taskId: string) => void;
  onError: (error: unknown) => void;
  onSuccess?: () => void;
  timers?: Timers;
}

export class Cancellations extends LoopingPart<{ cancelled: number }> {
  constructor(private readonly options: CancellationsOptions) {
    super({
      name: 'cancellations',
      delayMs: () => options.intervalMs,
      onError: options.onError,
      onSuccess: options.onSuccess,
      timers: options.timers,
    });
  }

  /** A CANCEL_CHANNEL payload: cancels the task when it names this node. */
  notified(payload: string): void {
    const prefix = `${this.options.nodeId}:`;
    if (payload.startsWith(prefix)) this.options.cancel(payload.slice(prefix.length));
  }

  async runOnce(): Promise<{ cancelled: number }> {
    const ids = await cancelRequested(this.options.db, this.options.nodeId);
    for (const id of ids) this.options.cancel(id);
    return { cancelled: ids.length };
  }
}
