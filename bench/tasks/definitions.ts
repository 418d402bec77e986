/** Task definitions of the flat benchmarks, imported by in-process and spawned nodes alike. */
import { defineTask, type TaskDefinition } from '../../index.ts';

const here = (file: string) => new URL(`./${file}`, import.meta.url);
/** Benchmark tasks never fail; a failure must show up as a missing completion, not as retries. */
const noRetry = { mode: 'OFF' } as const;

export const benchNoop = defineTask({ name: 'bench-noop', handler: here('noop.ts'), retry: noRetry });
export const benchStamp = defineTask<undefined, number>({
  name: 'bench-stamp',
  handler: here('stamp.ts'),
  retry: noRetry,
});
export const benchSpin = defineTask<{ iterations: number }, number>({
  name: 'bench-spin',
  handler: here('spin.ts'),
  retry: noRetry,
});
export const benchSleep = defineTask<{ ms: number }>({
  name: 'bench-sleep',
  handler: here('sleep.ts'),
  retry: noRetry,
});

/** Every flat task; the contract of a definitions export used by spawned nodes (see cluster.ts). */
export function flatTasks(): TaskDefinition[] {
  return [benchNoop, benchStamp, benchSpin, benchSleep];
}
