/**
 * A server that has no connection slot left refuses at once with SQLSTATE 53300; taskmill reports that
 * as TOO_MANY_CONNECTIONS naming max_connections, from a pool, a node start and a bare client. A role
 * whose connection limit is 0 gets exactly that refusal from any server, whatever its max_connections.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConnectionClient } from '../store/connections.ts';
import { TaskmillError, startNode } from '../index.ts';
import { useTestDatabase } from './helpers/database.ts';

const db = useTestDatabase();
let limitedUrl: string;
const role = `tm_nolimit_${randomBytes(3).toString('hex')}`;

beforeAll(async () => {
  await db.pool.query(`create role ${role} login password 'pw' connection limit 0`);
  const u = new URL(db.url);
  u.username = role;
  u.password = 'pw';
  limitedUrl = u.toString();
});

afterAll(async () => {
  await db.pool.query(`drop role if exists ${role}`);
});

function expectTooMany(error: unknown): void {
  expect(error).toBeInstanceOf(TaskmillError);
  expect((error as TaskmillError).code).toBe('TOO_MANY_CONNECTIONS');
  expect((error as Error).message).toMatch(/max_connections/);
  expect(((error as Error).cause as { code?: string }).code).toBe('53300');
}

describe('no connection slot left', () => {
  it('a client connect() rejects with TOO_MANY_CONNECTIONS', async () => {
    const client = new ConnectionClient(limitedUrl);
    const error = await client.connect().then(
      () => undefined,
      (e: unknown) => e,
    );
    expectTooMany(error);
  });

  it('a pool query rejects with TOO_MANY_CONNECTIONS at once', async () => {
    const pool = new pg.Pool({ connectionString: limitedUrl, max: 2, Client: ConnectionClient });
    const started = Date.now();
    const error = await pool.query('select 1').then(
      () => undefined,
      (e: unknown) => e,
    );
    await pool.end();
    expectTooMany(error);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('a node start fails with TOO_MANY_CONNECTIONS, not a hang', async () => {
    const error = await startNode({ connectionString: limitedUrl, tasks: [], logLevel: 'silent' }).then(
      (node) => node.stop(),
      (e: unknown) => e,
    );
    expectTooMany(error);
  });
});
