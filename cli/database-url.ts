/**
 * Which database a command talks to: `--database-url`, else DATABASE_URL, else the embedded server
 * started by `taskmill db start` (found through its data folder: TASKMILL_DATA_DIR, else `.taskmill/pg`
 * under the current directory).
 */
import path from 'node:path';
import type pg from 'pg';
import { defaultEmbeddedDir, embeddedUrl, runningEmbeddedPort } from '../store/database.ts';
import { CliError, EXIT, type CliIo } from './output.ts';

export interface DatabaseOptions {
  databaseUrl?: string;
}

export function dataDirOf(io: CliIo, option?: string): string {
  return option ? path.resolve(io.cwd, option) : defaultEmbeddedDir(io.env, io.cwd);
}

/** The URL to use, or undefined when nothing is configured or running. */
export async function findDatabaseUrl(opts: DatabaseOptions, io: CliIo): Promise<string | undefined> {
  const url = opts.databaseUrl ?? io.env.DATABASE_URL;
  if (url) return url;
  const port = await runningEmbeddedPort(dataDirOf(io));
  return port === undefined ? undefined : embeddedUrl(port);
}

export async function databaseUrl(opts: DatabaseOptions, io: CliIo): Promise<string> {
  const url = await findDatabaseUrl(opts, io);
  if (!url) {
    throw new CliError(
      EXIT.UNAVAILABLE,
      'No database: set DATABASE_URL, pass --database-url, or start the embedded server with `taskmill db start`.',
    );
  }
  return url;
}

/** Runs `fn` with a small pool on the command's database, closed afterwards. */
export async function withPool<T>(
  opts: DatabaseOptions,
  io: CliIo,
  fn: (pool: pg.Pool) => Promise<T>,
): Promise<T> {
  const { default: pg } = await import('pg');
  const pool = new pg.Pool({
    connectionString: await databaseUrl(opts, io),
    max: 4,
    application_name: 'taskmill-cli',
  });
  pool.on('error', () => {});
  try {
    return await fn(pool);
  } catch (error) {
    if ((error as { code?: string }).code === 'ECONNREFUSED') {
      throw new CliError(EXIT.FAILURE, `Cannot reach the database: ${(error as Error).message}.`);
    }
    throw error;
  } finally {
    await pool.end();
  }
}
