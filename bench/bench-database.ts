/**
 * The database side of a benchmark run: the server (DATABASE_URL, else the embedded one), a fresh
 * database per run (dropped afterwards, so runs never see each other's rows or bloat), and what the
 * server spent on it during the run: CPU seconds of its processes (when it runs on this machine) and
 * transactions and row changes from pg_stat_database.
 *
 * States of a BenchDatabase: open -> dropped (drop() is idempotent).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import pg from 'pg';
import { migrate } from '../migrations/migrator.ts';
import { openDatabase, withDatabase, type DatabaseHandle } from '../store/database.ts';

export interface BenchDatabase {
  name: string;
  url: string;
  /** Small pool for the harness itself (inserts, checks); the systems under test open their own. */
  pool: pg.Pool;
  drop(): Promise<void>;
}

/** The server of a run: DATABASE_URL, or the embedded server (started here and stopped by `stop()`). */
export async function openBenchServer(): Promise<DatabaseHandle> {
  const server = await openDatabase();
  if (server.dataDir) console.error(`embedded PostgreSQL at ${server.url} (data in ${server.dataDir})`);
  return server;
}

/** Creates an empty database named after the run; `migrate` applies taskmill's schema. */
export async function createBenchDatabase(
  serverUrl: string,
  label: string,
  options: { migrate?: boolean; poolSize?: number } = {},
): Promise<BenchDatabase> {
  const name = `bench_${label.replace(/[^a-z0-9]+/gi, '_').toLowerCase()}_${randomBytes(3).toString('hex')}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`create database ${pg.escapeIdentifier(name)}`);
  } finally {
    await admin.end();
  }
  const url = withDatabase(serverUrl, name);
  const pool = new pg.Pool({ connectionString: url, max: options.poolSize ?? 4, application_name: 'bench' });
  if (options.migrate ?? true) await migrate(pool);
  let dropped = false;
  return {
    name,
    url,
    pool,
    async drop() {
      if (dropped) return;
      dropped = true;
      await pool.end();
      const c = new pg.Client({ connectionString: serverUrl });
      await c.connect();
      try {
        // Some systems close their pools without waiting (graphile-worker 0.17 drops its error handlers,
        // then ends its pool in the background): terminating those sessions now would crash the harness
        // with an unhandled pool error. Let them go first.
        const deadline = Date.now() + 10_000;
        while (Date.now() < deadline) {
          const { rows } = await c.query<{ n: number }>(
            'select count(*)::int as n from pg_stat_activity where datname = $1',
            [name],
          );
          if (rows[0].n === 0) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        await c.query(`drop database if exists ${pg.escapeIdentifier(name)} with (force)`);
      } finally {
        await c.end();
      }
    },
  };
}

export interface ServerUsage {
  /**
   * CPU seconds of the server processes working for this database in the window: its sessions (and
   * autovacuum workers) plus the server's shared background processes (WAL writer, checkpointer, ...).
   * Null when the server is not on this machine (or /proc is not readable).
   */
  cpuSeconds: number | null;
  transactions: number;
  rowsInserted: number;
  rowsUpdated: number;
  rowsDeleted: number;
}

interface Counters {
  xact: number;
  ins: number;
  upd: number;
  del: number;
}

/**
 * Measures what the server spends on this database between `start()` and `endWindow()` (CPU, read
 * from /proc per server process) and `stop()` (transactions and row changes from pg_stat_database).
 * CPU is sampled per process while the sessions are alive, so call `endWindow()` before the system
 * under test closes its connections. Statistics are published by a busy session at most once a second
 * and by an idle one only after 10 s or when it ends, so call `stop()` after it has closed them.
 */
export class ServerUsageMeter {
  private cpuStart: Map<number, number> | null | undefined;
  private cpuSeconds: number | null | undefined;
  private counters: Counters | undefined;

  constructor(private readonly db: Pick<pg.Pool, 'query'>) {}

  async start(): Promise<void> {
    this.counters = await this.readCounters();
    this.cpuStart = await this.cpuSample();
  }

  /** Ends the CPU window (idempotent). */
  async endWindow(): Promise<void> {
    if (this.cpuSeconds !== undefined) return;
    const end = await this.cpuSample();
    const start = this.cpuStart;
    if (!end || !start) {
      this.cpuSeconds = null;
      return;
    }
    let ticks = 0;
    for (const [pid, t] of end) ticks += t - (start.get(pid) ?? 0);
    this.cpuSeconds = ticks / CLOCK_TICKS;
  }

  async stop(): Promise<ServerUsage> {
    if (!this.counters) throw new Error('ServerUsageMeter.stop() before start()');
    await this.endWindow();
    // Sessions that just ended publish their statistics as they exit.
    await new Promise((r) => setTimeout(r, 250));
    const end = await this.readCounters();
    const a = this.counters;
    return {
      cpuSeconds: this.cpuSeconds ?? null,
      transactions: end.xact - a.xact,
      rowsInserted: end.ins - a.ins,
      rowsUpdated: end.upd - a.upd,
      rowsDeleted: end.del - a.del,
    };
  }

  private async readCounters(): Promise<Counters> {
    await this.db.query('select pg_stat_clear_snapshot()');
    const { rows } = await this.db.query<{ xact: string; ins: string; upd: string; del: string }>(
      `select xact_commit + xact_rollback as xact, tup_inserted as ins, tup_updated as upd,
         tup_deleted as del
       from pg_stat_database where datname = current_database()`,
    );
    const r = rows[0];
    return { xact: Number(r.xact), ins: Number(r.ins), upd: Number(r.upd), del: Number(r.del) };
  }

  /** CPU ticks per server process of this database or of the whole server (background processes). */
  private async cpuSample(): Promise<Map<number, number> | null> {
    const { rows } = await this.db.query<{ pid: number; me: boolean }>(
      `select pid, pid = pg_backend_pid() as me from pg_stat_activity
       where datname = current_database() or datname is null`,
    );
    const ticks = new Map<number, number>();
    for (const { pid, me } of rows) {
      const stat = readStat(pid);
      // Our own backend must be visible, else the server is elsewhere and pids mean nothing here.
      if (!stat) {
        if (me) return null;
        continue;
      }
      ticks.set(pid, stat.utime + stat.stime);
    }
    return ticks;
  }
}

/** Linux USER_HZ: 100 on every mainstream kernel configuration. */
const CLOCK_TICKS = 100;

/** CPU seconds one server process has used so far; null when it is not a PostgreSQL process here. */
export function serverProcessCpuSeconds(pid: number): number | null {
  const stat = readStat(pid);
  return stat ? (stat.utime + stat.stime) / CLOCK_TICKS : null;
}

interface ProcStat {
  comm: string;
  utime: number;
  stime: number;
}

function readStat(pid: number): ProcStat | null {
  const file = `/proc/${pid}/stat`;
  if (!existsSync(file)) return null;
  try {
    const text = readFileSync(file, 'utf8');
    // The command name (field 2) is in parentheses and may contain spaces; fields 14-15 are CPU times.
    const comm = text.slice(text.indexOf('(') + 1, text.lastIndexOf(')'));
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    if (!comm.startsWith('postgres')) return null;
    return { comm, utime: Number(fields[11]), stime: Number(fields[12]) };
  } catch {
    return null;
  }
}

/** Statistics for the planner after a bulk insert: every system gets the same treatment. */
export async function analyze(db: Pick<pg.Pool, 'query'>): Promise<void> {
  await db.query('analyze');
}
