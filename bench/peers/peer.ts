/**
 * What every system in the side-by-side comparison implements: the same burn-down (N no-op jobs
 * pre-inserted, then run to the last completion) and the same latency run (sequential jobs, enqueue ->
 * handler start), each in a fresh database the harness creates (and ANALYZEs after the pre-insert,
 * for every system alike).
 *
 * "Done" is the store drained (every job completed and committed), not just the handlers called:
 * systems that complete asynchronously (graphile-worker, pg-boss, BullMQ) are timed to their last
 * commit, like taskmill.
 */
import type { BenchDatabase } from '../bench-database.ts';
import type { LatencySummary } from '../latency-histogram.ts';

export interface PeerBurnDown {
  tasks: number;
  /** Start of processing -> store drained. */
  seconds: number;
  tasksPerSec: number;
  /** Start of processing -> last handler call (when the system lets us see it). */
  handlerSeconds?: number;
  insertSeconds: number;
}

export interface Peer {
  /** Stable id: used by --only / --skip and in result files. */
  id: string;
  /** What ran, with its decisive settings. */
  label: string;
  settings: Record<string, unknown>;
  /** Needs taskmill's schema in its database. */
  usesTaskmillSchema?: boolean;
  /** Why it cannot run on this machine, or undefined when it can. */
  unavailable?(): string | undefined;
  burnDown(db: BenchDatabase, tasks: number): Promise<PeerBurnDown>;
  /** Undefined when the system has no meaningful latency run. */
  latency?(db: BenchDatabase, samples: number): Promise<LatencySummary>;
  /** Caps the latency samples (a polling system costs its poll interval per sample). */
  maxLatencySamples?: number;
  notes?: string[];
}

/** A promise and its resolver, for "the handler ran" signals. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Polls `check` every `everyMs` until it returns true; rejects after `timeoutMs`. */
export async function pollUntil(
  check: () => Promise<boolean>,
  timeoutMs = 120_000,
  everyMs = 5,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Resolves when `count()` reaches `target`, for handler counters; rejects after `timeoutMs`. */
export function counter(target: number): { hit: () => void; done: Promise<void>; readonly value: number } {
  const d = deferred();
  let value = 0;
  if (target <= 0) d.resolve();
  return {
    hit() {
      if (++value === target) d.resolve();
    },
    done: d.promise,
    get value() {
      return value;
    },
  };
}

export function burnDownFigures(
  tasks: number,
  t0: number,
  handlersAt: number | undefined,
  drainedAt: number,
  insertSeconds: number,
): PeerBurnDown {
  const seconds = (drainedAt - t0) / 1000;
  return {
    tasks,
    seconds,
    tasksPerSec: tasks / seconds,
    handlerSeconds: handlersAt === undefined ? undefined : (handlersAt - t0) / 1000,
    insertSeconds,
  };
}
