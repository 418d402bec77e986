/**
 * The one lifecycle shared by everything that loops (heartbeat, leader lease, planner, fetcher,
 * completer, maintenance): `start()` and `stop()` are idempotent, `stop()` waits for the iteration in
 * flight, `wake()` cuts the current sleep short, and the body is a `runOnce()` that tests can also call
 * directly. Timers are injectable so tests can drive time.
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

export interface LoopOptions<R> {
  name: string;
  runOnce: () => Promise<R>;
  /** Delay before the next iteration, from the last result (undefined after an error). */
  delayMs: (result: R | undefined) => number;
  onError: (error: unknown) => void;
  timers?: Timers;
}

export class Loop<R> {
  private running = false;
  private done: Promise<void> | undefined;
  private sleeping: { handle: unknown; resolve: () => void } | undefined;
  private wakeRequested = false;
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
      try {
        result = await this.options.runOnce();
      } catch (error) {
        this.options.onError(error);
      }
      if (!this.running) break;
      if (this.wakeRequested) continue;
      const ms = this.options.delayMs(result);
      if (ms > 0) await this.sleep(ms);
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
