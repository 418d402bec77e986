/** A stopped node logs no error for connections the server closes after it stopped. */
import pg from 'pg';
import { afterAll, expect, it, vi } from 'vitest';
import { until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const db = useTestDatabase();

afterAll(stopAllNodes);

it('a connection of its pool terminated after node.stop() is not logged as an error', async () => {
  const pool = new pg.Pool({ connectionString: db.url, application_name: 'caller-pool', max: 4 });
  const poolErrors: unknown[] = [];
  pool.on('error', (e) => poolErrors.push(e));
  const node = await startTestNode(db.url, { pool });
  await node.stop();
  const error = vi.spyOn(node.log, 'error');
  const warn = vi.spyOn(node.log, 'warn');
  const idle = pool.idleCount;
  expect(idle).toBeGreaterThan(0);
  // What a server shutting down does: every backend of the pool gets "terminating connection due to
  // administrator command".
  await db.pool.query(
    `select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'caller-pool'`,
  );
  await until(() => poolErrors.length >= idle, 10_000);
  expect(error).not.toHaveBeenCalled();
  expect(warn).not.toHaveBeenCalled();
  await pool.end();
});
