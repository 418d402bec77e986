/**
 * Progress of running tasks (ctx.progress), from worker threads to their node's main thread, beside
 * the batch protocol (protocol.ts): every thread of a node posts on one BroadcastChannel named after
 * the node, which node/progress-recorder.ts listens on and writes to the database in batches.
 *
 * In a thread, a ProgressReporter keeps the last value of each task (last value wins) and posts the
 * values that changed at most every PROGRESS_DEFAULTS.postIntervalMs, all tasks of the thread in one
 * message; a task's value still pending when its attempt ends is posted at once (`final`).
 *
 * Owned by one worker thread (the reporter) or the main thread (the recorder's channel).
 */
import { BroadcastChannel } from 'node:worker_threads';
import { TaskmillError } from '../task/errors.ts';

export const PROGRESS_DEFAULTS = {
  /** The largest progress value, as JSON text (UTF-8 bytes). */
  maxBytes: 8 * 1024,
  /** A thread posts the values that changed at most this often. */
  postIntervalMs: 50,
  /** A node writes the values it received at most this often (one statement for all its tasks). */
  writeIntervalMs: 200,
} as const;

/** What a thread posts: the last value (JSON text) of each task that changed. */
export interface ProgressMessage {
  values: { id: string; json: string }[];
  /** The attempts of these tasks have ended: write them without waiting for the next interval. */
  final: boolean;
}

export function progressChannelName(nodeId: string): string {
  return `taskmill-progress:${nodeId}`;
}

/** A progress value as JSON text, or INVALID_ARGUMENT: a number, or a JSON value of at most maxBytes. */
export function progressJson(value: unknown): string {
  if (typeof value === 'number' && !Number.isFinite(value)) {
    throw new TaskmillError('INVALID_ARGUMENT', `ctx.progress() takes a finite number, got ${value}.`);
  }
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (error) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `ctx.progress() takes a JSON value: ${(error as Error).message}.`,
    );
  }
  if (json === undefined || value === null) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `ctx.progress() takes a number or a JSON value other than null, got ${typeof value}.`,
    );
  }
  const max = PROGRESS_DEFAULTS.maxBytes;
  if (json.length > max / 3 && Buffer.byteLength(json) > max) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `ctx.progress() takes at most ${max} bytes of JSON, got ${Buffer.byteLength(json)}; report a summary (a percentage, counts) instead.`,
    );
  }
  return json;
}

/** In a worker thread: the progress of the tasks it runs, throttled. */
export class ProgressReporter {
  private readonly pending = new Map<string, string>();
  /** Tasks whose attempt runs in this thread: a report after the end (a stray timer) is dropped. */
  private readonly running = new Set<string>();
  private channel: BroadcastChannel | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly nodeId: string) {}

  begin(id: string): void {
    this.running.add(id);
  }

  /** ctx.progress(value): validated at once, posted within postIntervalMs. */
  report(id: string, value: unknown): void {
    const json = progressJson(value);
    if (!this.running.has(id)) return;
    this.pending.set(id, json);
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.post([...this.pending.keys()], false);
    }, PROGRESS_DEFAULTS.postIntervalMs);
  }

  /** The attempt of `id` ended: post its last value now, if one is pending. */
  ended(id: string): void {
    this.running.delete(id);
    if (this.pending.has(id)) this.post([id], true);
  }

  private post(ids: string[], final: boolean): void {
    const values = ids.map((id) => ({ id, json: this.pending.get(id)! }));
    for (const id of ids) this.pending.delete(id);
    if (values.length === 0) return;
    if (!this.channel) {
      this.channel = new BroadcastChannel(progressChannelName(this.nodeId));
      this.channel.unref();
    }
    this.channel.postMessage({ values, final } satisfies ProgressMessage);
  }
}
