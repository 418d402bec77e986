/**
 * The `cron` option of a task definition: its schema (validated with the definition, so a bad
 * expression or time zone is refused at defineTask()) and the message of every cron instance. The
 * leader's cron loop that creates the instances is planner/cron.ts.
 */
import { Cron as CronPattern } from 'croner';
import { z } from 'zod';

export const CRON_OPTION_DEFAULTS = {
  timezone: 'UTC',
  missed: 'run-once' as CronMissedPolicy,
};

export type CronMissedPolicy = 'run-once' | 'skip';

export const cronOptionSchema = z
  .object({
    /** 5 fields (minute precision), 6 (leading seconds) or 7 (trailing year); `@daily` style nicknames. */
    expression: z.string().min(1),
    /** IANA time zone the expression is read in (default UTC, so every node computes the same slots). */
    timezone: z.string().min(1).default(CRON_OPTION_DEFAULTS.timezone),
    /** What to do with slots missed while the cluster had no leader for longer than missedAfterMs. */
    missed: z.enum(['run-once', 'skip']).default(CRON_OPTION_DEFAULTS.missed),
  })
  .strict()
  .superRefine((option, ctx) => {
    const problem = cronProblem(option.expression, option.timezone);
    // Reported at the option that is wrong: a bad time zone is not a bad expression.
    const path = problem && timezoneProblem(option.timezone) ? ['timezone'] : ['expression'];
    if (problem) ctx.addIssue({ code: 'custom', message: problem, path });
  });

export type CronOptionInput = z.input<typeof cronOptionSchema>;
export type CronOption = z.output<typeof cronOptionSchema>;

/** The message of every cron instance. */
export interface CronMessage {
  /** The slot this instance stands for. */
  slot: Date;
  /** True for the one instance standing for slots missed while the cluster had no leader. */
  catchUp: boolean;
}

/** Why a time zone cannot be used, or undefined when it can. */
function timezoneProblem(timezone: string): string | undefined {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: timezone });
    return undefined;
  } catch {
    return `unknown time zone ${JSON.stringify(timezone)}: use an IANA name such as "Europe/Paris" or "UTC"`;
  }
}

/** Why an expression cannot be used, or undefined when it can. */
export function cronProblem(expression: string, timezone: string): string | undefined {
  const zone = timezoneProblem(timezone);
  if (zone) return zone;
  let pattern: CronPattern;
  try {
    pattern = cronPattern(expression, timezone);
  } catch (error) {
    return (
      `invalid cron expression ${JSON.stringify(expression)} (${(error as Error).message}); ` +
      'use 5 fields (m h dom mon dow), 6 with leading seconds, or 7 with a trailing year'
    );
  }
  if (!pattern.nextRun()) return `cron expression ${JSON.stringify(expression)} never fires after now`;
  return undefined;
}

const patterns = new Map<string, CronPattern>();

/** A parsed expression (no timer is started: croner only schedules when given a callback). */
export function cronPattern(expression: string, timezone: string): CronPattern {
  const key = `${timezone}\u0000${expression}`;
  let pattern = patterns.get(key);
  if (!pattern) {
    pattern = new CronPattern(expression, { timezone, paused: true });
    patterns.set(key, pattern);
  }
  return pattern;
}
