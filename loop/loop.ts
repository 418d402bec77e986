/**
 * The one lifecycle shared by everything that loops (heartbeat, leader lease, planner, fetcher,
 * completer, maintenance): `start()` and `stop()` are idempotent, `stop()` waits for the iteration in
 * flight, `wake()` cuts the current sleep short, and the body is a `runOnce()` that tests can also call
 * directly. Timers are injectable so tests can drive time. A failing iteration is retried with
 * exponential backoff (see `maxBackoffMs`), so a database that is away costs few round trips.
 *
 * States: idle -> running (start) -> stopping (stop) -> idle. Owned by the main thread.
 */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** Longest wait between retries of a failing iteration, unless a loop sets its own. */
export const DEFAULT_MAX_BACKOFF_MS = 5_000;

export interface LoopOptions<R> {
  name: string;
  runOnce: () => Promise<R>;
  /** Delay before the next iteration, from the last result (undefined after an error). */
  delayMs: (result: R | undefined) => number;
  onError: (error: unknown) => void;
  /** Called after each iteration that did not throw. */
  onSuccess?: (result: R) => void;
  /**
   * After consecutive failures the delay doubles from `delayMs(undefined)` up to this (default
   * DEFAULT_MAX_BACKOFF_MS, or the error delay itself when that is longer); a success resets it, and
   * `wake()` cuts a backoff short like any sleep.
   */
  maxBackoffMs?: number;
  timers?: Timers;
}

export class Loop<R> {
  private running = false;
  private done: Promise<void> | undefined;
  private sleeping: { handle: unknown; resolve: () => void } | undefined;
  private wakeRequested = false;
  private failures = 0;
  private readonly timers: Timers;

  constructor(private readonly options: LoopOptions<R>) {
    this.timers = options.timers ?? realTimers;
  }

  get isRunning(): boolean {
    return this.running;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.done = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake();
    await this.done;
  }

  /** Run the next iteration now (or right after the one in flight). */
  wake(): void {
    this.wakeRequested = true;
    const sleeping = this.sleeping;
    if (sleeping) {
      this.timers.clearTimeout(sleeping.handle);
      this.sleeping = undefined;
      sleeping.resolve();
    }
  }

  private async run(): Promise<void> {
    while (this.running) {
      this.wakeRequested = false;
      let result: R | undefined;
      let failed = false;
      try {
        result = await this.options.runOnce();
        this.failures = 0;
      } catch (error) {
        failed = true;
        this.failures++;
        this.report(() => this.options.onError(error));
      }
      if (!failed) this.report(() => this.options.onSuccess?.(result as R));
      if (!this.running) break;
      if (this.wakeRequested) continue;
      const ms = failed ? this.backoffMs() : this.options.delayMs(result);
      if (ms > 0) await this.sleep(ms);
    }
  }

  /** Consecutive failed iterations (0 after a success). */
  get consecutiveFailures(): number {
    return this.failures;
  }

  private backoffMs(): number {
    const base = Math.max(1, this.options.delayMs(undefined));
    const cap = Math.max(base, this.options.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS);
    return Math.min(cap, base * 2 ** Math.min(30, this.failures - 1));
  }

  /** A throwing callback must not end the loop (nor reject its `done` promise). */
  private report(fn: () => void): void {
    try {
      fn();
    } catch {
      // The callbacks only log and emit; there is nothing left to do with their own failure.
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const handle = this.timers.setTimeout(() => {
        this.sleeping = undefined;
        resolve();
      }, ms);
      this.sleeping = { handle, resolve };
    });
  }
}

/**
 * A long-lived part whose work is one Loop: `start()`, `stop()` and `wake()` are the loop's; the part
 * gives the body, `runOnce()`, and the loop's other options.
 */
export abstract class LoopingPart<R> {
  protected readonly loop: Loop<R>;

  constructor(options: Omit<LoopOptions<R>, 'runOnce'>) {
    this.loop = new Loop({ ...options, runOnce: () => this.runOnce() });
  }

  start(): void {
    this.loop.start();
  }

  stop(): Promise<void> {
    return this.loop.stop();
  }

  /** Runs the next iteration now, cutting the current sleep short. */
  wake(): void {
    this.loop.wake();
  }

  abstract runOnce(): Promise<R>;
}
