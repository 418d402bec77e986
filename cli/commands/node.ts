/**
 * `taskmill node`: runs a node in this process until SIGINT/SIGTERM, then stops it gracefully (running
 * tasks get the shutdown grace period, queued ones are handed back). With --http the node also serves
 * the HTTP API, the dashboard and its own metrics, on the node's own pool (within its connection budget). Without a database configured or running, it starts
 * the embedded server itself and stops it on exit.
 */
import type { Command } from 'commander';
import type { DatabaseHandle } from '../../store/database.ts';
import type { NodeOptions } from '../../node/node.ts';
import type { HttpServer } from '../../http/server.ts';
import { parseAddress } from '../address.ts';
import { dataDirOf, findDatabaseUrl } from '../database-url.ts';
import { intOption } from '../output.ts';
import type { CommandContext } from '../main.ts';

interface NodeCommandOptions {
  tasks: string[];
  name?: string;
  maxParallel?: number;
  threads?: number;
  batchSize?: number;
  planner: boolean;
  http?: string | true;
  token?: string;
  logLevel?: NodeOptions['logLevel'];
  databaseUrl?: string;
  maxConnections?: number;
  listenUrl?: string;
  notifications: boolean;
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export function registerNodeCommand(program: Command, ctx: CommandContext): void {
  program
    .command('node')
    .description('Start a node: run the given tasks and, while it holds the lease, plan for the cluster')
    .requiredOption(
      '-t, --tasks <module...>',
      'modules exporting task definitions (defineTask results, or arrays of them)',
    )
    .option('--name <name>', 'node name shown by status and metrics (default: host-pid)')
    .option(
      '--max-parallel <n>',
      'most tasks running at once on this node (maxParallelTasksInNode)',
      intOption('--max-parallel'),
    )
    .option('--threads <n>', 'worker threads (default: available cores)', intOption('--threads', 1, 256))
    .option(
      '--batch-size <n>',
      'most tasks claimed by one planning pass',
      intOption('--batch-size', 1, 100_000),
    )
    .option('--no-planner', 'never plan; only run tasks')
    .option(
      '--max-connections <n>',
      'connection budget: every connection the node opens, HTTP included (default 10; docs/connections.md)',
      intOption('--max-connections', 1, 10_000),
    )
    .option(
      '--listen-url <url>',
      'server of the LISTEN session when the database URL goes through PgBouncer in transaction mode',
    )
    .option('--no-notifications', 'no LISTEN/NOTIFY: poll for work (a pooler with no direct server)')
    .option('--http [address]', 'also serve the HTTP API, dashboard and metrics (default 127.0.0.1:8080)')
    .option(
      '--token <token>',
      'bearer token of the HTTP API (default TASKMILL_HTTP_TOKEN; required off loopback)',
    )
    .option('--log-level <level>', `one of ${LOG_LEVELS.join(', ')} (default TASKMILL_LOG_LEVEL or info)`)
    .action(async (_opts: NodeCommandOptions, command: Command) => {
      await runNode(ctx, command.optsWithGlobals());
    });
}

async function runNode(ctx: CommandContext, opts: NodeCommandOptions): Promise<void> {
  const { io } = ctx;
  // Loaded here, not at the top: every other command starts faster without the logger, the task
  // definitions (zod), the node and the server.
  const { createLogger } = await import('../../log/logger.ts');
  const { loadTaskModules } = await import('../task-modules.ts');
  const { startEmbeddedPostgres } = await import('../../store/database.ts');
  const log = createLogger(opts.logLevel ?? io.env.TASKMILL_LOG_LEVEL, { component: 'cli' });
  const tasks = await loadTaskModules(opts.tasks, io.cwd);
  const { startNode } = await import('../../node/node.ts');
  const { startHttpServer } = await import('../../http/server.ts');
  let db: DatabaseHandle | undefined;
  let url = await findDatabaseUrl(opts, io);
  if (!url) {
    db = await startEmbeddedPostgres({ dataDir: dataDirOf(io) });
    url = db.url;
    log.info({ url, dataDir: db.dataDir }, 'embedded PostgreSQL server for this node');
  }
  let http: HttpServer | undefined;
  try {
    const node = await startNode({
      connectionString: url,
      tasks,
      name: opts.name,
      maxParallelTasksInNode: opts.maxParallel,
      threads: opts.threads,
      maxConnections: opts.maxConnections,
      listenUrl: opts.listenUrl,
      notifications: opts.notifications,
      planner: opts.planner ? (opts.batchSize ? { batchSize: opts.batchSize } : undefined) : false,
      logLevel: opts.logLevel ?? (io.env.TASKMILL_LOG_LEVEL as NodeOptions['logLevel']),
    });
    try {
      if (opts.http !== undefined) {
        const { host, port } = parseAddress(opts.http);
        // The API shares the node's pool: its connections are within the node's budget.
        http = await startHttpServer({
          host,
          port,
          token: opts.token ?? (io.env.TASKMILL_HTTP_TOKEN || undefined),
          node,
          log,
        });
      }
      await aborted(io.signal);
      log.info({ signal: String(io.signal.reason) }, 'stopping');
    } finally {
      await http?.close();
      await node.stop();
    }
  } finally {
    await db?.stop();
  }
}

export function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}
