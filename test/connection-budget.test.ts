/**
 * The connection budget (docs/connections.md): maxConnections bounds every connection a node opens,
 * work waits for a connection instead of failing, and the node reports what it uses.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { TaskmillNode } from '../index.ts';
import { TaskmillMetrics } from '../node/metrics.ts';
import { splitConnectionBudget } from '../node/connection-budget.ts';
import { ConnectionSlots } from '../worker/connection-slots.ts';
import { THREAD_POOL_DEFAULTS, ThreadPool } from '../worker/thread-pool.ts';
import { ConnectionClient } from '../store/connections.ts';
import { deposit } from './fixtures/workflow-definitions.ts';
import { defineTask } from '../index.ts';
import { durable } from './fixtures/definitions.ts';
import { runCliCaptured } from './helpers/cli.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const db = useTestDatabase();
const exitInTransaction = defineTask({
  name: 'exit-in-transaction',
  handler: new URL('./fixtures/exit-in-transaction.ts', import.meta.url),
  guarantee: 'exactly-once',
  retry: { mode: 'OFF' },
});
const stepLog = path.join(mkdtempSync(path.join(tmpdir(), 'taskmill-budget-')), 'steps.log');

beforeAll(async () => {
  await db.pool.query(`create table ledger (account text primary key, balance int not null)`);
  await db.pool.query(`create table ledger_writes (task_id uuid, attempt int)`);
});
afterEach(stopAllNodes);
afterAll(stopAllNodes);

describe('the split of a budget', () => {
  it.each([
    // maxConnections, notifications, threads -> main, listener, worker
    [10, true, 16, { main: 5, listener: 1, worker: 4 }],
    [10, false, 16, { main: 5, listener: 0, worker: 5 }],
    [4, true, 2, { main: 2, listener: 1, worker: 1 }],
    [3, false, 2, { main: 2, listener: 0, worker: 1 }],
    [100, true, 2, { main: 83, listener: 1, worker: 16 }],
  ])('%i connections, notifications %s, %i threads', (maxConnections, notifications, threads, parts) => {
    const split = splitConnectionBudget({ maxConnections, notifications, threads });
    expect(split).toEqual({ total: maxConnections, ...parts });
    expect(split.main + split.listener + split.worker).toBe(maxConnections);
  });

  it('refuses a budget too small to run, saying the least', async () => {
    expect(() => splitConnectionBudget({ maxConnections: 3, notifications: true, threads: 2 })).toThrow(
      /at least 4/,
    );
    await expect(startTestNode(db.url, { maxConnections: 2, notifications: false })).rejects.toMatchObject({
      code: 'INVALID_CONFIG',
      message: expect.stringMatching(/maxConnections 2 is too small.*at least 3/),
    });
  });

  it('lets 8 nodes with the default budget share a stock server with max_connections = 100', () => {
    const { total } = splitConnectionBudget({ maxConnections: 10, notifications: true, threads: 64 });
    expect(8 * total).toBeLessThanOrEqual(100 - 3 /* superuser_reserved_connections */ - 10);
  });
});

describe('the worker threads semaphore', () => {
  it('hands out at most its limit, makes the next wait for a release, and reclaims a dead thread', async () => {
    const slots = ConnectionSlots.create(2, 4);
    const other = ConnectionSlots.from(slots.buffer);
    expect(slots.tryAcquire(11)).toBe(true);
    await other.acquire(12);
    expect(slots.open).toBe(2);
    let third = false;
    const waiting = slots.acquire(13).then(() => (third = true));
    await until(() => slots.waiting === 1, 5_000, 1);
    expect(third).toBe(false);
    expect(await slots.wanted(1, 0)).toBe(true);
    other.release(12);
    await waiting;
    expect(slots.open).toBe(2);
    // Thread 11 died holding its slot: the main thread takes it back.
    expect(slots.reclaim(11)).toBe(1);
    expect(slots.open).toBe(1);
    expect(slots.reclaim(11)).toBe(0);
  });
});

describe("a worker thread's connections", () => {
  it('does not hand out again a connection whose backend was terminated during a query', async () => {
    const pool = new ThreadPool({
      connectionString: db.url,
      slots: ConnectionSlots.create(1, 2),
      threadId: 1,
    });
    const pid = (await pool.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0].pid;
    // The server's FATAL error rejects the query before the socket closes: the client still looks usable.
    // Handled from the start: it rejects while the terminating statement below is still in flight.
    const rejected = expect(pool.query('select pg_sleep(30)')).rejects.toThrow(/terminating connection/);
    await until(
      async () =>
        (await count(db.pool, `select count(*) from pg_stat_activity where pid = $1 and state = 'active'`, [
          pid,
        ])) === 1,
      10_000,
    );
    await db.pool.query('select pg_terminate_backend($1)', [pid]);
    await rejected;
    expect((await pool.query<{ one: number }>('select 1 as one')).rows).toEqual([{ one: 1 }]);
    const { client, release } = await pool.connect();
    release(true);
    expect(client).toBeDefined();
  });
});

describe("the worker threads' shares of their slots", () => {
  /** `queries` statements of `ms` each on `pool`, `parallel` at a time; resolves with when each ended. */
  const work = async (pool: ThreadPool, queries: number, parallel: number, ms: number) => {
    const ended: number[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: parallel }, async () => {
        while (next < queries) {
          next++;
          await pool.query('select pg_sleep($1)', [ms / 1000]);
          ended.push(performance.now());
        }
      }),
    );
    return ended;
  };
  afterEach(() => vi.restoreAllMocks());

  it('two busy threads keep their fair share open instead of closing and reopening connections', async () => {
    const opened = vi.spyOn(ConnectionClient.prototype, 'connect');
    const slots = ConnectionSlots.create(4, 4);
    const pools = [1, 2].map(
      (threadId) => new ThreadPool({ connectionString: db.url, slots, threadId, idleTimeoutMs: 50 }),
    );
    const started = performance.now();
    const [a, b] = await Promise.all(pools.map((pool) => work(pool, 150, 20, 20)));
    const seconds = (performance.now() - started) / 1000;
    // Both made progress side by side: when one thread finished, the other had done a good part too.
    const firstDone = Math.min(a.at(-1)!, b.at(-1)!);
    expect(a.filter((t) => t <= firstDone).length).toBeGreaterThan(150 / 4);
    expect(b.filter((t) => t <= firstDone).length).toBeGreaterThan(150 / 4);
    // Each thread opened its two connections (and, at the start, maybe a few more before the other
    // thread asked), not one per time slice of a run that lasted many slices.
    expect(seconds).toBeGreaterThan((10 * THREAD_POOL_DEFAULTS.sliceMs) / 1000);
    expect(opened.mock.calls.length).toBeLessThanOrEqual(8);
    expect(slots.open).toBeLessThanOrEqual(4);
    await until(() => slots.open === 0, 10_000);
  });

  it('more threads than slots take turns: none starves', async () => {
    const slots = ConnectionSlots.create(1, 4);
    const pools = [1, 2, 3].map(
      (threadId) => new ThreadPool({ connectionString: db.url, slots, threadId, idleTimeoutMs: 50 }),
    );
    const ended = await Promise.all(pools.map((pool) => work(pool, 30, 5, 10)));
    expect(ended.map((e) => e.length)).toEqual([30, 30, 30]);
    expect(slots.open).toBeLessThanOrEqual(1);
    await until(() => slots.open === 0, 10_000);
  });
});

/** Connections of this test database's nodes, as the server sees them. */
const nodeConnections = () =>
  count(
    db.pool,
    `select count(*) from pg_stat_activity
     where datname = current_database() and application_name in ('taskmill-node', 'taskmill-listen', 'taskmill-worker')`,
  );

describe('a node on a small budget', () => {
  let node: TaskmillNode;

  it('runs many exactly-once and durable tasks at once within its budget, waiting for connections', async () => {
    // 5 = 1 LISTEN + 2 worker threads' + 2 main; 4 threads each running many tasks at once.
    node = await startTestNode(db.url, {
      tasks: [deposit, durable],
      maxConnections: 5,
      threads: 4,
      maxParallelTasksInNode: 200,
    });
    expect(node.connectionBudget).toEqual({ total: 5, main: 2, listener: 1, worker: 2 });
    let most = 0;
    let mostWorker = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        most = Math.max(most, await nodeConnections());
        mostWorker = Math.max(mostWorker, node.connections().worker);
        expect(node.connections().total).toBeLessThanOrEqual(5);
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const deposits = await node.client.scheduleMany(
      deposit,
      Array.from({ length: 80 }, (_, i) => ({ message: { account: `a${i % 7}`, amount: 1, sleepMs: 20 } })),
    );
    const steps = await node.client.scheduleMany(
      durable,
      Array.from({ length: 20 }, (_, i) => ({
        message: { log: stepLog, tag: `t${i}`, plan: [{ step: 'one' }, { step: 'two' }] },
      })),
    );
    const ended = await Promise.all(
      [...deposits, ...steps].map((id) => node.client.waitForTask(id, { timeoutMs: 120_000 })),
    );
    sampling = false;
    await sampler;
    expect(ended.filter((t) => t.state !== 'completed')).toEqual([]);
    expect(await count(db.pool, `select sum(balance) from ledger`)).toBe(80);
    expect(await count(db.pool, `select count(*) from ledger_writes`)).toBe(80);
    // The threads used their whole share and never more; the server never saw more than the budget.
    expect(mostWorker).toBe(2);
    expect(most).toBeGreaterThanOrEqual(3);
    expect(most).toBeLessThanOrEqual(5);
  }, 180_000);

  it('takes back the connection slots of a worker thread that died holding one', async () => {
    // A share of one: were the dead thread's slot lost, no exactly-once task could run again.
    node = await startTestNode(db.url, { tasks: [deposit, exitInTransaction], maxConnections: 4 });
    expect(node.connectionBudget.worker).toBe(1);
    const died = await node.client.schedule(exitInTransaction);
    expect(await node.client.waitForTask(died, { timeoutMs: 60_000 })).toMatchObject({
      state: 'dead',
      error: expect.stringContaining('WORKER_EXITED'),
    });
    const id = await node.client.schedule(deposit, { message: { account: 'after-exit', amount: 2 } });
    expect(await node.client.waitForTask(id, { timeoutMs: 60_000 })).toMatchObject({ state: 'completed' });
    expect(node.connections().worker).toBeLessThanOrEqual(1);
  });

  it('reports connections in use and the budget with its heartbeat: status and /metrics show them', async () => {
    node = await startTestNode(db.url, { tasks: [deposit], maxConnections: 6, name: 'budgeted' });
    await until(
      async () =>
        (await count(
          db.pool,
          `select count(*) from tm_nodes where name = 'budgeted' and connections > 0`,
        )) === 1,
      10_000,
    );
    const { rows } = await db.pool.query<{ connections: number; max_connections: number }>(
      `select connections, max_connections from tm_nodes where name = 'budgeted'`,
    );
    expect(rows[0].max_connections).toBe(6);
    expect(rows[0].connections).toBeLessThanOrEqual(6);

    const json = await runCliCaptured(['status', '--json'], { url: db.url });
    expect(json.code).toBe(0);
    const status = JSON.parse(json.out) as {
      nodes: { name: string; connections: number; maxConnections: number }[];
    };
    expect(status.nodes.find((n) => n.name === 'budgeted')).toMatchObject({
      maxConnections: 6,
      connections: expect.any(Number),
    });
    const text = await runCliCaptured(['status'], { url: db.url });
    expect(text.out).toMatch(/connections/);
    expect(text.out).toMatch(/budgeted .*\b\d\/6\b/);

    const metrics = new TaskmillMetrics({ db: db.pool, processMetrics: false });
    const detach = metrics.observe(node);
    try {
      const scrape = await metrics.registry.metrics();
      expect(scrape).toMatch(/taskmill_node_connections\{node="budgeted",part="budget"\} 6/);
      expect(scrape).toMatch(/taskmill_node_connections\{node="budgeted",part="listener"\} 1/);
      expect(scrape).toMatch(/taskmill_cluster_node_max_connections\{node="budgeted"\} 6/);
      expect(scrape).toMatch(/taskmill_cluster_node_connections\{node="budgeted"\} \d/);
    } finally {
      detach();
      metrics.close();
    }
  });
});
