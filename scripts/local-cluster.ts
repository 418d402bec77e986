/**
 * Local cluster from a checkout: N taskmill node processes on this machine, one database
 * (cluster/local-cluster.ts, which `taskmill cluster` runs too; its header describes the node
 * module's shapes, the database and the states).
 *
 *   tsx scripts/local-cluster.ts --nodes 3 --module ./my-node.ts [--restart] [--grace-ms 15000]
 *
 * Runs until Ctrl-C / SIGTERM; exit code 0 when stopped on request, 2 when a node process registered
 * no node, 1 when every node died.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError } from 'commander';
import { LOCAL_CLUSTER_DEFAULTS, runLocalCluster } from '../cluster/local-cluster.ts';
import { TaskmillError } from '../task/errors.ts';

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function keyValue(value: string, previous: Record<string, string>): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq < 1) throw new InvalidArgumentError('expected KEY=VALUE');
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65_535)
    throw new InvalidArgumentError('expected a port, 0 for any');
  return n;
}

/** CLI entry: runs until Ctrl-C / SIGTERM; exit code 0 when stopped on request, 1 when every node died. */
export async function main(argv = process.argv): Promise<void> {
  const program = new Command()
    .name('local-cluster')
    .description('Run N taskmill node processes locally against one database.')
    .requiredOption('-n, --nodes <n>', 'number of node processes', positiveInt)
    .requiredOption('-m, --module <path>', 'node module: task definitions, a start function, or a script')
    .option('-r, --restart', 'restart a node process that crashed', false)
    .option('--grace-ms <ms>', 'SIGTERM to SIGKILL grace period', positiveInt, LOCAL_CLUSTER_DEFAULTS.graceMs)
    .option('-e, --env <KEY=VALUE>', 'extra environment for the nodes (repeatable)', keyValue, {})
    .option('--pg-dir <dir>', 'data folder of the embedded PostgreSQL (without DATABASE_URL)')
    .option('--pg-port <port>', 'port of the embedded PostgreSQL, 0 for any free one', port)
    .parse(argv);
  const o = program.opts<{
    nodes: number;
    module: string;
    restart: boolean;
    graceMs: number;
    env: Record<string, string>;
    pgDir?: string;
    pgPort?: number;
  }>();
  const started = runLocalCluster({
    nodes: o.nodes,
    module: o.module,
    restart: o.restart,
    graceMs: o.graceMs,
    env: o.env,
    embedded: { dataDir: o.pgDir && path.resolve(o.pgDir), port: o.pgPort },
  });
  // Listening from before the start completes, so a Ctrl-C during it stops whatever has started.
  let requested = false;
  const onSignal = () => {
    requested = true;
    // A start that fails is reported by the await below.
    started.then((cluster) => cluster.stop()).catch(() => {});
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const cluster = await started;
  await cluster.stopped;
  if (cluster.error) process.stderr.write(`local-cluster: ${cluster.error.message}\n`);
  process.exitCode = cluster.error ? (cluster.error instanceof TaskmillError ? 2 : 1) : requested ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((error: unknown) => {
    process.stderr.write(`local-cluster: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
