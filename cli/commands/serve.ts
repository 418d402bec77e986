/** `taskmill serve`: the HTTP API, dashboard and cluster metrics without a node, until SIGINT/SIGTERM. */
import type { Command } from 'commander';
import { parseAddress } from '../address.ts';
import { databaseUrl } from '../database-url.ts';
import type { CommandContext } from '../main.ts';
import { aborted, LOG_LEVELS } from './node.ts';

export function registerServeCommand(program: Command, ctx: CommandContext): void {
  program
    .command('serve')
    .description('Serve the HTTP API, the dashboard and cluster metrics')
    .argument('[address]', 'host:port to bind (default 127.0.0.1:8080)')
    .option('--token <token>', 'bearer token (default TASKMILL_HTTP_TOKEN; required off loopback)')
    .option('--log-level <level>', `one of ${LOG_LEVELS.join(', ')}`)
    .action(async (address: string | undefined, _opts, command: Command) => {
      const opts = command.optsWithGlobals<{ token?: string; logLevel?: string; databaseUrl?: string }>();
      const { host, port } = parseAddress(address);
      const { startHttpServer } = await import('../../http/server.ts');
      const { createLogger } = await import('../../log/logger.ts');
      const log = createLogger(opts.logLevel ?? ctx.io.env.TASKMILL_LOG_LEVEL, { component: 'http' });
      const server = await startHttpServer({
        connectionString: await databaseUrl(opts, ctx.io),
        host,
        port,
        token: opts.token ?? (ctx.io.env.TASKMILL_HTTP_TOKEN || undefined),
        log,
      });
      ctx.io.out(`serving ${server.url}\n`);
      try {
        await aborted(ctx.io.signal);
      } finally {
        await server.close();
      }
    });
}
