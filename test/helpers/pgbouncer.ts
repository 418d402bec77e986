/**
 * A PgBouncer in transaction mode in front of the test server, for the tests that run the runtime
 * through it (docs/connections.md). Debian's `pgbouncer` is installed with apt-get when
 * /usr/sbin/pgbouncer is missing (as .ci/run installs postgresql-15). Each call starts its own process
 * on a free loopback port with its configuration in a temporary folder: every database of the server
 * is reachable through it by name, with the server URL's user and password (SCRAM between the client
 * and PgBouncer, whatever the server asks of PgBouncer). Run as root, PgBouncer (which refuses root)
 * runs as the system user `postgres`.
 *
 * States: started -> stopped (stop() is idempotent; it removes the folder).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { freePort } from '../../store/database.ts';

const PGBOUNCER = '/usr/sbin/pgbouncer';
/** Startup parameters pg clients may send that PgBouncer does not know (it refuses unknown ones). */
export const IGNORED_STARTUP_PARAMETERS = [
  'extra_float_digits',
  'options',
  'statement_timeout',
  'idle_in_transaction_session_timeout',
  'lock_timeout',
];

export interface PgBouncer {
  /** `serverUrl` with PgBouncer's host and port: the same user, password and database. */
  url: string;
  /** Its log so far (for a failed test's message). */
  log(): string;
  stop(): Promise<void>;
}

function ensureInstalled(): void {
  if (existsSync(PGBOUNCER)) return;
  const run = (args: string[]) => {
    const result = spawnSync('apt-get', args, {
      stdio: 'inherit',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    if (result.status !== 0) throw new Error(`apt-get ${args.join(' ')} failed (${result.status})`);
  };
  run(['update', '-qq']);
  // The package's own service is not started in a container without systemd; ours is started below.
  run(['install', '-y', '-qq', '--no-install-recommends', 'pgbouncer']);
  if (!existsSync(PGBOUNCER)) throw new Error(`apt-get installed pgbouncer, but ${PGBOUNCER} is missing`);
}

/** Starts a PgBouncer in transaction mode in front of the server of `serverUrl`. */
export async function startPgBouncer(
  serverUrl: string,
  options: { poolSize?: number } = {},
): Promise<PgBouncer> {
  ensureInstalled();
  const server = new URL(serverUrl);
  const user = decodeURIComponent(server.username);
  const password = decodeURIComponent(server.password);
  const dir = mkdtempSync(path.join(tmpdir(), 'taskmill-pgbouncer-'));
  const port = await freePort();
  const quote = (s: string) => `"${s.replace(/"/g, '""')}"`;
  writeFileSync(path.join(dir, 'userlist.txt'), `${quote(user)} ${quote(password)}\n`);
  writeFileSync(
    path.join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `* = host=${server.hostname} port=${server.port || 5432}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${path.join(dir, 'userlist.txt')}`,
      'pool_mode = transaction',
      `default_pool_size = ${options.poolSize ?? 20}`,
      'max_client_conn = 1000',
      `ignore_startup_parameters = ${IGNORED_STARTUP_PARAMETERS.join(',')}`,
      `logfile = ${path.join(dir, 'pgbouncer.log')}`,
      `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
      'log_connections = 0',
      'log_disconnections = 0',
      '',
    ].join('\n'),
  );
  const root = process.getuid?.() === 0;
  if (root) {
    const { uid, gid } = systemUser('postgres');
    for (const file of ['', 'userlist.txt', 'pgbouncer.ini']) chownSync(path.join(dir, file), uid, gid);
  }
  chmodSync(path.join(dir, 'userlist.txt'), 0o600);
  const child: ChildProcess = spawn(
    PGBOUNCER,
    [...(root ? ['-u', 'postgres'] : []), path.join(dir, 'pgbouncer.ini')],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const log = () => {
    const file = path.join(dir, 'pgbouncer.log');
    return stderr + (existsSync(file) ? readFileSync(file, 'utf8') : '');
  };
  const url = new URL(serverUrl);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGINT');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  // Ready once a query goes through (its first server connection is opened on that query).
  const deadline = Date.now() + 30_000;
  for (;;) {
    const client = new pg.Client({ connectionString: url.toString(), connectionTimeoutMillis: 2_000 });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('select 1');
      await client.end();
      break;
    } catch (error) {
      await client.end().catch(() => {});
      if (child.exitCode !== null || Date.now() > deadline) {
        const text = log();
        await stop();
        throw new Error(`pgbouncer did not start: ${String(error)}\n${text}`, { cause: error });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { url: url.toString(), log, stop };
}

function systemUser(name: string): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`no system user ${name} to run pgbouncer as (it refuses to run as root)`);
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}
