/**
 * Waiting for tasks to end, woken by PostgreSQL: migration 006 notifies TASK_ENDED_CHANNEL with the
 * ids of the tasks a statement moved to tm_history or tm_dead_letters. One waiter per client holds
 * one LISTEN session (store/listener.ts), opened on the first wait and closed by close().
 *
 * A wait subscribes before it reads the task, so an end committed between the two is either seen by
 * the read or heard as a notification: none is missed. When the listening session breaks, every
 * waited task is read again (notifications sent meanwhile are lost), so a wait is level-triggered too.
 *
 * States of one wait: pending -> ended (resolved with the task) | timed out | not found (rejected).
 * Main thread only: `waits` is written by wait() and by the notification handler.
 */
import { TaskmillError } from '../task/errors.ts';
import { TASK_ENDED_CHANNEL } from '../store/channels.ts';
import { Listener } from '../store/listener.ts';

export const WAIT_FOR_TASK_DEFAULTS = {
  /** How long waitForTask() waits before it rejects with TIMEOUT. */
  timeoutMs: 60_000,
};

export interface WaitForTaskOptions {
  /** Reject with a TIMEOUT error after this long (default 60 s). */
  timeoutMs?: number;
}

/** What the waiter needs to know of a task: whether it has ended; undefined when unknown. */
export type TaskLookup<T> = (id: string) => Promise<{ task: T; ended: boolean; state: string } | undefined>;

export class TaskWaiter<T> {
  private listener: Listener | undefined;
  private subscribed: Promise<unknown> | undefined;
  /** Task id -> the checks of the waits on it (each re-reads the task). */
  private readonly waits = new Map<string, Set<() => void>>();
  /** Called on every notification, whatever task ended (waits on a whole workflow). */
  private readonly watchers = new Set<() => void>();

  constructor(
    private readonly openListener: () => Listener,
    private readonly lookup: TaskLookup<T>,
  ) {}

  async wait(id: string, options: WaitForTaskOptions = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? WAIT_FOR_TASK_DEFAULTS.timeoutMs;
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
      throw new TaskmillError('INVALID_ARGUMENT', `timeoutMs must be a number >= 0, got ${timeoutMs}.`);
    }
    let check!: () => void;
    let timer: NodeJS.Timeout | undefined;
    const ended = new Promise<T>((resolve, reject) => {
      let reading = false;
      let again = false;
      let timedOut = false;
      // Reads are serialised: a notification during a read triggers one more read after it. When the
      // time is up, one last read decides: a task that has ended by then is never a timeout.
      check = () => {
        if (reading) return void (again = true);
        reading = true;
        this.lookup(id).then(
          (found) => {
            reading = false;
            if (!found) return reject(new TaskmillError('NOT_FOUND', `No task ${id}.`));
            if (found.ended) return resolve(found.task);
            if (timedOut) {
              return reject(
                new TaskmillError(
                  'TIMEOUT',
                  `Task ${id} has not ended within ${timeoutMs} ms (it is ${found.state}); wait longer ` +
                    'or look at it with getTask().',
                ),
              );
            }
            if (again) {
              again = false;
              check();
            }
          },
          (error: unknown) => {
            reading = false;
            reject(error as Error);
          },
        );
      };
      timer = setTimeout(() => {
        timedOut = true;
        check();
      }, timeoutMs);
    });
    let set = this.waits.get(id);
    if (!set) this.waits.set(id, (set = new Set()));
    set.add(check);
    try {
      await this.subscribe();
      check();
      return await ended;
    } finally {
      clearTimeout(timer);
      set.delete(check);
      if (set.size === 0 && this.waits.get(id) === set) this.waits.delete(id);
    }
  }

  /**
   * Calls `onEnd` after every notification of ended tasks, and when the listening session reconnected
   * (notifications may have been lost), until the returned function is called. Resolves once listening.
   */
  async watch(onEnd: () => void): Promise<() => void> {
    this.watchers.add(onEnd);
    try {
      await this.subscribe();
    } catch (error) {
      this.watchers.delete(onEnd);
      throw error;
    }
    return () => this.watchers.delete(onEnd);
  }

  /** Closes the listening session; waits still pending then end by their timeout. */
  async close(): Promise<void> {
    const listener = this.listener;
    this.listener = undefined;
    this.subscribed = undefined;
    await listener?.close();
  }

  private subscribe(): Promise<unknown> {
    if (!this.subscribed) {
      const listener = (this.listener = this.openListener());
      this.subscribed = listener.subscribe(TASK_ENDED_CHANNEL, (payload, reconnected) => {
        for (const onEnd of this.watchers) onEnd();
        if (reconnected) {
          for (const set of this.waits.values()) for (const check of set) check();
          return;
        }
        for (const id of payload.split(',')) for (const check of this.waits.get(id) ?? []) check();
      });
      // A failed subscription is closed and tried again by the next wait.
      this.subscribed.catch(() => {
        if (this.listener === listener) {
          this.listener = undefined;
          this.subscribed = undefined;
        }
        void listener.close();
      });
    }
    return this.subscribed;
  }
}
