/**
 * Exactly-once under a crash: the node process is killed with SIGKILL after the handler wrote (inside
 * its transaction) and before the commit. The write must vanish with the process, and the rerun on
 * another node must commit the effect exactly once.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { TaskmillClient } from '../index.ts';
import { deposit } from './fixtures/workflow-definitions.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { killAllNodes, spawnNode } from './helpers/spawn.ts';

const db = useTestDatabase();
let client: TaskmillClient;

beforeAll(async () => {
  await db.pool.query(`create table ledger (account text primary key, balance int not null)`);
  await db.pool.query(`create table ledger_writes (task_id uuid, attempt int)`);
  client = new TaskmillClient({ pool: db.pool });
});
afterAll(async () => {
  await client.close();
  await killAllNodes();
});

/** A worker-thread transaction that has written (it holds a transaction id) and not committed. */
const uncommittedWrite = () =>
  count(
    db.pool,
    `select count(*) from pg_stat_activity
     where datname = current_database() and application_name = 'taskmill-worker'
       and state = 'idle in transaction' and backend_xid is not null`,
  );

it('commits the effect once when the node dies between the write and the commit', async () => {
  const first = await spawnNode(db.url);
  const id = await client.schedule(deposit, { message: { account: 'k', amount: 7, sleepMs: 2_000 } });
  await until(async () => (await uncommittedWrite()) === 1, 20_000, 10);
  first.kill('SIGKILL');
  await first.stopped;

  // The killed session's transaction is rolled back: nothing of the first run is visible.
  await until(async () => (await uncommittedWrite()) === 0, 10_000);
  expect(await count(db.pool, `select count(*) from ledger_writes`)).toBe(0);

  await spawnNode(db.url);
  expect(await client.waitForTask(id, { timeoutMs: 30_000 })).toMatchObject({ state: 'completed' });
  expect((await db.pool.query(`select balance from ledger where account = 'k'`)).rows).toEqual([
    { balance: 7 },
  ]);
  expect(await count(db.pool, `select count(*) from ledger_writes where task_id = $1`, [id])).toBe(1);
});
