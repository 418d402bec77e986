/** `taskmill event send <name> <key>`: sends an event to the tasks waiting for it (docs/durable-waits.md). */
import type { Command } from 'commander';
import { withPool } from '../database-url.ts';
import { CliError, EXIT, print } from '../output.ts';
import type { CommandContext } from '../main.ts';

export function registerEventCommands(program: Command, ctx: CommandContext): void {
  const cmd = program.command('event').description('Send events to tasks waiting in ctx.waitForEvent()');
  cmd
    .command('send')
    .description(
      'Send an event: every task waiting for (name, key) gets the payload; prints how many it woke',
    )
    .argument('<name>', 'event name')
    .argument('<key>', "which occurrence (the waiters' key)")
    .option('-p, --payload <json>', 'payload as JSON (default: null)')
    .option('--json', 'print JSON')
    .action(
      async (name: string, key: string, opts: { payload?: string; json?: boolean }, command: Command) => {
        let payload: unknown = null;
        if (opts.payload !== undefined) {
          try {
            payload = JSON.parse(opts.payload);
          } catch (error) {
            throw new CliError(EXIT.USAGE, `--payload must be JSON: ${(error as Error).message}`);
          }
        }
        const { TaskmillClient } = await import('../../client/client.ts');
        const woken = await withPool(command.optsWithGlobals(), ctx.io, (pool) =>
          new TaskmillClient({ pool }).sendEvent(name, key, payload),
        );
        print(ctx.io, opts.json, { woken }, () => `woke ${woken} task${woken === 1 ? '' : 's'}`);
      },
    );
}
