/** Returns the wall-clock time (ms, sub-millisecond precision) at which the handler started. */
export default function stamp(): number {
  return performance.timeOrigin + performance.now();
}
