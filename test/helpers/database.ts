/**
 * A fresh migrated database per test file, cloned from the template made by global-setup.
 *
 * `useTestDatabase()` is what a test file calls: it creates the file's database before its tests and
 * drops it after them, unless a test of the file failed: then the database is kept for inspection and
 * its name printed (global-setup keeps the embedded server's data folder too, and says where).
 * `db.another()` makes more databases (unmigrated ones, one per test) under the same rule.
 */
import { randomBytes } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, inject } from 'vitest';
import type { RunnerTask } from 'vitest';
import { ConnectionClient } from '../../store/connections.ts';
import { withDatabase } from '../../store/database.ts';

export interface TestDatabase {
  url: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

export interface TestDatabaseOptions {
  /** Clone the migrated template (default) or start from an empty database. */
  migrated?: boolean;
}

export interface FileDatabase extends Omit<TestDatabase, 'drop'> {
  /** The database's name. */
  readonly name: string;
  /** Another database for this file, dropped (or kept) with the file's. */
  another(options?: TestDatabaseOptions): Promise<TestDatabase & { name: string }>;
}

/**
 * The test file's database, created in beforeAll: read `url` and `pool` from tests and hooks, not at
 * the top level of the file. Call it at the top of the file, before other hooks, so its afterAll runs
 * after theirs (vitest runs after-hooks in reverse order).
 */
export function useTestDatabase(options: TestDatabaseOptions = {}): FileDatabase {
  const made: (TestDatabase & { name: string })[] = [];
  let main: (TestDatabase & { name: string }) | undefined;
  const current = () => {
    if (!main) throw new Error('the test database exists from beforeAll on: read it in a test or a hook');
    return main;
  };
  const another = async (o: TestDatabaseOptions = {}) => {
    const db = await createTestDatabase(o);
    made.push(db);
    return db;
  };
  beforeAll(async () => {
    main = await another(options);
  });
  // vitest reads a hook's first parameter as the fixtures it wants: it must be a destructuring pattern.
  // eslint-disable-next-line no-empty-pattern
  afterAll(async ({}, suite) => {
    if (failedIn(suite.tasks)) {
      await Promise.all(made.map((db) => (db.pool.ending ? undefined : db.pool.end())));
      const names = made.map((db) => db.name);
      const list = inject('keptDatabasesFile');
      if (list) appendFileSync(list, names.map((n) => `${n}\n`).join(''));
      console.warn(
        `a test of this file failed: kept database(s) ${names.join(', ')} (server ${serverLabel()})`,
      );
    } else {
      await Promise.all(made.map((db) => db.drop()));
    }
  });
  return {
    get url() {
      return current().url;
    },
    get pool() {
      return current().pool;
    },
    get name() {
      return current().name;
    },
    another,
  };
}

function failedIn(tasks: readonly RunnerTask[]): boolean {
  return tasks.some((t) => t.result?.state === 'fail' || ('tasks' in t && failedIn(t.tasks)));
}

function serverLabel(): string {
  const url = new URL(inject('serverUrl'));
  return `${url.hostname}:${url.port}`;
}

/** A database for one test or one file; prefer useTestDatabase(), which drops it for you. */
export async function createTestDatabase(
  options: TestDatabaseOptions = {},
): Promise<TestDatabase & { name: string }> {
  const serverUrl = inject('serverUrl');
  const name = `${inject('templateDb').replace(/_template$/, '')}_${randomBytes(4).toString('hex')}`;
  const admin = new ConnectionClient(serverUrl);
  await admin.connect();
  const template = options.migrated === false ? '' : ` template ${pg.escapeIdentifier(inject('templateDb'))}`;
  await admin.query(`create database ${pg.escapeIdentifier(name)}${template}`);
  await admin.end();
  const url = withDatabase(serverUrl, name);
  const pool = new pg.Pool({ connectionString: url, max: 5, Client: ConnectionClient });
  // pool.end() resolves before its clients' sessions are gone; the forced drop then terminates them,
  // and a client that hears so after its pool let it go must not count as an unhandled error. While
  // the pool runs, an idle client's error still reaches the pool's 'error' event (and is thrown, as
  // without this listener, unless the test listens itself), a checked-out client's the query it runs.
  pool.on('connect', (client) => client.on('error', () => {}));
  pool.on('error', (error) => {
    if (!pool.ending && pool.listenerCount('error') === 1) throw error;
  });
  let dropping: Promise<void> | undefined;
  const drop = async () => {
    await pool.end();
    const c = new ConnectionClient(serverUrl);
    await c.connect();
    await c.query(`drop database if exists ${pg.escapeIdentifier(name)} with (force)`);
    await c.end();
  };
  return { name, url, pool, drop: () => (dropping ??= drop()) };
}

/** Resolves when `check` returns true, polling every `everyMs`; rejects after `timeoutMs`. */
export async function until(
  check: () => Promise<boolean> | boolean,
  timeoutMs = 30_000,
  everyMs = 25,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Resolves with the tasks once every one has ended (woken by the task-ended notification, like
 * client.waitForTask); rejects with TIMEOUT when one has not within `timeoutMs`.
 */
export function waitForTasks<T>(
  client: { waitForTask(id: string, options: { timeoutMs: number }): Promise<T> },
  ids: string[],
  timeoutMs = 30_000,
): Promise<T[]> {
  return Promise.all(ids.map((id) => client.waitForTask(id, { timeoutMs })));
}

export async function count(pool: pg.Pool, sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(`select (${sql})::int as n`, params);
  return rows[0].n;
}
