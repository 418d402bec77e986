/**
 * Helpers of the database outage tests: a scheduling-only child process, log-line collection from
 * child processes, and `terminateBackends` (pg_terminate_backend of every other session of a database).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { onLines } from '../../cluster/node-process.ts';

const CLIENT_SCRIPT = fileURLToPath(new URL('./fixtures/client-process.ts', import.meta.url));
const TSX = import.meta.resolve('tsx');

export interface LogLine {
  at: number;
  level: number;
  msg: string;
  raw: string;
}

/** Collects the pino JSON lines a child process writes to stdout. */
export function collectLog(stream: NodeJS.ReadableStream): LogLine[] {
  const lines: LogLine[] = [];
  onLines(stream, (raw) => {
    if (!raw.startsWith('{')) return;
    try {
      const parsed = JSON.parse(raw) as { level?: number; msg?: string };
      if (typeof parsed.level === 'number') {
        lines.push({ at: Date.now(), level: parsed.level, msg: parsed.msg ?? '', raw });
      }
    } catch {
      // Not a log line.
    }
  });
  return lines;
}

export interface ClientProcess {
  process: ChildProcess;
  log: LogLine[];
  schedule(name: string, n: number): Promise<{ ids?: string[]; error?: string }>;
  alive(): boolean;
  stop(): Promise<void>;
}

/** Starts test/chaos/fixtures/client-process.ts against `url`. */
export async function spawnClientProcess(url: string): Promise<ClientProcess> {
  const child = spawn(process.execPath, ['--import', TSX, CLIENT_SCRIPT], {
    env: { ...process.env, DATABASE_URL: url, TASKMILL_LOG_LEVEL: 'info' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  process.once('exit', () => child.kill('SIGKILL'));
  const replies: ((reply: { ids?: string[]; error?: string }) => void)[] = [];
  let onReady: (() => void) | undefined;
  const stderr: string[] = [];
  onLines(child.stderr!, (line) => stderr.push(line));
  onLines(child.stdout!, (line) => {
    if (line.startsWith('{"ready"')) onReady?.();
    if (line.startsWith('{"reply"')) replies.shift()?.((JSON.parse(line) as { reply: never }).reply);
  });
  const log = collectLog(child.stdout!);
  await new Promise<void>((resolve, reject) => {
    onReady = resolve;
    void exited.then(() => reject(new Error(`client process exited before ready: ${stderr.join('\n')}`)));
  });
  const alive = () => child.exitCode === null && child.signalCode === null;
  return {
    process: child,
    log,
    alive,
    schedule(name, n) {
      return new Promise((resolve, reject) => {
        if (!alive()) return reject(new Error(`client process is gone: ${stderr.join('\n')}`));
        replies.push(resolve);
        child.stdin!.write(`schedule ${name} ${n}\n`);
      });
    },
    async stop() {
      if (alive()) child.stdin!.end();
      await exited;
    },
  };
}

/**
 * Terminates every session of `database` except the caller's own, or only those of `application` when
 * given; returns the application names of the sessions terminated.
 */
export async function terminateBackends(
  admin: pg.Pool,
  database: string,
  application?: string,
): Promise<string[]> {
  const { rows } = await admin.query<{ application_name: string }>(
    // Materialized first: quals of one WHERE may run in any order, and pg_terminate_backend must only
    // ever see the chosen sessions.
    `with victims as materialized (
       select pid, application_name from pg_stat_activity
       where datname = $1 and pid <> pg_backend_pid() and ($2::text is null or application_name = $2))
     select application_name from victims where pg_terminate_backend(pid)`,
    [database, application ?? null],
  );
  return rows.map((r) => r.application_name);
}

/** Application names of the sessions open on `database` now. */
export async function sessions(admin: pg.Pool, database: string): Promise<string[]> {
  const { rows } = await admin.query<{ application_name: string }>(
    `select application_name from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()`,
    [database],
  );
  return rows.map((r) => r.application_name);
}
