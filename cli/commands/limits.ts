/** `taskmill limits list|set|remove`: key-pattern concurrency and rate limits (docs/flow-control.md). */
import type { Command } from 'commander';
import type pg from 'pg';
import { FLOW_LIMITS } from '../../task/flow-options.ts';
import type { FlowLimit } from '../../store/flow.ts';
import { withPool } from '../database-url.ts';
import { CliError, EXIT, intOption, print } from '../output.ts';
import type { CommandContext } from '../main.ts';

interface SetOptions {
  concurrency?: number;
  rate?: number;
  window?: number;
  json?: boolean;
}

export function registerLimitsCommands(program: Command, ctx: CommandContext): void {
  const cmd = program
    .command('limits')
    .description('List, set or remove the concurrency and rate limits of concurrency-key patterns');

  cmd
    .command('list')
    .description('The key-pattern limits, most specific pattern first')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const limits = await withPool(command.optsWithGlobals(), ctx.io, async (pool) =>
        (await client(pool)).flowLimits(),
      );
      print(ctx.io, opts.json, { limits }, () => render(limits));
    });

  cmd
    .command('set')
    .description('Set the concurrency and/or rate limit of the keys a pattern matches (`*`: any characters)')
    .argument('<pattern>', 'concurrency key pattern, e.g. tenant:*')
    .option(
      '--concurrency <n>',
      'most tasks assigned or running at once',
      intOption('--concurrency', 1, FLOW_LIMITS.maxLimit),
    )
    .option('--rate <n>', 'most task starts per --window', intOption('--rate', 1, FLOW_LIMITS.maxLimit))
    .option('--window <ms>', 'the rate window, ms', intOption('--window', 1, FLOW_LIMITS.maxWindowMs))
    .option('--json', 'print JSON')
    .action(async (pattern: string, opts: SetOptions, command: Command) => {
      if (opts.concurrency === undefined && opts.rate === undefined) {
        throw new CliError(EXIT.USAGE, 'Give --concurrency, or --rate with --window, or both.');
      }
      if ((opts.rate === undefined) !== (opts.window === undefined)) {
        throw new CliError(EXIT.USAGE, 'Give --rate and --window together.');
      }
      const limits = await withPool(command.optsWithGlobals(), ctx.io, async (pool) => {
        const c = await client(pool);
        if (opts.concurrency !== undefined) await c.setConcurrencyLimit(pattern, opts.concurrency);
        if (opts.rate !== undefined)
          await c.setRateLimit(pattern, { limit: opts.rate, windowMs: opts.window! });
        return c.flowLimits();
      });
      print(ctx.io, opts.json, { limits }, () => render(limits));
    });

  cmd
    .command('remove')
    .description("Remove a pattern's limits")
    .argument('<pattern>', 'concurrency key pattern, as set')
    .option('--json', 'print JSON')
    .action(async (pattern: string, opts: { json?: boolean }, command: Command) => {
      const limits = await withPool(command.optsWithGlobals(), ctx.io, async (pool) => {
        const c = await client(pool);
        await c.setConcurrencyLimit(pattern, null);
        await c.setRateLimit(pattern, null);
        return c.flowLimits();
      });
      print(ctx.io, opts.json, { limits }, () => render(limits));
    });
}

/** Loaded on use, like the other commands that need the client. */
async function client(pool: pg.Pool) {
  const { TaskmillClient } = await import('../../client/client.ts');
  return new TaskmillClient({ pool });
}

function render(limits: FlowLimit[]): string {
  if (limits.length === 0) return '(no limit)';
  return limits
    .map(
      (l) =>
        `${l.pattern}  concurrency ${l.concurrency ?? '-'}  rate ${l.rate ? `${l.rate.limit} per ${l.rate.windowMs} ms` : '-'}`,
    )
    .join('\n');
}
