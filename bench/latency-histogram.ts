/**
 * Latency percentiles with HdrHistogram (hdr-histogram-js): values are recorded in microseconds with
 * three significant digits, so percentiles are exact to 0.1 % whatever the spread.
 */
import * as hdr from 'hdr-histogram-js';

export interface LatencySummary {
  count: number;
  minMs: number;
  meanMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

export function summarizeLatencies(valuesMs: readonly number[]): LatencySummary {
  // Clock skew between threads can make a tiny latency read as slightly negative: clamp to 0.
  const us = valuesMs.map((v) => Math.max(0, Math.round(v * 1000)));
  if (us.length === 0)
    return { count: 0, minMs: 0, meanMs: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, p999Ms: 0, maxMs: 0 };
  const histogram = hdr.build({ lowestDiscernibleValue: 1, numberOfSignificantValueDigits: 3 });
  try {
    let min = Infinity;
    let max = 0;
    let sum = 0;
    for (const v of us) {
      histogram.recordValue(v);
      min = Math.min(min, v);
      max = Math.max(max, v);
      sum += v;
    }
    // A percentile is the top of its histogram bucket: never report it above the exact maximum.
    const at = (p: number) => Math.min(histogram.getValueAtPercentile(p), max) / 1000;
    return {
      count: us.length,
      minMs: min / 1000,
      meanMs: Math.round(sum / us.length) / 1000,
      p50Ms: at(50),
      p90Ms: at(90),
      p99Ms: at(99),
      p999Ms: at(99.9),
      maxMs: max / 1000,
    };
  } finally {
    histogram.destroy();
  }
}

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across the threads of a process. */
export function preciseNow(): number {
  return performance.timeOrigin + performance.now();
}
