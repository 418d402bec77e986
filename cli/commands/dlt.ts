/** `taskmill dlt list|show|requeue|purge`: the dead-letter table (store/dead-letters.ts). */
import type { Command } from 'commander';
import type { PurgeSelector, RequeueSelector } from '../../store/dead-letters.ts';
import { toJson } from '../../http/to-json.ts';
import { withPool } from '../database-url.ts';
import { CliError, EXIT, intOption, print, table } from '../output.ts';
import type { CommandContext } from '../main.ts';

/** Loaded on use, so that other commands start without it. */
const deadLetters = () => import('../../store/dead-letters.ts');

export function registerDltCommands(program: Command, ctx: CommandContext): void {
  const cmd = program.command('dlt').description('Dead letters: tasks that failed every attempt');

  cmd
    .command('list')
    .description('List dead letters in task creation order')
    .option('--name <task>', 'only this task name')
    .option('--limit <n>', 'page size', intOption('--limit', 1, 10_000), 100)
    .option('--after <id>', 'the next-page id a previous page printed')
    .option('--json', 'print JSON')
    .action(
      async (opts: { name?: string; limit: number; after?: string; json?: boolean }, command: Command) => {
        const rows = await withPool(command.optsWithGlobals(), ctx.io, async (pool) =>
          (await deadLetters()).listDeadLetters(pool, opts),
        );
        const nextAfter = rows.length === opts.limit ? rows[rows.length - 1].id : null;
        print(ctx.io, opts.json, { deadLetters: rows, nextAfter }, (d) =>
          [
            d.deadLetters.length === 0
              ? '(no dead letter)'
              : table(
                  ['id', 'name', 'attempts', 'failed', 'error'],
                  d.deadLetters.map((r) => [
                    r.id,
                    r.name,
                    r.attempts,
                    r.failedAt.toISOString(),
                    (r.error ?? '').split('\n')[0].slice(0, 80),
                  ]),
                ),
            ...(d.nextAfter ? [`next page: --after ${d.nextAfter}`] : []),
          ].join('\n'),
        );
      },
    );

  cmd
    .command('show')
    .description('Show one dead letter with its message and full error (exit code 3 if unknown)')
    .argument('<id>', 'task id')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }, command: Command) => {
      const dl = await withPool(command.optsWithGlobals(), ctx.io, async (pool) =>
        (await deadLetters()).getDeadLetter(pool, id),
      );
      print(ctx.io, opts.json, { ...dl, message: toJson(dl.message) }, (d) =>
        [
          `${d.name} ${d.id}: ${d.attempts} attempts, failed ${d.failedAt.toISOString()}`,
          `workflow ${d.workflowId}${d.affinity !== null ? `, affinity ${d.affinityGroup}/${d.affinity}` : ''}`,
          `message: ${JSON.stringify(d.message)}`,
          d.error ?? '',
        ].join('\n'),
      );
    });

  cmd
    .command('requeue')
    .description('Requeue dead letters as ready tasks (same ids): the given ids, --name, or --all')
    .argument('[ids...]', 'task ids (all must exist, or nothing is requeued; exit code 3)')
    .option('--name <task>', 'every dead letter of this task')
    .option('--all', 'every dead letter')
    .option('--json', 'print JSON')
    .action(
      async (ids: string[], opts: { name?: string; all?: boolean; json?: boolean }, command: Command) => {
        const chosen = [ids.length > 0, opts.name !== undefined, Boolean(opts.all)].filter(Boolean).length;
        if (chosen !== 1)
          throw new CliError(EXIT.USAGE, 'Give task ids, --name or --all (exactly one of them).');
        const selector: RequeueSelector =
          ids.length > 0 ? { ids } : opts.name !== undefined ? { name: opts.name } : { all: true };
        const result = await withPool(command.optsWithGlobals(), ctx.io, async (pool) =>
          (await deadLetters()).requeueDeadLetters(pool, selector),
        );
        print(ctx.io, opts.json, result, (r) => `requeued ${r.requeued.length}`);
      },
    );

  cmd
    .command('purge')
    .description('Delete dead letters for good: the given ids, or --name and/or --older-than, or --all')
    .argument('[ids...]', 'task ids (all must exist, or nothing is purged; exit code 3)')
    .option('--name <task>', 'dead letters of this task')
    .option(
      '--older-than <ms>',
      'dead letters that failed at least this many milliseconds ago',
      intOption('--older-than', 0),
    )
    .option('--all', 'every dead letter')
    .option('--json', 'print JSON')
    .action(
      async (
        ids: string[],
        opts: { name?: string; olderThan?: number; all?: boolean; json?: boolean },
        command: Command,
      ) => {
        const byFilter = opts.name !== undefined || opts.olderThan !== undefined;
        if ([ids.length > 0, byFilter, Boolean(opts.all)].filter(Boolean).length !== 1) {
          throw new CliError(EXIT.USAGE, 'Give task ids, or --name and/or --older-than, or --all.');
        }
        const selector: PurgeSelector =
          ids.length > 0
            ? { ids }
            : opts.all
              ? { olderThanMs: 0 }
              : { name: opts.name, olderThanMs: opts.olderThan };
        const result = await withPool(command.optsWithGlobals(), ctx.io, async (pool) =>
          (await deadLetters()).purgeDeadLetters(pool, selector),
        );
        print(ctx.io, opts.json, result, (r) => `purged ${r.purged}`);
      },
    );
}
