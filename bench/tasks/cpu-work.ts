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

/**
 * Iterations that take `ms` milliseconds on this thread: the median rate of `samples` runs of about
 * `ms` each, after a warm-up. (The fastest of a few 0.3 ms probes, used before, overstated the speed by
 * up to 12 %, so a "10 ms" task cost 10.5-11 ms and the CPU run's efficiency read low by as much.)
 */
export function calibrate(ms: number, samples = 9): number {
  const probe = 200_000;
  for (let i = 0; i < 200; i++) burn(probe / 20); // warm the JIT: optimised as a function, not only by OSR
  const t0 = performance.now();
  burn(probe);
  let iterations = Math.max(1, Math.round((probe / Math.max(performance.now() - t0, 1e-3)) * ms));
  // Twice: the first round also finishes warming up (its median read a few per cent slow).
  for (let round = 0; round < 2; round++) {
    const rates: number[] = [];
    for (let i = 0; i < samples; i++) {
      const t = performance.now();
      burn(iterations);
      rates.push(iterations / Math.max(performance.now() - t, 1e-3));
    }
    rates.sort((a, b) => a - b);
    iterations = Math.max(1, Math.round(rates[Math.floor(samples / 2)] * ms));
  }
  return iterations;
}
