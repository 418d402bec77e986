/**
 * The main-thread end of task progress: receives what the node's worker threads post on its progress
 * channel (worker/progress-channel.ts), keeps the last value of each task, and writes them all in one
 * statement (store/progress.ts saveProgress, which also notifies waiters) at most every
 * `writeIntervalMs`, or at once when an attempt ended with a value pending. One write in flight at a
 * time, so values of one task are written in the order they were reported.
 *
 * States: idle -> listening (start) -> stopped (stop: the channel closes and what is pending is
 * written). Main thread only; `pending` is written by the channel's handler and taken by runOnce().
 */
import { BroadcastChannel } from 'node:worker_threads';
import { saveProgress } from '../store/progress.ts';
import type { Queryable } from '../store/queryable.ts';
import { PROGRESS_DEFAULTS, progressChannelName, type ProgressMessage } from '../worker/progress-channel.ts';

/**
 * Most values kept while writes fail (the database is away): the oldest are dropped beyond it, as a
 * task's progress is a hint, not an outcome.
 */
export const MAX_PENDING_PROGRESS = 10_000;

export interface ProgressRecorderOptions {
  db: Queryable;
  nodeId: string;
  writeIntervalMs?: number;
  onError: (error: unknown) => void;
}

export class ProgressRecorder {
  private readonly pending = new Map<string, string>();
  private channel: BroadcastChannel | undefined;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<unknown> | undefined;
  private lastWriteAt = 0;
  private stopped = false;

  constructor(private readonly options: ProgressRecorderOptions) {}

  start(): void {
    if (this.channel || this.stopped) return;
    this.channel = new BroadcastChannel(progressChannelName(this.options.nodeId));
    this.channel.unref();
    this.channel.onmessage = (event) => this.receive((event as { data: ProgressMessage }).data);
  }

  /** Values from a thread (also called by tests). */
  receive(message: ProgressMessage): void {
    for (const { id, json } of message.values) {
      this.pending.delete(id);
      this.pending.set(id, json);
    }
    while (this.pending.size > MAX_PENDING_PROGRESS) this.pending.delete(this.pending.keys().next().value!);
    this.schedule(message.final);
  }

  /** Writes every pending value in one statement; returns how many. */
  async runOnce(): Promise<{ written: number }> {
    while (this.writing) await this.writing.catch(() => {});
    if (this.pending.size === 0) return { written: 0 };
    const batch = new Map(this.pending);
    this.pending.clear();
    this.lastWriteAt = Date.now();
    const write = saveProgress(this.options.db, [...batch.keys()], [...batch.values()]);
    this.writing = write;
    try {
      return { written: await write };
    } catch (error) {
      // Kept for the next write, unless a newer value arrived meanwhile.
      for (const [id, json] of batch) if (!this.pending.has(id)) this.pending.set(id, json);
      throw error;
    } finally {
      this.writing = undefined;
    }
  }

  /** Stops listening and writes what is pending (once). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.channel?.close();
    this.channel = undefined;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.runOnce().catch(this.options.onError);
  }

  private schedule(now: boolean): void {
    if (this.stopped) return;
    const interval = this.options.writeIntervalMs ?? PROGRESS_DEFAULTS.writeIntervalMs;
    const delay = now ? 0 : Math.max(0, this.lastWriteAt + interval - Date.now());
    if (this.timer && !now) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.runOnce().then(
        () => {
          if (this.pending.size > 0) this.schedule(false);
        },
        (error: unknown) => {
          this.options.onError(error);
          if (this.pending.size > 0) this.schedule(false);
        },
      );
    }, delay);
  }
}
