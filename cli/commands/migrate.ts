/** `taskmill migrate up|status`: the numbered SQL migrations of migrations/. */
import type { Command } from 'commander';
import { withPool } from '../database-url.ts';
import { EXIT, print, table } from '../output.ts';
import type { CommandContext } from '../main.ts';

export function registerMigrateCommands(program: Command, ctx: CommandContext): void {
  const cmd = program.command('migrate').description('Create or upgrade the taskmill schema');

  cmd
    .command('up')
    .description('Apply pending migrations (safe while nodes run or start)')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const { migrate } = await import('../../migrations/migrator.ts');
      const applied = await withPool(command.optsWithGlobals(), ctx.io, (pool) => migrate(pool));
      print(ctx.io, opts.json, { applied }, (r) =>
        r.applied.length
          ? `applied ${r.applied.map((v) => String(v).padStart(3, '0')).join(', ')}`
          : 'up to date',
      );
    });

  cmd
    .command('status')
    .description('List applied and pending migrations (exit code 5 when some are pending)')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const { migrationStatus } = await import('../../migrations/migrator.ts');
      const status = await withPool(command.optsWithGlobals(), ctx.io, (pool) => migrationStatus(pool));
      const data = {
        applied: status.applied,
        pending: status.pending.map((m) => m.name),
        latestKnown: status.latestKnown,
      };
      print(ctx.io, opts.json, data, (d) =>
        table(
          ['migration', 'state'],
          [
            ...d.applied.map((v) => [String(v).padStart(3, '0'), 'applied']),
            ...d.pending.map((name) => [name, 'pending']),
          ],
        ),
      );
      if (data.pending.length > 0) ctx.exit(EXIT.UNAVAILABLE);
    });
}
