/**
 * pg_terminate_backend of taskmill's sessions: every connection kind (a planner pass's checked-out
 * client, the node pool behind heartbeat and completer, the LISTEN session, the worker threads'
 * exactly-once pool, a scheduling-only client's pool, the HTTP server's pool) is terminated under
 * load, and no process exits, no task is lost, and the log stays short.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { startHttpServer } from '../../http/server.ts';
import { recoverDeadNodes } from '../../planner/maintenance.ts';
import { Planner } from '../../planner/planner.ts';
import { checkout } from '../../store/checkout.ts';
import { TaskmillClient } from '../../index.ts';
import * as defs from '../fixtures/definitions.ts';
import { deposit } from '../fixtures/workflow-definitions.ts';
import { count, until, waitForTasks, useTestDatabase } from '../helpers/database.ts';
import { startTestNode, stopAllNodes } from '../helpers/nodes.ts';
import { killAllNodes, spawnNode } from '../helpers/spawn.ts';
import { collectLog, sessions, spawnClientProcess, terminateBackends } from './outage-helpers.ts';

const db = useTestDatabase();
let admin: pg.Pool;
let database: string;

beforeAll(async () => {
  database = new URL(db.url).pathname.slice(1);
  // On the server's maintenance database, so terminating the test database's sessions spares it.
  admin = new pg.Pool({ connectionString: inject('serverUrl'), max: 2 });
  await db.pool.query(`create table ledger (account text primary key, balance int not null)`);
  await db.pool.query(`create table ledger_writes (task_id uuid, attempt int)`);
  // The test's own pool loses its idle sessions to every termination below.
  db.pool.on('error', () => {});
});
afterAll(async () => {
  await stopAllNodes();
  await killAllNodes();
  await admin.end();
});

const completed = (ids: string[]) =>
  count(db.pool, `select count(*) from tm_history where id = any($1::uuid[]) and state = 'completed'`, [ids]);

describe('a checked-out connection that is terminated', () => {
  it('is recorded as broken and destroyed on release, and the process goes on', async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 2, application_name: 'chaos-checkout' });
    const c = await checkout(pool);
    await c.client.query('select 1');
    expect(await terminateBackends(admin, database)).toContain('chaos-checkout');
    // Without checkout()'s listener the client's 'error' event would be uncaught and fail this file.
    await until(() => c.broken !== undefined, 10_000);
    c.release();
    expect(pool.totalCount).toBe(0);
    expect((await pool.query<{ n: number }>('select 1 as n')).rows[0].n).toBe(1);
    await pool.end();
  });

  /**
   * Runs `pass` (on sessions named `application`) while an admin transaction locks tm_nodes, which the
   * pass reads first; once it waits on the lock, terminates its session and expects the pass to fail
   * without its client's 'error' event going uncaught (that would fail this file).
   */
  async function terminateMidPass(application: string, pass: () => Promise<unknown>): Promise<void> {
    const locker = new pg.Client({ connectionString: db.url });
    await locker.connect();
    await locker.query('begin; lock table tm_nodes in access exclusive mode');
    const running = pass();
    running.catch(() => {});
    const waiting = `select count(*) from pg_stat_activity
       where datname = $1 and application_name = $2 and wait_event_type = 'Lock'`;
    await until(async () => (await count(admin, waiting, [database, application])) === 1, 10_000);
    expect(await terminateBackends(admin, database, application)).toContain(application);
    await expect(running).rejects.toThrow();
    await locker.query('rollback');
    await locker.end();
  }

  it('fails a planner pass whose session is terminated mid-pass, and the next pass succeeds', async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 2, application_name: 'chaos-planner' });
    const planner = new Planner({ db: pool, isLeader: () => true, onError: () => {} });
    // The pass blocks on its cluster-state query.
    await terminateMidPass('chaos-planner', () => planner.runOnce());
    await expect(planner.runOnce()).resolves.toMatchObject({ leader: true });
    await pool.end();
  });

  it('fails a dead-node recovery pass whose session is terminated mid-transaction', async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 1, application_name: 'chaos-recovery' });
    // The pass blocks on deleting the dead nodes.
    await terminateMidPass('chaos-recovery', () => recoverDeadNodes(pool, 1_000));
    await expect(recoverDeadNodes(pool, 1_000)).resolves.toMatchObject({ recovered: 0 });
    await pool.end();
  });
});

it('a scheduling-only TaskmillClient survives its idle sessions being terminated', async () => {
  await startTestNode(db.url, { tasks: [defs.noop] });
  const client = new TaskmillClient({ connectionString: db.url });
  const first = await client.scheduleMany(defs.noop, [{}, {}, {}]);
  expect(await terminateBackends(admin, database)).toContain('taskmill-client');
  await until(() => client.pool.totalCount === 0, 10_000);
  const second = await client.scheduleMany(defs.noop, [{}, {}, {}]);
  await waitForTasks(client, [...first, ...second]);
  expect(await completed([...first, ...second])).toBe(6);
  await client.close();
  await stopAllNodes();
});

it('an exactly-once task whose worker session is terminated mid-transaction commits once', async () => {
  await startTestNode(db.url, { tasks: [deposit] });
  const client = new TaskmillClient({ pool: db.pool });
  const id = await client.schedule(deposit, { message: { account: 'eo', amount: 5, sleepMs: 1_000 } });
  const uncommitted = () =>
    count(
      admin,
      `select count(*) from pg_stat_activity where datname = $1 and application_name = 'taskmill-worker'
         and state = 'idle in transaction' and backend_xid is not null`,
      [database],
    );
  await until(async () => (await uncommitted()) === 1, 20_000, 10);
  expect(await terminateBackends(admin, database, 'taskmill-worker')).toContain('taskmill-worker');
  expect(await client.waitForTask(id, { timeoutMs: 60_000 })).toMatchObject({ state: 'completed' });
  await client.close();
  expect((await db.pool.query(`select balance from ledger where account = 'eo'`)).rows).toEqual([
    { balance: 5 },
  ]);
  await stopAllNodes();
});

it(
  'node, leader, client-only process and HTTP server survive rounds of terminating every session',
  async () => {
    const node = await spawnNode(db.url, { logLevel: 'info', maxParallelTasksInNode: 8 });
    const nodeLog = collectLog(node.process.stdout!);
    const producer = await spawnClientProcess(db.url);
    const http = await startHttpServer({ connectionString: db.url, port: 0, log: undefined });
    const ids: string[] = [];
    const submit = async () => {
      const fromClient = await producer.schedule('sleep', 20);
      expect(fromClient.error).toBeUndefined();
      ids.push(...fromClient.ids!);
      // Two names in one request: the HTTP server schedules them in one transaction on a checked-out client.
      const res = await fetch(`${http.url}/api/tasks`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify([{ name: 'sleep', message: { ms: 20 } }, { name: 'noop' }]),
      });
      expect(res.status).toBe(201);
      ids.push(...((await res.json()) as { ids: string[] }).ids);
    };
    const client = new TaskmillClient({ pool: db.pool });
    const deposits = await client.scheduleMany(
      deposit,
      Array.from({ length: 6 }, (_, i) => ({ message: { account: `a${i}`, amount: 1, sleepMs: 300 } })),
    );
    ids.push(...deposits);
    await submit();

    const ROUNDS = 5;
    const killed = new Set<string>();
    for (let round = 0; round < ROUNDS; round++) {
      // Wait for the node to have its sessions back (pool and LISTEN), then cut them all again.
      await until(async () => {
        const open = await sessions(admin, database);
        if (node.process.exitCode !== null || node.process.signalCode !== null) {
          throw new Error('the node process exited');
        }
        return open.includes('taskmill-node') && open.includes('taskmill-listen');
      }, 60_000).catch(async (error: Error) => {
        const open = await sessions(admin, database);
        throw new Error(
          `${error.message} in round ${round}: sessions ${JSON.stringify(open)}, node exit ` +
            `${node.process.exitCode ?? node.process.signalCode}, node log:\n` +
            nodeLog.map((l) => JSON.stringify(l)).join('\n') +
            `\nnode output:\n${node.output()}`,
        );
      });
      for (const name of await terminateBackends(admin, database)) killed.add(name);
      await submit().catch(() => submit());
    }
    expect([...killed]).toEqual(
      expect.arrayContaining(['taskmill-node', 'taskmill-listen', 'taskmill-client', 'taskmill-http']),
    );

    await waitForTasks(client, ids, 60_000);
    await client.close();
    expect(await completed(ids)).toBe(ids.length);
    const balances = await db.pool.query<{ n: number }>(
      `select sum(balance)::int as n from ledger where account like 'a%'`,
    );
    expect(balances.rows[0].n).toBe(6);

    const readyz = await fetch(`${http.url}/readyz`);
    expect(readyz.status).toBe(200);
    expect(node.process.exitCode).toBeNull();
    expect(node.process.signalCode).toBeNull();
    expect(producer.alive()).toBe(true);

    // Bounded log: a few lines per cut (lost, back; leadership lost and regained), never one per failed
    // pass or retry (each loop fails several times per cut before the sessions are back).
    const byMsg = new Map<string, number>();
    for (const l of nodeLog) byMsg.set(l.msg, (byMsg.get(l.msg) ?? 0) + 1);
    const summary = JSON.stringify([...byMsg]);
    const unavailable = nodeLog.filter((l) => l.msg.startsWith('database unavailable')).length;
    expect(unavailable, summary).toBeGreaterThanOrEqual(1);
    expect(unavailable, summary).toBeLessThanOrEqual(2 * ROUNDS);
    expect(nodeLog.length, summary).toBeLessThanOrEqual(8 * ROUNDS + 2);
    expect(nodeLog.filter((l) => l.level >= 40).length, summary).toBeLessThanOrEqual(4 * ROUNDS);
    expect(producer.log.length).toBeLessThanOrEqual(2 * ROUNDS);

    await http.close();
    await producer.stop();
    node.kill('SIGTERM');
    expect(await node.stopped).toBe(0);
    // Each round waits up to 60 s for the sessions to be back and the burn-down up to 60 s more: the
    // test's own deadlines, with their diagnostics, fire before the runner's.
  },
  8 * 60_000,
);
