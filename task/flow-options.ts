/**
 * Flow-control options (docs/flow-control.md): a concurrency limit (at most `limit` tasks of a group
 * assigned or running across the cluster) and a rate limit (at most `limit` starts in any `windowMs`).
 * Given on a task definition (per task name and concurrency key) or for a key pattern
 * (client.setConcurrencyLimit / setRateLimit: per key, across task names). Validated here, once, for
 * both; the planner's claim enforces them (planner/flow.ts).
 */
import { z } from 'zod';
import { TaskmillError } from './errors.ts';

export const FLOW_LIMITS = {
  /** Highest concurrency or rate limit. */
  maxLimit: 1_000_000,
  /** Longest rate window: one day. */
  maxWindowMs: 86_400_000,
  /** A key pattern: UTF-8 bytes. */
  maxPatternBytes: 1_000,
} as const;

const limit = z.number().int().min(1).max(FLOW_LIMITS.maxLimit);

export const concurrencyOptionSchema = z.object({ limit }).strict();
export const rateLimitOptionSchema = z
  .object({ limit, windowMs: z.number().int().min(1).max(FLOW_LIMITS.maxWindowMs) })
  .strict();

/** At most `limit` tasks of a group assigned or running at once, across the cluster. */
export interface ConcurrencyOption {
  limit: number;
}

/** At most `limit` task starts of a group in any window of `windowMs` milliseconds, across the cluster. */
export interface RateLimitOption {
  limit: number;
  windowMs: number;
}

/** Parses one option; a bad value throws INVALID_ARGUMENT naming what to change, before anything is written. */
export function parseFlowOption<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `Invalid ${what}: ${z.prettifyError(parsed.error)} (a limit is an integer from 1 to ${FLOW_LIMITS.maxLimit}, windowMs from 1 to ${FLOW_LIMITS.maxWindowMs}).`,
    );
  }
  return parsed.data;
}

/** A key pattern: a non-empty string without NUL, `*` matching any run of characters. */
export function checkKeyPattern(pattern: unknown): string {
  if (
    typeof pattern !== 'string' ||
    pattern.length === 0 ||
    pattern.includes('\0') ||
    Buffer.byteLength(pattern, 'utf8') > FLOW_LIMITS.maxPatternBytes
  ) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `Invalid key pattern ${JSON.stringify(String(pattern).slice(0, 100))}: give a non-empty string of at most ${FLOW_LIMITS.maxPatternBytes} bytes without NUL characters ('*' matches any run of characters, e.g. 'tenant:*').`,
    );
  }
  return pattern;
}
