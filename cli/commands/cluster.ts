/**
 * `taskmill cluster`: N node processes on this machine against one database (cluster/local-cluster.ts,
 * shipped in the package: it works from an installed package as from a checkout),
 * each one's output lines prefixed with its name, until SIGINT/SIGTERM stops them all (SIGTERM, then
 * SIGKILL after the grace period). With --restart a node process that crashes is started again. A node
 * process that registers no node (a module that is neither a tasks module nor starts a node) stops the
 * cluster with an error and a non-zero exit code.
 */
import path from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { LOCAL_CLUSTER_DEFAULTS } from '../../cluster/local-cluster.ts';
import { dataDirOf, findDatabaseUrl } from '../database-url.ts';
import { EXIT, exitCodeOf, intOption } from '../output.ts';
import type { CommandContext } from '../main.ts';

interface ClusterOptions {
  nodes: number;
  tasks: string;
  restart?: boolean;
  graceMs: number;
  env: Record<string, string>;
  databaseUrl?: string;
}

export function registerClusterCommand(program: Command, ctx: CommandContext): void {
  program
    .command('cluster')
    .description(
      'Run N node processes locally against one database, with prefixed logs; Ctrl-C stops them all',
    )
    .requiredOption('-n, --nodes <n>', 'number of node processes', intOption('--nodes', 1, 256))
    .requiredOption(
      '-t, --tasks <module>',
      'tasks module, as `taskmill node --tasks` takes (defineTask results exported by name, as default or ' +
        'in arrays; optionally `export const nodeOptions`), or a function or script that starts its own ' +
        'node (see cluster/local-cluster.ts)',
    )
    .option('-r, --restart', 'start a node process again when it crashes')
    .option(
      '--grace-ms <ms>',
      'SIGTERM to SIGKILL grace period',
      intOption('--grace-ms'),
      LOCAL_CLUSTER_DEFAULTS.graceMs,
    )
    .option('-e, --env <KEY=VALUE>', 'extra environment for the nodes (repeatable)', keyValue, {})
    .action(async (_opts: ClusterOptions, command: Command) => {
      const opts = command.optsWithGlobals<ClusterOptions>();
      const { io } = ctx;
      const { runLocalCluster } = await import('../../cluster/local-cluster.ts');
      const cluster = await runLocalCluster({
        nodes: opts.nodes,
        module: path.resolve(io.cwd, opts.tasks),
        restart: opts.restart,
        graceMs: opts.graceMs,
        env: opts.env,
        databaseUrl: await findDatabaseUrl(opts, io),
        embedded: { dataDir: dataDirOf(io) },
        onLine: (line, source) => (source.stream === 'stderr' ? io.err : io.out)(`${line}\n`),
      });
      const onAbort = () => void cluster.stop();
      io.signal.addEventListener('abort', onAbort, { once: true });
      await cluster.stopped;
      io.signal.removeEventListener('abort', onAbort);
      // A node process that registered no node: 2 (bad module) or 1; stopped on request: 0; every node
      // exited on its own: 1.
      if (cluster.error) {
        io.err(`taskmill: ${cluster.error.message}\n`);
        ctx.exit(exitCodeOf(cluster.error));
      } else if (!io.signal.aborted) ctx.exit(EXIT.FAILURE);
    });
}

function keyValue(value: string, previous: Record<string, string>): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq < 1) throw new InvalidArgumentError('expected KEY=VALUE');
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}
