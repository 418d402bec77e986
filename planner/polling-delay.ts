/**
 * The planner's sleep after a pass, chosen by how many tasks the pass found from a map of
 * thresholds to delays (distributed-task-framework's `polling-delay`): the entry with the largest
 * threshold not above the count wins. `{0: 1000, 100: 500, 1000: 0}` sleeps 1 s after an empty pass,
 * 500 ms after 100-999 tasks and not at all after 1000 or more. A NOTIFY cuts any sleep short.
 */
import { TaskmillError } from '../task/errors.ts';

export type PollingDelayMap = Record<number, number>;

/** Idle planners sleep long (NOTIFY wakes them); busy ones go straight on. */
export const DEFAULT_POLLING_DELAY: PollingDelayMap = { 0: 1000, 1: 50, 100: 10, 1000: 0 };

export function validatePollingDelay(map: PollingDelayMap): [number, number][] {
  const entries = Object.entries(map).map(([k, v]) => [Number(k), v] as [number, number]);
  if (entries.length === 0 || !entries.some(([k]) => k === 0)) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      'pollingDelay needs an entry for 0 tasks, e.g. {0: 1000, 100: 0}.',
    );
  }
  for (const [k, v] of entries) {
    if (!Number.isInteger(k) || k < 0 || !Number.isFinite(v) || v < 0 || v > 3_600_000) {
      throw new TaskmillError(
        'INVALID_CONFIG',
        `pollingDelay entry ${k}: ${v} is invalid: thresholds are integers >= 0, delays 0..3600000 ms.`,
      );
    }
  }
  return entries.sort((a, b) => a[0] - b[0]);
}

export function pollingDelayFor(sorted: [number, number][], found: number): number {
  let delay = sorted[0][1];
  for (const [threshold, ms] of sorted) if (found >= threshold) delay = ms;
  return delay;
}
