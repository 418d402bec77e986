/** A fresh migrated database per test file, cloned from the template made by global-setup. */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
import { ConnectionClient } from '../../runtime/connections.ts';
import { withDatabase } from '../../runtime/database.ts';

export interface TestDatabase {
  url: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

export async function createTestDatabase(options: { migrated?: boolean } = {}): Promise<TestDatabase> {
  const serverUrl = inject('serverUrl');
  const name = `${inject('templateDb').replace(/_template$/, '')}_${randomBytes(4).toString('hex')}`;
  const admin = new ConnectionClient(serverUrl);
  await admin.connect();
  const template = options.migrated === false ? '' : ` template ${pg.escapeIdentifier(inject('templateDb'))}`;
  await admin.query(`create database ${pg.escapeIdentifier(name)}${template}`);
  await admin.end();
  const url = withDatabase(serverUrl, name);
  const pool = new pg.Pool({ connectionString: url, max: 5, Client: ConnectionClient });
  return {
    url,
    pool,
    async drop() {
      // pool.end() resolves once its clients were told to end, not when their sessions have: one the
      // drop below terminates first reports 57P01 through the pool's 'error' event, expected here.
      pool.on('error', () => {});
      await pool.end();
      const c = new ConnectionClient(serverUrl);
      await c.connect();
      await c.query(`drop database if exists ${pg.escapeIdentifier(name)} with (force)`);
      await c.end();
    },
  };
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

export async function count(pool: pg.Pool, sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(`select (${sql})::int as n`, params);
  return rows[0].n;
}
