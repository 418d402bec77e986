// tasks.ts
import { defineTask } from '../index.ts';

export const resizeImage = defineTask<{ url: string; width: number }, { url: string; width: number }>({
  name: 'resize-image',
  handler: new URL('./resize-image.ts', import.meta.url), // its default export handles the task
  retry: { mode: 'BACKOFF', initialDelayMs: 1_000, delayPeriodMs: 1_000, maxRetries: 5 },
  timeoutMs: 30_000,
  maxParallelInCluster: 50,
});
