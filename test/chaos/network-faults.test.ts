/**
 * Network faults between a node and PostgreSQL (docs/network-faults.md): every node is a process whose
 * DATABASE_URL goes through a loopback TCP proxy of its own (bench/tcp-proxy.ts), which the test cuts
 * (RST), black-holes (silence, no RST) and restores.
 * - A node cut off longer than the node timeout loses its tasks to the other node, which runs them;
 *   back in touch, its late outcomes are fenced (each exactly-once effect once; at-least-once reruns
 *   counted), it stops the runs it lost, registers again and takes new work; its process never dies.
 * - A black-holed leader stops planning (its local view of the lease lapses) before the other node
 *   becomes leader: the leadership intervals, from both nodes' logs on one clock, do not overlap.
 */
import type { ChildProcess } from 'node:child_process';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { proxyForUrl, type TcpProxy } from '../../bench/tcp-proxy.ts';
import { TaskmillClient } from '../../index.ts';
import { record } from '../fixtures/definitions.ts';
import { deposit } from '../fixtures/workflow-definitions.ts';
import { count, until, useTestDatabase, type TestDatabase } from '../helpers/database.ts';
import { killAllNodes, spawnNode, type SpawnOptions, type SpawnedNode } from '../helpers/spawn.ts';

const files = useTestDatabase();
const proxies: TcpProxy[] = [];
const clients: TaskmillClient[] = [];

afterEach(async () => {
  await killAllNodes();
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(proxies.splice(0).map((p) => p.close()));
});
afterAll(async () => {
  await killAllNodes();
});

/** A database with the effect tables the fixtures write: ledger (exactly-once) and runs (every run). */
async function database(): Promise<TestDatabase> {
  const db = await files.another();
  await db.pool.query(`create table ledger (account text primary key, balance int not null);
    create table ledger_writes (task_id uuid, attempt int);
    create table runs (task_id uuid, key text, workflow_id uuid, seq int, started_at timestamptz,
      ended_at timestamptz, pid int)`);
  return db;
}

/** A node process reaching the database through a proxy of its own; `log` collects its log lines. */
async function nodeBehindProxy(
  db: TestDatabase,
  options: SpawnOptions,
): Promise<{ node: SpawnedNode; proxy: TcpProxy; log: () => Record<string, unknown>[] }> {
  const proxy = await proxyForUrl(db.url);
  proxies.push(proxy);
  const node = await spawnNode(proxy.url(db.url), options);
  return { node, proxy, log: collectLog(node.process) };
}

/** The pino JSON lines a child writes from now on. */
function collectLog(child: ChildProcess): () => Record<string, unknown>[] {
  const lines: Record<string, unknown>[] = [];
  let rest = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    const text = rest + chunk.toString();
    const parts = text.split('\n');
    rest = parts.pop() ?? '';
    for (const part of parts) {
      try {
        lines.push(JSON.parse(part) as Record<string, unknown>);
      } catch {
        // Not a log line.
      }
    }
  });
  return () => lines;
}

const leaderIs = (db: TestDatabase, id: string) =>
  count(db.pool, `select count(*) from tm_leader where node_id = $1 and expires_at > now()`, [id]).then(
    (n) => n === 1,
  );

/** Timings of the nodes here: FAST (test/helpers/nodes.ts) with a node timeout of 1 s. */
const NODE_TIMEOUT_MS = 1_000;

describe.each(['cut', 'blackhole'] as const)('a node %s off longer than the node timeout', (fault) => {
  it('loses its tasks to the other node, is fenced, stops what it lost and rejoins, alive', async () => {
    const db = await database();
    // The victim has most of the slots, so it holds tasks of both kinds when the fault comes.
    const other = await nodeBehindProxy(db, { name: 'other', maxParallelTasksInNode: 4 });
    await until(() => leaderIs(db, other.node.id), 30_000);
    const victim = await nodeBehindProxy(db, {
      name: 'victim',
      maxParallelTasksInNode: 8,
      planner: false,
      logLevel: 'warn',
    });
    const client = new TaskmillClient({ connectionString: db.url });
    clients.push(client);

    // Short runs end during the fault (their outcome then waits in the victim's completer, to be
    // fenced); long ones are still running when it ends (to be stopped as lost).
    const SHORT_MS = 1_500;
    const LONG_MS = 5_000;
    const ids: string[] = [];
    const short = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const id = await client.schedule(record, { message: { url: db.url, key: `short${i}`, ms: SHORT_MS } });
      short.add(id);
      ids.push(id);
      ids.push(
        await client.schedule(deposit, { message: { account: `a${i}`, amount: 1, sleepMs: LONG_MS } }),
      );
      ids.push(await client.schedule(record, { message: { url: db.url, key: `long${i}`, ms: LONG_MS } }));
    }
    const held = async () =>
      (
        await db.pool.query<{ id: string }>(
          `select id from tm_tasks where node_id = $1 and state = 'running'`,
          [victim.node.id],
        )
      ).rows.map((r) => r.id);
    await until(async () => {
      const running = await held();
      return running.some((id) => short.has(id)) && running.some((id) => !short.has(id));
    }, 30_000);

    if (fault === 'cut') victim.proxy.cut();
    else victim.proxy.blackhole();
    const faultAt = Date.now();
    const victimHad = await held();
    const shortLost = victimHad.filter((id) => short.has(id));
    // Declared dead by the other node's planner, and its tasks taken back.
    await until(
      async () =>
        (await count(db.pool, `select count(*) from tm_nodes where id = $1`, [victim.node.id])) === 0 &&
        (await count(db.pool, `select count(*) from tm_tasks where node_id = $1`, [victim.node.id])) === 0,
      30_000,
    );
    expect(Date.now() - faultAt).toBeGreaterThanOrEqual(NODE_TIMEOUT_MS);
    // The victim's short runs end meanwhile (the fixture writes `runs` directly, not through the
    // proxy), and the other node runs those tasks again.
    const ranBy = (pid: number) =>
      count(
        db.pool,
        `select count(distinct task_id) from runs where task_id = any($1::uuid[]) and pid = $2`,
        [shortLost, pid],
      );
    await until(async () => (await ranBy(victim.node.pid)) === shortLost.length, 30_000);
    await until(async () => (await ranBy(other.node.pid)) === shortLost.length, 30_000);
    expect(victim.node.process.exitCode).toBeNull();

    victim.proxy.restore();
    // It registers again, stops the runs it lost, and its late outcomes are fenced out.
    await until(
      () =>
        count(db.pool, `select count(*) from tm_nodes where id = $1`, [victim.node.id]).then((n) => n === 1),
      30_000,
    );
    const logged = (msg: string) => victim.log().find((l) => String(l.msg).includes(msg));
    await until(() => logged('tasks it lost stopped') !== undefined, 30_000);
    expect(Number(logged('tasks it lost stopped')!.aborted)).toBeGreaterThanOrEqual(1);
    await until(() => logged('outcomes fenced out') !== undefined, 30_000);
    const stale = Number(logged('outcomes fenced out')!.stale);
    expect(stale).toBeGreaterThanOrEqual(1);

    // Every task ends completed once, each exactly-once effect exactly once.
    await until(
      async () =>
        (await count(
          db.pool,
          `select count(*) from tm_history where id = any($1::uuid[]) and state = 'completed'`,
          [ids],
        )) === ids.length,
      60_000,
    );
    const { rows: writes } = await db.pool.query<{ task_id: string; n: number }>(
      `select task_id, count(*)::int as n from ledger_writes group by task_id`,
    );
    expect(writes).toHaveLength(4);
    expect(writes.every((w) => w.n === 1)).toBe(true);
    const { rows: ledger } = await db.pool.query<{ balance: number }>(`select balance from ledger`);
    expect(ledger.map((r) => r.balance)).toEqual([1, 1, 1, 1]);
    // At-least-once tasks may run twice: the fenced runs, and no more.
    const reruns = await count(
      db.pool,
      `select coalesce(sum(n - 1), 0) from (select count(*) as n from runs group by task_id) r`,
    );
    expect(reruns).toBeGreaterThanOrEqual(shortLost.length);
    console.info(
      `${fault}: victim lost ${victimHad.length} running tasks; ${reruns} at-least-once reruns, ` +
        `${stale} late outcomes fenced, ${String(logged('tasks it lost stopped')!.aborted)} runs aborted`,
    );

    // It takes new work, and its process never died.
    const fresh = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        client.schedule(record, { message: { url: db.url, key: `n${i}`, ms: 50 } }),
      ),
    );
    await until(
      async () => (await count(db.pool, `select count(*) from runs where pid = $1`, [victim.node.pid])) > 0,
      30_000,
    );
    await until(
      async () =>
        (await count(db.pool, `select count(*) from tm_history where id = any($1::uuid[])`, [fresh])) ===
        fresh.length,
      30_000,
    );
    expect(victim.node.process.exitCode).toBeNull();
  });
});
