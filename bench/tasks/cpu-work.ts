/**
 * A fixed amount of CPU work, independent of how busy the machine is: a number of iterations of an
 * integer mixing loop, calibrated once (on the calling thread) to take a given time on an idle core.
 * A busy-wait on the clock would instead count the time a thread spends preempted as work.
 */

/** Runs `iterations` rounds of xorshift; returns the state so the loop cannot be optimised away. */
export function burn(iterations: number): number {
  // Signed shifts only: `x` stays an int32 wherever V8 inlines this loop. With `>>>` the value could
  // leave int32 range and, once inlined into the worker's task loop, ran 3x slower than calibrated
  // (a 10 ms task spent ~32 ms of CPU), which no runtime change could explain.
  let x = 2463534242 | 0;
  for (let i = 0; i < iterations; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
  }
  return x >>> 0;
}

/** Iterations that take `ms` milliseconds on this thread: the fastest of several timed samples. */
export function calibrate(ms: number, samples = 7): number {
  const probe = 200_000;
  burn(probe); // warm the JIT
  let best = Infinity;
  for (let i = 0; i < samples; i++) {
    const t0 = performance.now();
    burn(probe);
    best = Math.min(best, performance.now() - t0);
  }
  return Math.max(1, Math.round((probe / best) * ms));
}
