/** `taskmill schedule <name>`: schedules tasks by name (the name must be registered by a node). */
import type { Command } from 'commander';
import type { ScheduleContext } from '../../task/schedule-context.ts';
import { withPool } from '../database-url.ts';
import { CliError, EXIT, intOption, print } from '../output.ts';
import type { CommandContext } from '../main.ts';

interface ScheduleOptions {
  message?: string;
  delay?: number;
  at?: string;
  affinity?: string;
  affinityGroup?: string;
  workflow?: string;
  priority?: number;
  idempotencyKey?: string;
  idempotencyRetention?: number;
  debounceKey?: string;
  debounce?: number;
  concurrencyKey?: string;
  count: number;
  json?: boolean;
}

export function registerScheduleCommand(program: Command, ctx: CommandContext): void {
  program
    .command('schedule')
    .description('Schedule a task by name and print its id')
    .argument('<name>', 'task name, as registered by the nodes that run it')
    .option('-m, --message <json>', 'message as JSON (default: none)')
    .option('--delay <ms>', 'run no earlier than this many milliseconds from now', intOption('--delay', 0))
    .option('--at <time>', 'run no earlier than this time (ISO 8601 or epoch milliseconds)')
    .option('--affinity <key>', 'affinity key: one workflow at a time per key')
    .option('--affinity-group <group>', 'group of the affinity key')
    .option('--workflow <id>', 'join this workflow (UUID)')
    .option('--priority <n>', 'higher runs first', intOption('--priority', -1_000_000, 1_000_000))
    .option(
      '--idempotency-key <key>',
      'deduplicate: while a task of this name with this key is pending or running, print its id and schedule nothing',
    )
    .option(
      '--idempotency-retention <ms>',
      'keep the key this long after the task ended',
      intOption('--idempotency-retention', 0),
    )
    .option(
      '--debounce-key <key>',
      'debounce: replace the message of the not yet started task of this name with this key, and push its start to now + --debounce',
    )
    .option('--debounce <ms>', 'delay of a debounced task (with --debounce-key)', intOption('--debounce', 0))
    .option('--concurrency-key <key>', 'concurrency key (e.g. a tenant): its limits apply, served fairly')
    .option('--count <n>', 'schedule this many copies (one statement)', intOption('--count', 1, 1_000_000), 1)
    .option('--json', 'print JSON')
    .action(async (name: string, opts: ScheduleOptions, command: Command) => {
      const context = scheduleContext(opts);
      const { TaskmillClient } = await import('../../client/client.ts');
      const ids = await withPool(command.optsWithGlobals(), ctx.io, async (pool) => {
        const client = new TaskmillClient({ pool });
        return client.scheduleMany(
          name,
          Array.from({ length: opts.count }, () => context),
        );
      });
      print(ctx.io, opts.json, opts.count === 1 ? { id: ids[0] } : { ids }, () => ids.join('\n'));
    });
}

function scheduleContext(opts: ScheduleOptions): ScheduleContext {
  const ctx: ScheduleContext = {};
  if (opts.message !== undefined) {
    try {
      ctx.message = JSON.parse(opts.message);
    } catch (error) {
      throw new CliError(EXIT.USAGE, `--message must be JSON: ${(error as Error).message}`);
    }
  }
  if (opts.delay !== undefined && opts.at !== undefined)
    throw new CliError(EXIT.USAGE, 'Give --delay or --at, not both.');
  if (opts.delay !== undefined) ctx.delayMs = opts.delay;
  if (opts.at !== undefined) {
    const at = new Date(/^\d+$/.test(opts.at) ? Number(opts.at) : opts.at);
    if (!Number.isFinite(at.getTime())) {
      throw new CliError(
        EXIT.USAGE,
        `--at must be an ISO 8601 time or epoch milliseconds, got ${JSON.stringify(opts.at)}.`,
      );
    }
    ctx.runAt = at;
  }
  if (opts.affinity !== undefined) ctx.affinity = opts.affinity;
  if (opts.affinityGroup !== undefined) ctx.affinityGroup = opts.affinityGroup;
  if (opts.workflow !== undefined) ctx.workflowId = opts.workflow;
  if (opts.priority !== undefined) ctx.priority = opts.priority;
  if (opts.idempotencyKey !== undefined) ctx.idempotencyKey = opts.idempotencyKey;
  if (opts.idempotencyRetention !== undefined) ctx.idempotencyRetentionMs = opts.idempotencyRetention;
  if ((opts.debounceKey === undefined) !== (opts.debounce === undefined))
    throw new CliError(EXIT.USAGE, 'Give --debounce-key and --debounce together.');
  if (opts.debounceKey !== undefined) ctx.debounce = { key: opts.debounceKey, delayMs: opts.debounce! };
  if (opts.concurrencyKey !== undefined) ctx.concurrencyKey = opts.concurrencyKey;
  return ctx;
}
