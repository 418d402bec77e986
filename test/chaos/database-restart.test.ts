/**
 * The PostgreSQL server stops and comes back (a restart with an outage between) under a node that leads
 * the cluster (its own process), a scheduling-only client process and an HTTP server: none exits,
 * /readyz answers 503 while the server is away and 200 after, every task scheduled before or after
 * completes, and the log says the database went away once per interval and came back once.
 *
 * The server is this file's own embedded one (the shared test server serves the other files). The
 * outage lasts TASKMILL_CHAOS_OUTAGE_MS (default 12 s; set 60000 for a one-minute outage).
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, expect, it } from 'vitest';
import { startHttpServer, type HttpServer } from '../../http/server.ts';
import { migrate } from '../../migrations/migrator.ts';
import { FAILURE_LOG_DEFAULTS } from '../../log/failure-log.ts';
import { startEmbeddedPostgres, type DatabaseHandle } from '../../store/database.ts';
import { count, until, waitForTasks } from '../helpers/database.ts';
import { TaskmillClient } from '../../index.ts';
import { killAllNodes, liveNodeProcesses, spawnNode } from '../helpers/spawn.ts';
import { collectLog, spawnClientProcess, type ClientProcess } from './outage-helpers.ts';

const OUTAGE_MS = Number(process.env.TASKMILL_CHAOS_OUTAGE_MS ?? 12_000);
const dataDir = path.resolve(import.meta.dirname, '../../.taskmill/chaos-pg', randomBytes(4).toString('hex'));

let server: DatabaseHandle | undefined;
let pool: pg.Pool | undefined;
let producer: ClientProcess | undefined;
let http: HttpServer | undefined;

afterAll(async () => {
  await http?.close();
  await producer?.stop();
  await killAllNodes();
  expect(liveNodeProcesses()).toBe(0);
  await pool?.end();
  await server?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

const readyz = async () => {
  try {
    return (await fetch(`${http!.url}/readyz`)).status;
  } catch {
    return 0;
  }
};

it(
  'no process exits when the server restarts after an outage; work before and after completes',
  async () => {
    server = await startEmbeddedPostgres({ dataDir, port: 0 });
    const port = Number(new URL(server.url).port);
    pool = new pg.Pool({ connectionString: server.url, max: 3 });
    // The test's own pool loses its sessions with the server.
    pool.on('error', () => {});
    await migrate(pool);
    await pool.query(`create table ledger (account text primary key, balance int not null)`);
    await pool.query(`create table ledger_writes (task_id uuid, attempt int)`);

    const node = await spawnNode(server.url, { logLevel: 'info', maxParallelTasksInNode: 8 });
    const nodeLog = collectLog(node.process.stdout!);
    producer = await spawnClientProcess(server.url);
    http = await startHttpServer({ connectionString: server.url, port: 0 });
    await until(async () => (await readyz()) === 200, 30_000);

    const ids: string[] = [];
    const before = await producer.schedule('sleep', 30);
    expect(before.error).toBeUndefined();
    ids.push(...before.ids!);
    const res = await fetch(`${http.url}/api/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify([
        ...Array.from({ length: 3 }, (_, i) => ({
          name: 'deposit',
          message: { account: `d${i}`, amount: 1, sleepMs: 200 },
        })),
        // Due during the outage: it must run once the server is back.
        { name: 'noop', delayMs: Math.floor(OUTAGE_MS / 2) },
      ]),
    });
    expect(res.status).toBe(201);
    ids.push(...((await res.json()) as { ids: string[] }).ids);

    // The outage.
    const cutAt = Date.now();
    await server.stop();
    await until(async () => (await readyz()) === 503, 10_000);
    const failedSchedule = await producer.schedule('noop', 1);
    expect(failedSchedule.error).toBeDefined();
    // The outage itself is what is tested: its length is the parameter, not a wait for a condition.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, OUTAGE_MS - (Date.now() - cutAt))));
    expect(await readyz()).toBe(503);
    expect(node.process.exitCode).toBeNull();
    expect(producer.alive()).toBe(true);
    server = await startEmbeddedPostgres({ dataDir, port });
    const backAt = Date.now();

    await until(async () => (await readyz()) === 200, 60_000);
    let after: { ids?: string[]; error?: string } = {};
    await until(async () => {
      after = await producer!.schedule('sleep', 30);
      return after.ids !== undefined;
    }, 30_000);
    ids.push(...after.ids!);
    const client = new TaskmillClient({ pool });
    try {
      await waitForTasks(client, ids, 60_000);
    } finally {
      await client.close();
    }
    expect(
      await count(
        pool,
        `select count(*) from tm_history where id = any($1::uuid[]) and state = 'completed'`,
        [ids],
      ),
    ).toBe(ids.length);
    expect((await pool.query(`select sum(balance)::int as n from ledger`)).rows[0].n).toBe(3);

    expect(node.process.exitCode).toBeNull();
    expect(node.process.signalCode).toBeNull();
    expect(producer.alive()).toBe(true);

    // One line when the database went away, at most one more per interval, one when it came back.
    const summary = nodeLog.map((l) => l.raw).join('\n');
    const during = nodeLog.filter((l) => l.at >= cutAt && l.at < backAt);
    const intervals = Math.ceil(OUTAGE_MS / FAILURE_LOG_DEFAULTS.intervalMs);
    expect(during.filter((l) => l.msg.startsWith('database unavailable')).length, summary).toBe(1);
    expect(during.filter((l) => l.msg === 'database still unavailable').length, summary).toBeLessThanOrEqual(
      intervals,
    );
    // Besides those: leadership lost, and nothing else.
    expect(during.length, summary).toBeLessThanOrEqual(2 + intervals + 1);
    expect(nodeLog.filter((l) => l.msg.startsWith('database reachable again')).length, summary).toBe(1);
    expect(producer.log.length).toBeLessThanOrEqual(2 + intervals);

    node.kill('SIGTERM');
    expect(await node.stopped).toBe(0);
  },
  OUTAGE_MS + 180_000,
);
