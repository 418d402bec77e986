/** Migrations on fresh (unmigrated) databases: concurrency, refusal of unknown schemas, clear errors. */
import { afterEach, describe, expect, it } from 'vitest';
import {
  LATEST_VERSION,
  assertSchemaKnown,
  knownMigrations,
  migrate,
  migrationStatus,
} from '../migrations/migrator.ts';
import { TaskmillClient } from '../index.ts';
import * as defs from './fixtures/definitions.ts';
import { count, useTestDatabase, type TestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

/** An unmigrated database per test, dropped with the file's (kept when a test failed). */
const file = useTestDatabase();
const fresh = (): Promise<TestDatabase> => file.another({ migrated: false });

afterEach(stopAllNodes);

describe('migrate()', () => {
  it('applies every version exactly once when five nodes migrate a fresh database at once', async () => {
    const db = await fresh();
    const results = await Promise.all(Array.from({ length: 5 }, () => migrate(db.pool)));
    const versions = knownMigrations().map((m) => m.version);
    // Between them the calls applied each version once; no call failed.
    expect(results.flat().sort((a, b) => a - b)).toEqual(versions);
    const status = await migrationStatus(db.pool);
    expect(status.applied).toEqual(versions);
    expect(status.pending).toEqual([]);
    expect(await count(db.pool, `select count(*) from taskmill_migrations`)).toBe(versions.length);
    expect(await count(db.pool, `select count(*) from pg_tables where tablename = 'tm_tasks'`)).toBe(1);
    // Migrating again does nothing.
    expect(await migrate(db.pool)).toEqual([]);
    await assertSchemaKnown(db.pool);
  });

  it('refuses a database whose schema is newer than this code knows', async () => {
    const db = await fresh();
    await migrate(db.pool);
    await db.pool.query(`insert into taskmill_migrations (version, name) values ($1, 'from_the_future')`, [
      LATEST_VERSION + 1,
    ]);
    await expect(assertSchemaKnown(db.pool)).rejects.toMatchObject({
      code: 'SCHEMA_TOO_NEW',
      message: expect.stringMatching(/newer than this taskmill knows.*Upgrade taskmill/s),
    });
    await expect(migrate(db.pool)).rejects.toMatchObject({ code: 'SCHEMA_TOO_NEW' });
    await expect(startTestNode(db.url)).rejects.toMatchObject({ code: 'SCHEMA_TOO_NEW' });
    await expect(startTestNode(db.url, { migrate: false })).rejects.toMatchObject({ code: 'SCHEMA_TOO_NEW' });
  });

  it('reports an unmigrated database as NOT_MIGRATED', async () => {
    const db = await fresh();
    await expect(assertSchemaKnown(db.pool)).rejects.toMatchObject({ code: 'NOT_MIGRATED' });
    expect((await migrationStatus(db.pool)).applied).toEqual([]);
  });
});

describe('an unmigrated database', () => {
  it('refuses to schedule, with NOT_MIGRATED, by definition or by name', async () => {
    const db = await fresh();
    const client = new TaskmillClient({ pool: db.pool });
    await expect(client.schedule(defs.noop)).rejects.toMatchObject({
      name: 'TaskmillError',
      code: 'NOT_MIGRATED',
      message: expect.stringContaining('migrate'),
    });
    await expect(client.scheduleMany(defs.noop, [{}, {}])).rejects.toMatchObject({ code: 'NOT_MIGRATED' });
    await expect(client.schedule('noop')).rejects.toMatchObject({ code: 'NOT_MIGRATED' });
    // Nothing was created on the way.
    expect(await count(db.pool, `select count(*) from pg_tables where schemaname = 'public'`)).toBe(0);
    await client.close();
  });

  it('a node started with migrate: false fails clearly and leaves nothing behind', async () => {
    const db = await fresh();
    await expect(startTestNode(db.url, { migrate: false })).rejects.toMatchObject({
      code: 'NOT_MIGRATED',
      message: expect.stringContaining('migrate'),
    });
    expect(await count(db.pool, `select count(*) from pg_tables where schemaname = 'public'`)).toBe(0);
    // No session of the failed node is left connected.
    expect(
      await count(
        db.pool,
        `select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()
           and application_name like 'taskmill%'`,
      ),
    ).toBe(0);
  });

  it('a node started with the default migrates it and runs', async () => {
    const db = await fresh();
    const node = await startTestNode(db.url, { tasks: [defs.noop] });
    expect((await migrationStatus(db.pool)).pending).toEqual([]);
    expect(await count(db.pool, `select count(*) from tm_nodes where id = $1`, [node.id])).toBe(1);
  });
});
