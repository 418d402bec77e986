/**
 * Retry policies, with the meanings of distributed-task-framework:
 * - FIXED: retry after a fixed delay, at most `maxRetries` times (-1: unlimited), and not once the task
 *   has been failing for longer than `maxIntervalMs` since it was created.
 * - BACKOFF (the default): the first retry after `initialDelayMs`, retry n >= 2 after
 *   `delayPeriodMs * 2^(n-1)`, at most `maxRetries` times, and not once the task has been failing for
 *   longer than `maxDelayMs` since it was created.
 * - OFF: never retry.
 */
import { z } from 'zod';

export const DEFAULT_FIXED = { delayMs: 10_000, maxRetries: 10, maxIntervalMs: 86_400_000 } as const;
export const DEFAULT_BACKOFF = {
  initialDelayMs: 10_000,
  delayPeriodMs: 5_000,
  maxRetries: 1000,
  maxDelayMs: 3_600_000,
} as const;

const ms = z.number().int().min(0);
export const retryPolicySchema = z.discriminatedUnion('mode', [
  z.object({ mode: z.literal('OFF') }).strict(),
  z
    .object({
      mode: z.literal('FIXED'),
      delayMs: ms.default(DEFAULT_FIXED.delayMs),
      maxRetries: z.number().int().min(-1).default(DEFAULT_FIXED.maxRetries),
      maxIntervalMs: ms.default(DEFAULT_FIXED.maxIntervalMs),
    })
    .strict(),
  z
    .object({
      mode: z.literal('BACKOFF'),
      initialDelayMs: ms.default(DEFAULT_BACKOFF.initialDelayMs),
      delayPeriodMs: ms.default(DEFAULT_BACKOFF.delayPeriodMs),
      maxRetries: z.number().int().min(0).default(DEFAULT_BACKOFF.maxRetries),
      maxDelayMs: ms.default(DEFAULT_BACKOFF.maxDelayMs),
    })
    .strict(),
]);

export type RetryPolicyInput = z.input<typeof retryPolicySchema>;
export type RetryPolicy = z.output<typeof retryPolicySchema>;
export const DEFAULT_RETRY_POLICY: RetryPolicy = { mode: 'BACKOFF', ...DEFAULT_BACKOFF };

/**
 * Delay before the next attempt, or undefined when the task must not be retried.
 * `failures` counts failed attempts including the one that just ended (1 after the first failure).
 */
export function nextRetryDelay(
  policy: RetryPolicy,
  failures: number,
  failingForMs: number,
): number | undefined {
  switch (policy.mode) {
    case 'OFF':
      return undefined;
    case 'FIXED':
      if (policy.maxRetries !== -1 && failures > policy.maxRetries) return undefined;
      if (failingForMs + policy.delayMs > policy.maxIntervalMs) return undefined;
      return policy.delayMs;
    case 'BACKOFF': {
      if (failures > policy.maxRetries) return undefined;
      const delay = failures === 1 ? policy.initialDelayMs : policy.delayPeriodMs * 2 ** (failures - 1);
      if (failingForMs + delay > policy.maxDelayMs) return undefined;
      return delay;
    }
  }
}
