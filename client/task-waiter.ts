/**
 * Waiting for tasks to end, woken by PostgreSQL: migration 006 notifies TASK_ENDED_CHANNEL with the
 * ids of the tasks a statement moved to tm_history or tm_dead_letters. One waiter per client holds
 * one LISTEN session (store/listener.ts), opened on the first wait and closed by close(). Waits with
 * an `onProgress` callback also listen on TASK_PROGRESS_CHANNEL (the nodes' progress flushes,
 * store/progress.ts), subscribed on the first such wait.
 *
 * A wait subscribes before it reads the task, so an end committed between the two is either seen by
 * the read or heard as a notification: none is missed. When the listening session breaks, every
 * waited task is read again (notifications sent meanwhile are lost), so a wait is level-triggered too.
 * Progress is best effort in between: the callback gets the latest value read, each distinct value
 * at most once in a row, never after the wait has ended.
 *
 * Where LISTEN cannot work (a pooler in transaction mode between the client and PostgreSQL, with no
 * direct server to listen on), the waiter polls instead: every `pollIntervalMs` each wait reads its task
 * again, as after a reconnection. A LISTEN session may also be shared (a node's, store/listener.ts):
 * the waiter then only subscribes and unsubscribes, and never closes it.
 *
 * States of one wait: pending -> ended (resolved with the task) | timed out | aborted | not found
 * (rejected). Main thread only: `waits` is written by wait() and by the notification handlers.
 */
import { TaskmillError } from '../task/errors.ts';
import { TASK_ENDED_CHANNEL, TASK_PROGRESS_CHANNEL } from '../store/channels.ts';
import { Listener } from '../store/listener.ts';

export const WAIT_FOR_TASK_DEFAULTS = {
  /** How long waitForTask() waits before it rejects with TIMEOUT. */
  timeoutMs: 60_000,
  /** The longest timeoutMs accepted: a day (a wait holds a timer and a place in the waiter). */
  maxTimeoutMs: 86_400_000,
  /** Without a LISTEN session, waits read their task this often. */
  pollIntervalMs: 250,
};

/**
 * How the waiter hears of ended tasks: a LISTEN session it opens and closes itself, one it shares
 * (subscribes to, never closes), or none (it polls).
 */
export type WaiterSource = { open: () => Listener } | { shared: Listener } | 'poll';

export interface WaitForTaskOptions {
  /** Reject with a TIMEOUT error after this long (default 60 s, at most a day). */
  timeoutMs?: number;
  /** Reject with an ABORTED error when this signal aborts (the task goes on; only the wait ends). */
  signal?: AbortSignal;
  /**
   * Called with the task's progress (what its handler passed to ctx.progress()) when it changes while
   * the wait lasts, and once at the start if the task has reported some already. Errors it throws
   * are ignored.
   */
  onProgress?: (value: unknown) => void;
}

const OPTION_KEYS = new Set(['timeoutMs', 'signal', 'onProgress']);

/** What the waiter needs to know of a task: whether it has ended; undefined when unknown. */
export type TaskLookup<T> = (
  id: string,
) => Promise<{ task: T; ended: boolean; state: string; progress?: unknown } | undefined>;

/** Reads a task's progress (null or undefined: none). */
export type ProgressLookup = (id: string) => Promise<unknown>;

interface Wait {
  check: () => void;
  progress?: () => void;
}

export class TaskWaiter<T> {
  private listener: Listener | undefined;
  private subscribed: Promise<unknown> | undefined;
  /** Unsubscribes this waiter's handlers from a shared listener. */
  private readonly unsubscribes: Promise<() => void>[] = [];
  private pollTimer: NodeJS.Timeout | undefined;
  private progressSubscribed: Promise<unknown> | undefined;
  /** Task id -> the waits on it (each re-reads the task). */
  private readonly waits = new Map<string, Set<Wait>>();
  /** Called on every notification, whatever task ended (waits on a whole workflow). */
  private readonly watchers = new Set<() => void>();

  constructor(
    private readonly source: WaiterSource,
    private readonly lookup: TaskLookup<T>,
    private readonly readProgress?: ProgressLookup,
  ) {}

  async wait(id: string, options: WaitForTaskOptions = {}): Promise<T> {
    checkWaitOptions(options);
    const { signal, onProgress } = options;
    const timeoutMs = options.timeoutMs ?? WAIT_FOR_TASK_DEFAULTS.timeoutMs;
    if (signal?.aborted) throw abortedError(id, signal);
    const wait: Wait = { check: () => {} };
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    let finished = false;
    let lastProgress: string | undefined;
    const report = (value: unknown) => {
      if (finished || value === null || value === undefined) return;
      const text = JSON.stringify(value);
      if (text === lastProgress) return;
      lastProgress = text;
      try {
        onProgress!(value);
      } catch {
        // The caller's callback does not end the wait.
      }
    };
    const ended = new Promise<T>((resolve, reject) => {
      let reading = false;
      let again = false;
      let timedOut = false;
      // Reads are serialised: a notification during a read triggers one more read after it. When the
      // time is up, one last read decides: a task that has ended by then is never a timeout.
      wait.check = () => {
        if (reading) return void (again = true);
        reading = true;
        this.lookup(id).then(
          (found) => {
            reading = false;
            if (!found) return reject(new TaskmillError('NOT_FOUND', `No task ${id}.`));
            if (onProgress) report(found.progress);
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
              wait.check();
            }
          },
          (error: unknown) => {
            reading = false;
            reject(error as Error);
          },
        );
      };
      if (onProgress && this.readProgress) {
        const read = this.readProgress;
        let busy = false;
        let more = false;
        wait.progress = () => {
          if (busy) return void (more = true);
          busy = true;
          read(id).then(
            (value) => {
              busy = false;
              report(value);
              if (more) {
                more = false;
                wait.progress!();
              }
            },
            () => (busy = false), // the next notification or the end reads it again
          );
        };
      }
      timer = setTimeout(() => {
        timedOut = true;
        wait.check();
      }, timeoutMs);
      if (signal) {
        onAbort = () => reject(abortedError(id, signal));
        signal.addEventListener('abort', onAbort, { once: true });
      }
    });
    // It may reject (abort, timeout) while the subscription below is still under way.
    ended.catch(() => {});
    let set = this.waits.get(id);
    if (!set) this.waits.set(id, (set = new Set()));
    set.add(wait);
    try {
      await this.subscribe(onProgress !== undefined);
      wait.check();
      return await ended;
    } finally {
      finished = true;
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      set.delete(wait);
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

  /** Closes the listening session (or leaves a shared one); waits still pending then end by their timeout. */
  async close(): Promise<void> {
    const listener = this.listener;
    this.listener = undefined;
    this.subscribed = undefined;
    this.progressSubscribed = undefined;
    clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    if (typeof this.source === 'object' && 'shared' in this.source) {
      for (const unsubscribe of this.unsubscribes.splice(0)) (await unsubscribe.catch(() => () => {}))();
      return;
    }
    await listener?.close();
  }

  /** Every wait reads its task again (polling, or notifications may have been lost). */
  private checkAll(): void {
    for (const onEnd of this.watchers) onEnd();
    for (const set of this.waits.values()) for (const wait of set) wait.check();
  }

  private subscribe(progress = false): Promise<unknown> {
    if (this.source === 'poll') {
      // Progress is read with each poll: check() reads it with the task.
      this.pollTimer ??= setInterval(() => this.checkAll(), WAIT_FOR_TASK_DEFAULTS.pollIntervalMs).unref();
      return Promise.resolve();
    }
    const shared = 'shared' in this.source;
    if (!this.subscribed) {
      const listener = (this.listener = 'shared' in this.source ? this.source.shared : this.source.open());
      const subscribed = listener.subscribe(TASK_ENDED_CHANNEL, (payload, reconnected) => {
        for (const onEnd of this.watchers) onEnd();
        if (reconnected) {
          for (const set of this.waits.values()) for (const wait of set) wait.check();
          return;
        }
        for (const id of payload.split(',')) for (const wait of this.waits.get(id) ?? []) wait.check();
      });
      if (shared) this.unsubscribes.push(subscribed);
      this.subscribed = subscribed;
      // A failed subscription is closed and tried again by the next wait.
      this.subscribed.catch(() => {
        if (this.listener === listener) {
          this.listener = undefined;
          this.subscribed = undefined;
          this.progressSubscribed = undefined;
        }
        if (!shared) void listener.close();
      });
    }
    if (!progress) return this.subscribed;
    if (!this.progressSubscribed) {
      const listener = this.listener!;
      this.progressSubscribed = this.subscribed.then(() => {
        const unsubscribe = listener.subscribe(TASK_PROGRESS_CHANNEL, (payload, reconnected) => {
          // After a reconnection the ended channel's handler re-reads every wait (progress included).
          if (reconnected) return;
          for (const id of payload.split(',')) for (const wait of this.waits.get(id) ?? []) wait.progress?.();
        });
        if (shared) this.unsubscribes.push(unsubscribe);
        return unsubscribe;
      });
      this.progressSubscribed.catch(() => {
        if (this.listener === listener) this.progressSubscribed = undefined;
      });
    }
    return this.progressSubscribed;
  }
}

function abortedError(id: string, signal: AbortSignal): TaskmillError {
  return new TaskmillError('ABORTED', `The wait for task ${id} was aborted; the task goes on.`, {
    cause: signal.reason,
  });
}

/** Throws INVALID_ARGUMENT for options waitForTask() does not take. */
export function checkWaitOptions(options: WaitForTaskOptions): void {
  if (typeof options !== 'object' || options === null)
    throw new TaskmillError('INVALID_ARGUMENT', 'waitForTask() options must be an object.');
  for (const key of Object.keys(options)) {
    if (!OPTION_KEYS.has(key)) {
      throw new TaskmillError(
        'INVALID_ARGUMENT',
        `Unknown waitForTask() option ${JSON.stringify(key.slice(0, 100))}; the options are ${[...OPTION_KEYS].join(', ')}.`,
      );
    }
  }
  const { timeoutMs, signal, onProgress } = options;
  const max = WAIT_FOR_TASK_DEFAULTS.maxTimeoutMs;
  if (timeoutMs !== undefined && !(typeof timeoutMs === 'number' && timeoutMs >= 0 && timeoutMs <= max)) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `timeoutMs must be a number of milliseconds from 0 to ${max}, got ${String(timeoutMs)}.`,
    );
  }
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw new TaskmillError('INVALID_ARGUMENT', 'signal must be an AbortSignal.');
  if (onProgress !== undefined && typeof onProgress !== 'function')
    throw new TaskmillError('INVALID_ARGUMENT', 'onProgress must be a function.');
}
