import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TaskmillNode } from '../index.ts';
import { all, echo, noop, sleep } from './fixtures/definitions.ts';
import {
  collect,
  deposit,
  fanout,
  leaf,
  spinForever,
  workflowDefs,
} from './fixtures/workflow-definitions.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const db = useTestDatabase();
let node: TaskmillNode;

beforeAll(async () => {
  await db.pool.query(`create table ledger (account text primary key, balance int not null)`);
  await db.pool.query(`create table ledger_writes (task_id uuid, attempt int)`);
  node = await startTestNode(db.url, { tasks: [...all, ...workflowDefs] });
});
afterAll(stopAllNodes);

/** Every task here ends within seconds; the margin is for a loaded 2-core machine. */
const ended = (id: string) => node.client.waitForTask(id, { timeoutMs: 30_000 });
const historyOf = async (name: string, workflowId: string) =>
  (await db.pool.query(`select * from tm_history where name = $1 and workflow_id = $2`, [name, workflowId]))
    .rows;

describe('join tasks', () => {
  it('run after every joined task and everything they spawned, with their results and messages', async () => {
    const id = await node.client.schedule(fanout, { message: { width: 5, depth: 1 } });
    const { workflowId } = (await node.client.getTask(id))!;
    const status = await node.client.waitForWorkflow(workflowId, { timeoutMs: 30_000 });
    expect(status).toMatchObject({ completed: 1 + 5 + 5 + 1, pending: 0, failed: 0, dead: 0 });
    const [join] = await historyOf('collect', workflowId);
    const result = (await node.client.getTask<{ results: number[]; messages: { from: number }[] }>(join.id))!
      .result!;
    expect(result.results).toEqual([1, 2, 3, 4, 5]);
    // Ten messages: five leaves and the five grandchildren they spawned after the join was scheduled.
    expect(result.messages.map((m) => m.from).sort((a, b) => a - b)).toEqual([
      1, 2, 3, 4, 5, 100, 200, 300, 400, 500,
    ]);
    const leaves = await historyOf('leaf', workflowId);
    expect(Math.max(...leaves.map((l) => l.finished_at.getTime()))).toBeLessThanOrEqual(
      join.finished_at.getTime(),
    );
  });

  it('run when a joined task failed for good, without its result', async () => {
    const id = await node.client.schedule(fanout, { message: { width: 3, failOne: true } });
    const { workflowId } = (await node.client.getTask(id))!;
    const status = await node.client.waitForWorkflow(workflowId, { timeoutMs: 30_000 });
    expect(status).toMatchObject({ dead: 1, completed: 1 + 2 + 1 });
    const [join] = await historyOf('collect', workflowId);
    expect((await node.client.getTask<{ results: number[] }>(join.id))!.result!.results).toEqual([2, 3]);
  });

  it('can be scheduled by a client in the transaction of the tasks they join', async () => {
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      const ids = await node.client.scheduleMany(leaf, [{ message: { n: 7 } }, { message: { n: 8 } }], {
        client,
      });
      const joinId = await node.client.scheduleJoin(collect, {}, ids, { client });
      await client.query('commit');
      await ended(joinId);
      expect((await node.client.getTask<{ results: number[] }>(joinId))!.result!.results).toEqual([7, 8]);
    } finally {
      client.release();
    }
  });

  it('are refused on unknown or ended tasks, and nothing is written', async () => {
    const before = await count(db.pool, `select count(*) from tm_tasks`);
    await expect(
      node.client.scheduleJoin(collect, {}, ['00000000-0000-4000-8000-000000000001']),
    ).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringContaining('unknown task ids'),
    });
    const done = await node.client.schedule(noop);
    await ended(done);
    await expect(node.client.scheduleJoin(collect, {}, [done])).rejects.toThrow(/already ended/);
    await expect(node.client.scheduleJoin(collect, {}, [])).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    await expect(node.client.scheduleJoin(collect, {}, ['nope'])).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    expect(await count(db.pool, `select count(*) from tm_tasks`)).toBe(before);
  });
});

describe('DAG dependencies', () => {
  it('run a task after its dependencies completed', async () => {
    const a = await node.client.schedule(sleep, { message: { ms: 150 } });
    const b = await node.client.schedule(sleep, { message: { ms: 50 } });
    const c = await node.client.schedule(echo, { message: 'c' }, { dependsOn: [a, b] });
    expect((await node.client.getTask(c))!.state).toBe('waiting');
    await ended(c);
    const rows = (
      await db.pool.query(`select id, finished_at from tm_history where id = any($1)`, [[a, b, c]])
    ).rows;
    const at = Object.fromEntries(rows.map((r) => [r.id, r.finished_at.getTime()]));
    expect(at[c]).toBeGreaterThanOrEqual(Math.max(at[a], at[b]));
    expect((await node.client.getTask(c))!.state).toBe('completed');
  });

  it('fail dependents (and theirs) when a dependency fails for good', async () => {
    const bad = await node.client.schedule(leaf, { message: { n: 1, fail: true }, delayMs: 200 });
    const d = await node.client.schedule(echo, {}, { dependsOn: [bad] });
    const e = await node.client.schedule(echo, {}, { dependsOn: [d] });
    await ended(e);
    expect(await node.client.getTask(bad)).toMatchObject({ state: 'dead' });
    expect(await node.client.getTask(d)).toMatchObject({
      state: 'failed',
      error: expect.stringContaining(`dependency ${bad}`),
    });
    expect(await node.client.getTask(e)).toMatchObject({
      state: 'failed',
      error: expect.stringContaining(`dependency ${d}`),
    });
  });

  it('refuse unknown and failed dependencies, changing nothing', async () => {
    const before = await count(db.pool, `select count(*) from tm_tasks`);
    await expect(
      node.client.schedule(echo, {}, { dependsOn: ['00000000-0000-4000-8000-000000000002'] }),
    ).rejects.toThrow(/unknown task ids/);
    const failed = await node.client.schedule(leaf, { message: { n: 1, fail: true } });
    await ended(failed);
    await expect(node.client.schedule(echo, {}, { dependsOn: [failed] })).rejects.toThrow(
      /did not complete successfully/,
    );
    await expect(
      node.client.schedule(echo, {}, { dependsOn: 'x' as unknown as string[] }),
    ).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    expect(await count(db.pool, `select count(*) from tm_tasks`)).toBe(before);
  });
});

describe('cancellation', () => {
  it('aborts a running task on its node; it ends cancelled, not retried', async () => {
    const id = await node.client.schedule(sleep, { message: { ms: 30_000 } });
    await until(async () => (await node.client.getTask(id))?.state === 'running');
    expect(await node.client.cancel(id)).toBe('requested');
    await ended(id);
    expect(await node.client.getTask(id)).toMatchObject({ state: 'cancelled', attempts: 1 });
  });

  it('terminates a CPU-bound task that ignores its abort signal', async () => {
    const id = await node.client.schedule(spinForever);
    await until(async () => (await node.client.getTask(id))?.state === 'running');
    await node.client.cancel(id);
    await ended(id);
    expect((await node.client.getTask(id))!.state).toBe('cancelled');
    const after = await node.client.schedule(echo, { message: 'pool recovered' });
    await ended(after);
    expect((await node.client.getTask(after))!.state).toBe('completed');
  });

  it('cancels a whole workflow: pending tasks cancelled, running ones aborted, nothing left', async () => {
    const first = await node.client.schedule(sleep, { message: { ms: 30_000 } });
    const { workflowId } = (await node.client.getTask(first))!;
    await node.client.scheduleMany(sleep, [
      { workflowId, message: { ms: 30_000 } },
      { workflowId, delayMs: 60_000 },
    ]);
    await until(async () => (await node.client.getTask(first))?.state === 'running');
    const result = await node.client.cancelWorkflow(workflowId);
    expect(result.cancelled + result.requested).toBe(3);
    const status = await node.client.waitForWorkflow(workflowId, { timeoutMs: 10_000 });
    expect(status).toMatchObject({ cancelled: 3, pending: 0, completed: 0 });
  });
});

describe('exactly-once tasks', () => {
  it('commit their writes, children and completion together', async () => {
    const flushed = new Promise<string[]>((resolve) =>
      node.on('flush', (f) => {
        const mine = f.accepted.filter((a) => a.name === 'deposit').map((a) => `${a.id}:${a.outcome}`);
        if (mine.length > 0) resolve(mine);
      }),
    );
    const before = node.stats().completed;
    const id = await node.client.schedule(deposit, { message: { account: 'a', amount: 10 } });
    await ended(id);
    // Committed in its worker thread, it is still reported to observers like any completion.
    expect(await flushed).toEqual([`${id}:completed`]);
    expect(node.stats().completed).toBe(before + 1);
    expect((await db.pool.query(`select balance from ledger where account = 'a'`)).rows[0].balance).toBe(10);
  });

  it('roll their writes back when the attempt fails, so a retry applies them once', async () => {
    const id = await node.client.schedule(deposit, {
      message: { account: 'b', amount: 5, failAfterWrite: true },
    });
    await ended(id);
    expect(await node.client.getTask(id)).toMatchObject({ state: 'completed', attempts: 2 });
    expect((await db.pool.query(`select balance from ledger where account = 'b'`)).rows[0].balance).toBe(5);
    expect((await db.pool.query(`select attempt from ledger_writes where task_id = $1`, [id])).rows).toEqual([
      { attempt: 2 },
    ]);
  });
});

describe('an exactly-once handler that pauses in its transaction longer than network.exactlyOnceIdleTimeoutMs', () => {
  it('loses its transaction: the server ends it and rolls it back, the attempt fails; quick ones commit', async () => {
    const other = await db.another();
    await other.pool.query(`create table ledger (account text primary key, balance int not null);
      create table ledger_writes (task_id uuid, attempt int)`);
    const strict = await startTestNode(other.url, {
      tasks: workflowDefs,
      network: { exactlyOnceIdleTimeoutMs: 300 },
    });
    const slow = await strict.client.schedule(deposit, {
      message: { account: 's', amount: 1, sleepMs: 1_500 },
    });
    const quick = await strict.client.schedule(deposit, { message: { account: 'q', amount: 1 } });
    const waited = (id: string) => strict.client.waitForTask(id, { timeoutMs: 60_000 });
    expect(await waited(quick)).toMatchObject({ state: 'completed' });
    const ended = await waited(slow);
    // Every attempt (1 + maxRetries 3) paused 1.5 s between its writes and its completion.
    expect(ended).toMatchObject({ state: 'dead', attempts: 4 });
    expect(ended.error).toMatch(/exactlyOnceIdleTimeoutMs \(300 ms\).*idle-in-transaction timeout/s);
    const balances = await other.pool.query(`select account, balance from ledger order by account`);
    expect(balances.rows).toEqual([{ account: 'q', balance: 1 }]);
    expect(await count(other.pool, `select count(*) from ledger_writes where task_id = $1`, [slow])).toBe(0);
  });
});

describe('waitForWorkflow', () => {
  it('resolves when its last task ends, woken by the task-ended notification', async () => {
    const first = await node.client.schedule(noop);
    const { workflowId } = await ended(first);
    const late = await node.client.schedule(noop, { workflowId, delayMs: 500 });
    const status = await node.client.waitForWorkflow(workflowId, { timeoutMs: 30_000 });
    expect(status).toMatchObject({ completed: 2, pending: 0, done: true });
    expect(await node.client.getTask(late)).toMatchObject({ state: 'completed' });
  });

  it('rejects with TIMEOUT while a task is pending, and NOT_FOUND for an unknown workflow', async () => {
    const held = await node.client.schedule(noop, { delayMs: 3_600_000 });
    const { workflowId } = (await node.client.getTask(held))!;
    const started = Date.now();
    await expect(node.client.waitForWorkflow(workflowId, { timeoutMs: 200 })).rejects.toMatchObject({
      code: 'TIMEOUT',
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    await node.client.cancel(held);
    await expect(
      node.client.waitForWorkflow('0190a5b2-0000-7000-8000-00000000ffff', { timeoutMs: 200 }),
    ).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});

describe('priorities and delays', () => {
  it('a delayed high-priority task does not hold back ready ones', async () => {
    const late = await node.client.schedule(noop, { priority: 100, delayMs: 1_500 });
    const now = await node.client.schedule(noop, { priority: -100 });
    await ended(now);
    // Not run yet: delayed while its time has not come, ready once it is due.
    expect(['delayed', 'ready']).toContain((await node.client.getTask(late))!.state);
    await ended(late);
  });
});
