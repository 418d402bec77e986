/**
 * `taskmill db start|stop|status`: the embedded PostgreSQL server (store/database.ts) as a
 * background service, like pg_ctl. `db start` launches a detached supervisor process (`db run`, which
 * owns the server and stops it on SIGTERM), waits until the server accepts connections, prints its URL
 * and returns; later commands find the server through its data folder. The supervisor's pid and log
 * sit next to the data folder (`<data-dir>.pid`, `<data-dir>.log`).
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import {
  DEFAULT_EMBEDDED_PORT,
  embeddedUrl,
  assertEmbeddedPostgresInstalled,
  runningEmbeddedPort,
  startEmbeddedPostgres,
} from '../../store/database.ts';
import { dataDirOf } from '../database-url.ts';
import { CliError, EXIT, intOption, print, type CliIo } from '../output.ts';
import type { CommandContext } from '../main.ts';

const CLI_ENTRY = fileURLToPath(new URL('../taskmill.mjs', import.meta.url));
const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 60_000;

interface DbOptions {
  dataDir?: string;
  port?: number;
  json?: boolean;
}

export function registerDbCommands(program: Command, ctx: CommandContext): void {
  const db = program
    .command('db')
    .description('Manage the embedded PostgreSQL server (used when DATABASE_URL is not set)');
  const dataDirOption = [
    '--data-dir <dir>',
    'data folder (default: TASKMILL_DATA_DIR, else .taskmill/pg under the current directory)',
  ] as const;

  db.command('start')
    .description('Start the embedded server in the background and print its URL')
    .option(...dataDirOption)
    .option(
      '--port <port>',
      `TCP port on 127.0.0.1, 0 for any free one (default ${DEFAULT_EMBEDDED_PORT}, or a free one when taken)`,
      intOption('--port', 0, 65535),
    )
    .option('--json', 'print JSON')
    .action((opts: DbOptions) => start(ctx.io, opts));

  db.command('stop')
    .description('Stop the embedded server (fast shutdown: open sessions are closed)')
    .option(...dataDirOption)
    .option('--json', 'print JSON')
    .action((opts: DbOptions) => stop(ctx.io, opts));

  db.command('status')
    .description('Show whether the embedded server runs, and its URL (exit code 3 when stopped)')
    .option(...dataDirOption)
    .option('--json', 'print JSON')
    .action(async (opts: DbOptions) => ctx.exit(await status(ctx.io, opts)));

  db.command('run', { hidden: true })
    .description('Run the embedded server in the foreground until SIGINT/SIGTERM (what `db start` launches)')
    .option(...dataDirOption)
    .option('--port <port>', 'TCP port', intOption('--port', 0, 65535))
    .action((opts: DbOptions) => run(ctx.io, opts));
}

function files(dataDir: string) {
  return { pid: `${dataDir}.pid`, log: `${dataDir}.log` };
}

async function start(io: CliIo, opts: DbOptions): Promise<void> {
  const dataDir = dataDirOf(io, opts.dataDir);
  const running = await runningEmbeddedPort(dataDir);
  if (running !== undefined) {
    const info = { status: 'running', url: embeddedUrl(running), dataDir, started: false };
    print(io, opts.json, info, (i) => `already running: ${i.url}`);
    return;
  }
  // Fails now, with what to install, rather than in the background process.
  await assertEmbeddedPostgresInstalled().catch((error: Error) => {
    throw new CliError(EXIT.UNAVAILABLE, error.message);
  });
  const { log, pid } = files(dataDir);
  mkdirSync(path.dirname(dataDir), { recursive: true });
  const logFd = openSync(log, 'a');
  const args = [CLI_ENTRY, 'db', 'run', '--data-dir', dataDir];
  if (opts.port !== undefined) args.push('--port', String(opts.port));
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: ['ignore', logFd, logFd],
    env: io.env,
    cwd: io.cwd,
  });
  closeSync(logFd);
  let exit: number | null | undefined;
  child.once('exit', (code) => (exit = code));
  child.unref();
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    const port = await runningEmbeddedPort(dataDir);
    if (port !== undefined) {
      const info = { status: 'running', url: embeddedUrl(port), dataDir, pid: child.pid, log, started: true };
      print(
        io,
        opts.json,
        info,
        (i) => `started: ${i.url}\n(data ${i.dataDir}, log ${i.log}; stop with \`taskmill db stop\`)`,
      );
      return;
    }
    if (exit !== undefined) {
      throw new CliError(
        EXIT.FAILURE,
        `The database server did not start (exit code ${exit}); its log ${log} ends with:\n${tail(log)}`,
      );
    }
    if (Date.now() > deadline) {
      if (child.pid) process.kill(child.pid, 'SIGTERM');
      rmSync(pid, { force: true });
      throw new CliError(
        EXIT.FAILURE,
        `The database server did not accept connections within ${START_TIMEOUT_MS / 1000} s; see ${log}.`,
      );
    }
    await sleep(200);
  }
}

async function stop(io: CliIo, opts: DbOptions): Promise<void> {
  const dataDir = dataDirOf(io, opts.dataDir);
  const supervisor = alivePid(files(dataDir).pid);
  const postmaster = alivePid(path.join(dataDir, 'postmaster.pid'));
  if (supervisor === undefined && postmaster === undefined) {
    print(io, opts.json, { status: 'stopped', dataDir, stopped: false }, () => 'not running');
    return;
  }
  // The supervisor stops the server and exits; a server started some other way gets pg_ctl's fast shutdown.
  if (supervisor !== undefined) process.kill(supervisor, 'SIGTERM');
  else if (postmaster !== undefined) process.kill(postmaster, 'SIGINT');
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while ([supervisor, postmaster].some((p) => p !== undefined && isAlive(p))) {
    if (Date.now() > deadline)
      throw new CliError(
        EXIT.FAILURE,
        `The database server did not stop within ${STOP_TIMEOUT_MS / 1000} s.`,
      );
    await sleep(100);
  }
  rmSync(files(dataDir).pid, { force: true });
  print(io, opts.json, { status: 'stopped', dataDir, stopped: true }, () => 'stopped');
}

async function status(io: CliIo, opts: DbOptions): Promise<number> {
  const dataDir = dataDirOf(io, opts.dataDir);
  const port = await runningEmbeddedPort(dataDir);
  const info = {
    status: port === undefined ? 'stopped' : 'running',
    url: port === undefined ? null : embeddedUrl(port),
    dataDir,
    pid: port === undefined ? null : (alivePid(path.join(dataDir, 'postmaster.pid')) ?? null),
    log: files(dataDir).log,
    databaseUrlSet: Boolean(io.env.DATABASE_URL),
  };
  print(io, opts.json, info, (i) =>
    [
      i.url ? `running: ${i.url} (pid ${i.pid})` : 'stopped',
      `data: ${i.dataDir}`,
      ...(i.databaseUrlSet ? ['DATABASE_URL is set: other commands use it, not this server'] : []),
    ].join('\n'),
  );
  return port === undefined ? EXIT.NOT_FOUND : EXIT.OK;
}

async function run(io: CliIo, opts: DbOptions): Promise<void> {
  const dataDir = dataDirOf(io, opts.dataDir);
  const handle = await startEmbeddedPostgres({ dataDir, port: opts.port, onLog: (line) => io.err(line) });
  if (!handle.owner)
    throw new CliError(EXIT.CONFLICT, `A server already runs from ${dataDir}: ${handle.url}`);
  const { pid } = files(dataDir);
  writeFileSync(pid, `${process.pid}\n`);
  io.out(`embedded PostgreSQL ready at ${handle.url}\n`);
  const postmaster = alivePid(path.join(dataDir, 'postmaster.pid'));
  try {
    // Until asked to stop, or until the server died on its own.
    while (!io.signal.aborted && (postmaster === undefined || isAlive(postmaster))) {
      await sleep(500, io.signal);
    }
  } finally {
    await handle.stop();
    rmSync(pid, { force: true });
  }
  if (!io.signal.aborted) throw new CliError(EXIT.FAILURE, 'the PostgreSQL server exited on its own');
}

/** The pid in the first line of `file` when that process is alive. */
function alivePid(file: string): number | undefined {
  if (!existsSync(file)) return undefined;
  const pid = Number(readFileSync(file, 'utf8').split('\n')[0]);
  return pid > 0 && isAlive(pid) ? pid : undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as { code?: string }).code === 'EPERM';
  }
}

function tail(file: string, lines = 15): string {
  return existsSync(file)
    ? readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
    : '(no log)';
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
