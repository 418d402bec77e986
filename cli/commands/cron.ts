/** `taskmill cron list|remove`: the crons the planner leader runs (store/crons.ts). */
import type { Command } from 'commander';
import { withPool } from '../database-url.ts';
import { print, table } from '../output.ts';
import type { CommandContext } from '../main.ts';

/** Loaded on use, so that other commands start without it. */
const cronTable = () => import('../../store/crons.ts');

export function registerCronCommands(program: Command, ctx: CommandContext): void {
  const cmd = program.command('cron').description('List crons, or remove one whose definition is gone');

  cmd
    .command('list')
    .description('List crons: slots, last instance (waiting, started, ended) and live nodes running each')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const crons = await withPool(command.optsWithGlobals(), ctx.io, async (pool) =>
        (await cronTable()).listCrons(pool),
      );
      print(ctx.io, opts.json, { crons }, (d) =>
        d.crons.length === 0
          ? '(no cron)'
          : table(
              [
                'name',
                'expression',
                'timezone',
                'missed',
                'last slot',
                'next slot',
                'last instance',
                'nodes',
              ],
              d.crons.map((c) => [
                c.name,
                c.expression,
                c.timezone,
                c.missed,
                c.lastSlot.toISOString(),
                c.nextSlot?.toISOString() ?? '-',
                c.lastTaskId ? `${c.lastTaskState} ${c.lastTaskId}` : '-',
                c.nodes,
              ]),
            ),
      );
    });

  cmd
    .command('remove')
    .description(
      'Remove a cron: no more instances are created; instances already created stay (exit code 3 if unknown)',
    )
    .argument('<name>', 'task name of the cron')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { json?: boolean }, command: Command) => {
      const removed = await withPool(command.optsWithGlobals(), ctx.io, async (pool) =>
        (await cronTable()).removeCron(pool, name),
      );
      print(ctx.io, opts.json, removed, (r) =>
        [
          `removed cron ${r.name}`,
          ...(r.lastTaskState === 'waiting'
            ? [`its last instance ${r.lastTaskId} still waits: taskmill task cancel ${r.lastTaskId}`]
            : []),
        ].join('\n'),
      );
    });
}
