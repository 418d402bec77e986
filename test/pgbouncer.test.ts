/**
 * The runtime through PgBouncer in transaction mode (docs/connections.md): consecutive transactions of
 * one client connection may run on different server sessions, so nothing may rely on session state
 * (session advisory locks, prepared statements, SET, LISTEN). Two nodes go through PgBouncer: one
 * listens on a direct connection (listenUrl), the other polls (notifications off).
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TaskmillNode } from '../index.ts';
import { HistoryRetention, type HistoryRetentionResult } from '../planner/history-retention.ts';
import { ConnectionClient } from '../store/connections.ts';
import { releaseLock, takeLock } from '../store/locks.ts';
import { all, flaky, sleep } from './fixtures/definitions.ts';
import { collect, deposit, fanout, workflowDefs } from './fixtures/workflow-definitions.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';
import { startPgBouncer, type PgBouncer } from './helpers/pgbouncer.ts';

const db = useTestDatabase();
let bouncer: PgBouncer;
/** A pool through PgBouncer, as the nodes have. */
let bounced: pg.Pool;
let listening: TaskmillNode;
let polling: TaskmillNode;

const tasks = [...all, ...workflowDefs.filter((d) => !all.some((a) => a.name === d.name))];

beforeAll(async () => {
  bouncer = await startPgBouncer(db.url);
  bounced = new pg.Pool({ connectionString: bouncer.url, max: 4, Client: ConnectionClient });
  await db.pool.query(`create table ledger (account text primary key, balance int not null)`);
  await db.pool.query(`create table ledger_writes (task_id uuid, attempt int)`);
  listening = await startTestNode(bouncer.url, { tasks, name: 'listening', listenUrl: db.url });
  polling = await startTestNode(bouncer.url, { tasks, name: 'polling', notifications: false });
});
afterAll(async () => {
  await stopAllNodes();
  await bounced?.end();
  await bouncer?.stop();
});

/** Every task here ends within seconds; the margin is for a loaded 2-core machine. */
const TIMEOUT = 60_000;

describe('two nodes through PgBouncer in transaction mode', () => {
  it('run a workflow with joins, exactly-once tasks and retries; both nodes take part', async () => {
    const ran = new Map<string, number>();
    for (const node of [listening, polling])
      node.on('task', () => ran.set(node.name, (ran.get(node.name) ?? 0) + 1));

    const root = await polling.client.schedule(fanout, { message: { width: 6, depth: 1 } });
    const { workflowId } = (await polling.client.getTask(root))!;
    const deposits = await listening.client.scheduleMany(
      deposit,
      Array.from({ length: 40 }, (_, i) => ({ message: { account: `a${i % 5}`, amount: 1 } })),
    );
    const retried = await listening.client.schedule(flaky, { message: { succeedOn: 3 } });

    // The polling node's waits poll; the listening node's hear the direct LISTEN session.
    const status = await polling.client.waitForWorkflow(workflowId, { timeoutMs: TIMEOUT });
    expect(status).toMatchObject({ completed: 1 + 6 + 6 + 1, pending: 0, failed: 0, dead: 0 });
    const { rows } = await db.pool.query<{ id: string }>(
      `select id from tm_history where name = $1 and workflow_id = $2`,
      [collect.name, workflowId],
    );
    const join = await listening.client.getTask<{ results: number[] }>(rows[0].id);
    expect(join?.result?.results).toEqual([1, 2, 3, 4, 5, 6]);

    const ended = await Promise.all(
      deposits.map((id) => listening.client.waitForTask(id, { timeoutMs: TIMEOUT })),
    );
    expect(ended.filter((t) => t.state !== 'completed')).toEqual([]);
    // Exactly once: one write and one increment per task.
    expect(await count(db.pool, `select sum(balance) from ledger`)).toBe(40);
    expect(await count(db.pool, `select count(*) from ledger_writes`)).toBe(40);
    expect(await count(db.pool, `select count(distinct task_id) from ledger_writes`)).toBe(40);

    const flakyEnd = await polling.client.waitForTask<number>(retried, { timeoutMs: TIMEOUT });
    expect(flakyEnd).toMatchObject({ state: 'completed', result: 3, attempts: 3 });
    expect(ran.get('listening')).toBeGreaterThan(0);
    expect(ran.get('polling')).toBeGreaterThan(0);
  });

  it('cancel a running task', async () => {
    const id = await polling.client.schedule(sleep, { message: { ms: 600_000 } });
    await until(async () => (await polling.client.getTask(id))?.state === 'running', TIMEOUT);
    await polling.client.cancel(id);
    expect(await listening.client.waitForTask(id, { timeoutMs: TIMEOUT })).toMatchObject({
      state: 'cancelled',
    });
  });

  it('run history retention one pass at a time, with no session lock left on any server session', async () => {
    const retention = () => new HistoryRetention({ db: bounced, retentionMs: 60 * 60_000 });
    // Another pass holds the lease (taken between two of the leader's passes): this one does nothing.
    await until(() => takeLock(bounced, 'history', '00000000-0000-4000-8000-000000000001', 60_000), TIMEOUT);
    expect(await retention().runOnce()).toMatchObject({ skipped: true });
    await releaseLock(bounced, 'history', '00000000-0000-4000-8000-000000000001');

    // The leader's own passes (every 100 ms here) hold the lease for moments: one of ours gets its turn.
    let pass: HistoryRetentionResult | undefined;
    await until(async () => !(pass = await retention().runOnce()).skipped, TIMEOUT);
    expect(pass).toMatchObject({ skipped: false });
    // The partitions of the current period and those ahead exist (made by this pass or the leader's).
    const { rows } = await db.pool.query<{ n: number }>(
      `select count(*)::int as n from pg_inherits i join pg_class c on c.oid = i.inhrelid
       where i.inhparent = 'tm_history'::regclass and c.relname <> 'tm_history_default'`,
    );
    expect(rows[0].n).toBeGreaterThanOrEqual(2);
    // An advisory lock held by a session outside any transaction is a session lock left behind (the
    // planner's pass lock is transaction-scoped, and ends with its transaction).
    expect(
      await count(
        db.pool,
        `select count(*) from pg_locks l join pg_stat_activity a on a.pid = l.pid
         where l.locktype = 'advisory' and a.datname = current_database() and a.state = 'idle'`,
      ),
    ).toBe(0);
  });

  it('fail the lease over to the other node when the leader stops, and go on planning', async () => {
    await until(() => listening.isLeader || polling.isLeader, TIMEOUT);
    const [leader, other] = listening.isLeader ? [listening, polling] : [polling, listening];
    await leader.stop();
    await until(() => other.isLeader, TIMEOUT);
    const id = await other.client.schedule(deposit, { message: { account: 'after-failover', amount: 5 } });
    expect(await other.client.waitForTask(id, { timeoutMs: TIMEOUT })).toMatchObject({ state: 'completed' });
    expect((await db.pool.query(`select balance from ledger where account = 'after-failover'`)).rows).toEqual(
      [{ balance: 5 }],
    );
  });
});
