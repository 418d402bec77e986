/**
 * The database side of a benchmark run: the server (DATABASE_URL, else the embedded one), a fresh
 * database per run (dropped afterwards, so runs never see each other's rows or bloat), and what the
 * server spent during the run: CPU seconds of its processes (when it runs on this machine) and
 * transactions and row changes from pg_stat_database.
 *
 * States of a BenchDatabase: open -> dropped (drop() is idempotent).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import pg from 'pg';
import { migrate } from '../migrations/migrator.ts';
import { openDatabase, withDatabase, type DatabaseHandle } from '../runtime/database.ts';

export interface BenchDatabase {
  name: string;
  url: string;
  /** Small pool for the harness itself (inserts, checks); the systems under test open their own. */
  pool: pg.Pool;
  drop(): Promise<void>;
}

/** The server of a run: DATABASE_URL, or the embedded server (started here and stopped by `stop()`). */
export function openBenchServer(): Promise<DatabaseHandle> {
  return openDatabase();
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
  /** CPU seconds of the server's processes; null when the server is not on this machine. */
  cpuSeconds: number | null;
  transactions: number;
  rowsInserted: number;
  rowsUpdated: number;
  rowsDeleted: number;
}

interface UsageSample {
  cpuTicks: number | null;
  xact: number;
  ins: number;
  upd: number;
  del: number;
}

/**
 * Measures what the server spends between `start()` and `stop()`. Transactions count every session of
 * the database (the system under test and the harness's few checks). A busy session publishes its
 * statistics at most once a second and an idle one only after 10 s or when it ends, so call `stop()`
 * after the system under test has closed its connections.
 */
export class ServerUsageMeter {
  private startSample: UsageSample | undefined;
  private postmasterPid: number | null | undefined;

  constructor(private readonly db: Pick<pg.Pool, 'query'>) {}

  async start(): Promise<void> {
    this.postmasterPid ??= await this.findPostmaster();
    this.startSample = await this.sample();
  }

  async stop(): Promise<ServerUsage> {
    if (!this.startSample) throw new Error('ServerUsageMeter.stop() before start()');
    // Sessions that just ended publish their statistics as they exit.
    await new Promise((r) => setTimeout(r, 250));
    const end = await this.sample();
    const a = this.startSample;
    return {
      cpuSeconds:
        end.cpuTicks === null || a.cpuTicks === null ? null : (end.cpuTicks - a.cpuTicks) / CLOCK_TICKS,
      transactions: end.xact - a.xact,
      rowsInserted: end.ins - a.ins,
      rowsUpdated: end.upd - a.upd,
      rowsDeleted: end.del - a.del,
    };
  }

  private async sample(): Promise<UsageSample> {
    await this.db.query('select pg_stat_clear_snapshot()');
    const { rows } = await this.db.query<{ xact: string; ins: string; upd: string; del: string }>(
      `select xact_commit + xact_rollback as xact, tup_inserted as ins, tup_updated as upd,
         tup_deleted as del
       from pg_stat_database where datname = current_database()`,
    );
    const r = rows[0];
    return {
      cpuTicks: this.postmasterPid ? serverCpuTicks(this.postmasterPid) : null,
      xact: Number(r.xact),
      ins: Number(r.ins),
      upd: Number(r.upd),
      del: Number(r.del),
    };
  }

  /** The postmaster is the parent of our backend, when /proc shows it (same machine, Linux). */
  private async findPostmaster(): Promise<number | null> {
    const { rows } = await this.db.query<{ pid: number }>('select pg_backend_pid() as pid');
    const stat = readStat(rows[0].pid);
    return stat ? stat.ppid : null;
  }
}

/** Linux USER_HZ: 100 on every mainstream kernel configuration. */
const CLOCK_TICKS = 100;

interface ProcStat {
  ppid: number;
  utime: number;
  stime: number;
  cutime: number;
  cstime: number;
}

function readStat(pid: number): ProcStat | null {
  const file = `/proc/${pid}/stat`;
  if (!existsSync(file)) return null;
  try {
    const text = readFileSync(file, 'utf8');
    // Fields after the command name (which may contain spaces) start at field 3.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return {
      ppid: Number(fields[1]),
      utime: Number(fields[11]),
      stime: Number(fields[12]),
      cutime: Number(fields[13]),
      cstime: Number(fields[14]),
    };
  } catch {
    return null;
  }
}

/**
 * CPU ticks of a server: the postmaster (with its exited children, reaped into cutime/cstime) plus its
 * live children (backends, walwriter, checkpointer, ...).
 */
function serverCpuTicks(postmaster: number): number | null {
  const main = readStat(postmaster);
  if (!main) return null;
  let ticks = main.utime + main.stime + main.cutime + main.cstime;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (stat && stat.ppid === postmaster) ticks += stat.utime + stat.stime;
  }
  return ticks;
}

/** Statistics for the planner after a bulk insert: every system gets the same treatment. */
export async function analyze(db: Pick<pg.Pool, 'query'>): Promise<void> {
  await db.query('analyze');
}
