/**
 * Applies the numbered plain-SQL files of this folder (`NNN_name.sql`) in order, each in its own
 * transaction. Safe when several nodes start at once: every migration takes a transaction-scoped
 * advisory lock, then records its version row before running, so a second node waits and then sees
 * the version as done. A database whose schema is newer than this code knows is refused.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import { TaskmillError } from '../task/errors.ts';

const MIGRATIONS_DIR = import.meta.dirname;
/** Arbitrary constant shared by every taskmill process: the advisory lock key of migrations. */
const MIGRATION_LOCK_KEY = 7_300_416_001;

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export function knownMigrations(): Migration[] {
  return readdirSync(MIGRATIONS_DIR)
    .filter((file) => /^\d{3}_.+\.sql$/.test(file))
    .sort()
    .map((file) => ({
      version: Number(file.slice(0, 3)),
      name: file.replace(/\.sql$/, ''),
      sql: readFileSync(path.join(MIGRATIONS_DIR, file), 'utf8'),
    }));
}

export const LATEST_VERSION = Math.max(...knownMigrations().map((m) => m.version));

export interface MigrationStatus {
  applied: number[];
  pending: Migration[];
  latestKnown: number;
}

type Queryable = Pick<pg.Pool, 'query' | 'connect'>;

export async function migrationStatus(db: Queryable): Promise<MigrationStatus> {
  const { rows } = await db
    .query<{ version: number }>(`select version from taskmill_migrations order by version`)
    .catch((error: { code?: string }) => {
      if (error.code === '42P01') return { rows: [] as { version: number }[] };
      throw error;
    });
  const applied = rows.map((r) => r.version);
  return {
    applied,
    pending: knownMigrations().filter((m) => !applied.includes(m.version)),
    latestKnown: LATEST_VERSION,
  };
}

/** Applies pending migrations; returns the versions this call applied. */
export async function migrate(db: Queryable): Promise<number[]> {
  const applied: number[] = [];
  const client = await db.connect();
  try {
    await client.query('begin');
    await client.query('select pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY]);
    await client.query(`create table if not exists taskmill_migrations (
      version integer primary key,
      name text not null,
      applied_at timestamptz not null default now())`);
    await client.query('commit');

    for (const migration of knownMigrations()) {
      await client.query('begin');
      try {
        await client.query('select pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY]);
        const inserted = await client.query(
          `insert into taskmill_migrations (version, name) values ($1, $2) on conflict do nothing`,
          [migration.version, migration.name],
        );
        if (inserted.rowCount === 1) {
          await client.query(migration.sql);
          applied.push(migration.version);
        }
        await client.query('commit');
      } catch (error) {
        await client.query('rollback');
        throw new TaskmillError(
          'MIGRATION_FAILED',
          `Migration ${migration.name} failed: ${(error as Error).message}`,
          {
            cause: error,
          },
        );
      }
    }
  } finally {
    client.release();
  }
  await assertSchemaKnown(db);
  return applied;
}

/** Refuses a database migrated by a newer taskmill, and one not migrated at all. */
export async function assertSchemaKnown(db: Queryable): Promise<void> {
  const { applied } = await migrationStatus(db);
  const newest = Math.max(0, ...applied);
  if (newest > LATEST_VERSION) {
    throw new TaskmillError(
      'SCHEMA_TOO_NEW',
      `The database schema is at version ${newest}, newer than this taskmill knows (${LATEST_VERSION}). ` +
        'Upgrade taskmill on this node before starting it.',
    );
  }
  if (newest < LATEST_VERSION) {
    throw new TaskmillError(
      'NOT_MIGRATED',
      `The database schema is at version ${newest}, this taskmill needs ${LATEST_VERSION}: run \`taskmill migrate up\`.`,
    );
  }
}
