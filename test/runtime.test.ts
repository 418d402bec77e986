import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { TaskmillClient, type TaskmillNode } from '../index.ts';
import * as defs from './fixtures/definitions.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const db = useTestDatabase();
let node: TaskmillNode;

beforeAll(async () => {
  node = await startTestNode(db.url);
});
afterAll(stopAllNodes);
afterEach(async () => {
  expect(node.state).toBe('running');
});

/** Every task here ends within seconds on an idle node; the margin is for a loaded 2-core machine. */
const ENDS = { timeoutMs: 30_000 };
const waitEnded = (id: string) => node.client.waitForTask(id, ENDS);

describe('a single node', () => {
  it('runs a task and keeps its result in history', async () => {
    const id = await node.client.schedule(defs.echo, { message: { hello: 'world', n: 42n } });
    const task = await waitEnded(id);
    expect(task).toMatchObject({
      state: 'completed',
      attempts: 1,
      result: { message: { hello: 'world', n: 42n }, attempt: 1 },
    });
  });

  it('runs thousands of tasks scheduled in one statement', async () => {
    const ids = await node.client.scheduleMany(
      defs.noop,
      Array.from({ length: 3000 }, () => ({})),
    );
    expect(new Set(ids).size).toBe(3000);
    // Ends are announced up to 200 ids a notification: every wait hears its own.
    const ended = await Promise.all(ids.map((id) => node.client.waitForTask(id, { timeoutMs: 60_000 })));
    expect(ended.every((t) => t.state === 'completed')).toBe(true);
    expect(await count(db.pool, `select count(*) from tm_history where id = any($1)`, [ids])).toBe(3000);
    expect(await count(db.pool, `select count(*) from tm_tasks where name = 'noop'`)).toBe(0);
  });

  it('retries per policy until success', async () => {
    const id = await node.client.schedule(defs.flaky, { message: { succeedOn: 3 } });
    const task = await waitEnded(id);
    expect(task).toMatchObject({ state: 'completed', attempts: 3, result: 3 });
  });

  it('moves a task that failed every attempt to the dead-letter table with its error', async () => {
    const id = await node.client.schedule(defs.throws);
    const task = await waitEnded(id);
    expect(task?.state).toBe('dead');
    expect(task?.attempts).toBe(3); // first attempt + 2 retries (FIXED, maxRetries 2)
    expect(task?.error).toContain('boom');
  });

  it('lets onFailure stop the retries', async () => {
    const id = await node.client.schedule(defs.flaky, { message: { succeedOn: 10, fatal: true } });
    const task = await waitEnded(id);
    expect(task).toMatchObject({ state: 'dead', attempts: 1 });
  });

  it('records a failure in history when the dead-letter table is off for the task', async () => {
    const id = await node.client.schedule(defs.flakyNoDlt, { message: { succeedOn: 10 } });
    const task = await waitEnded(id);
    expect(task).toMatchObject({ state: 'failed', attempts: 1 });
    expect(await count(db.pool, `select count(*) from tm_dead_letters where id = $1`, [id])).toBe(0);
  });

  it('isolates poison handlers: throw, reject, exit and spin fail alone and the pool recovers', async () => {
    const poison = await Promise.all([
      node.client.schedule(defs.rejects),
      node.client.schedule(defs.exit),
      node.client.schedule(defs.spin),
    ]);
    const healthy = await node.client.scheduleMany(
      defs.echo,
      Array.from({ length: 50 }, (_, i) => ({ message: i })),
    );
    const [rejected, exited, spun] = await Promise.all(poison.map(waitEnded));
    expect(rejected).toMatchObject({ state: 'dead', attempts: 1 });
    expect(rejected?.error).toContain('rejected');
    expect(exited?.state).toBe('dead');
    expect(exited?.error).toContain('WORKER_EXITED');
    expect(spun?.state).toBe('dead');
    expect(spun?.error).toContain('TASK_TIMEOUT');
    const results = await Promise.all(healthy.map(waitEnded));
    expect(results.every((t) => t?.state === 'completed')).toBe(true);
    const after = await node.client.schedule(defs.echo, { message: 'still alive' });
    expect((await waitEnded(after))?.state).toBe('completed');
  });

  it('does not run a delayed task before its time', async () => {
    const started = Date.now();
    const id = await node.client.schedule(defs.noop, { delayMs: 700 });
    await waitEnded(id);
    expect(Date.now() - started).toBeGreaterThanOrEqual(650);
  });

  it('cancels a task that has not started, and refuses to cancel one that ended', async () => {
    const id = await node.client.schedule(defs.noop, { delayMs: 60_000 });
    await node.client.cancel(id);
    expect((await node.client.getTask(id))?.state).toBe('cancelled');
    await expect(node.client.cancel(id)).rejects.toMatchObject({ code: 'NOT_CANCELLABLE' });
    await expect(node.client.cancel('00000000-0000-4000-8000-000000000000')).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
  });

  it('schedules atomically with the caller transaction', async () => {
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      const id = await node.client.schedule(defs.noop, { delayMs: 60_000 }, { client });
      await client.query('rollback');
      expect(await node.client.getTask(id)).toBeUndefined();
      await client.query('begin');
      const kept = await node.client.schedule(defs.noop, { delayMs: 60_000 }, { client });
      expect(await count(db.pool, `select count(*) from tm_tasks where id = $1`, [kept])).toBe(0);
      await client.query('commit');
      expect((await node.client.getTask(kept))?.state).toBe('delayed');
      await node.client.cancel(kept);
    } finally {
      client.release();
    }
  });
});

describe('client.waitForTask()', () => {
  let client: TaskmillClient;
  beforeAll(() => {
    client = new TaskmillClient({ connectionString: db.url });
  });
  afterAll(() => client.close());

  it('is woken by the notification of the end, reading the task once more, not polling', async () => {
    const id = await client.schedule(defs.noop, { delayMs: 60_000 });
    const reads = vi.spyOn(client, 'getTask');
    const waiting = client.waitForTask(id, ENDS);
    // The wait has read the task once (pending); it ends when the cancellation commits.
    await vi.waitFor(() => expect(reads).toHaveBeenCalledTimes(1));
    await db.pool.query(`select count(*) from tm_tasks`); // time passes, nothing is read meanwhile
    expect(reads).toHaveBeenCalledTimes(1);
    await client.cancel(id);
    expect(await waiting).toMatchObject({ id, state: 'cancelled' });
    // One read before, one after the notification (cancel() reads it too, through getTask()).
    expect(reads.mock.calls.filter(([arg]) => arg === id).length).toBeLessThanOrEqual(4);
    reads.mockRestore();
  });

  it('resolves at once for a task that has ended, and several waits on one task share the end', async () => {
    const id = await node.client.schedule(defs.echo, { message: 'once' });
    const [a, b] = await Promise.all([client.waitForTask(id, ENDS), client.waitForTask(id, ENDS)]);
    expect(a).toMatchObject({ state: 'completed', result: { message: 'once' } });
    expect(b).toEqual(a);
    expect(await client.waitForTask(id, { timeoutMs: 0 })).toEqual(a);
  });

  it('rejects with NOT_FOUND for an unknown task and TIMEOUT when the task does not end in time', async () => {
    await expect(client.waitForTask('00000000-0000-4000-8000-000000000000')).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    await expect(client.waitForTask('nope')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    const id = await client.schedule(defs.noop, { delayMs: 60_000 });
    await expect(client.waitForTask(id, { timeoutMs: 50 })).rejects.toMatchObject({
      code: 'TIMEOUT',
      message: expect.stringContaining('delayed'),
    });
    await client.cancel(id);
  });
});

describe('a task given back to the node that lost it', () => {
  it('stops the lost run, then runs the new assignment once that run ended; the task completes', async () => {
    const outcomes: { assignment: number; kind: string; reason?: string }[] = [];
    const onTask = (o: { task: { id: string; assignment: number }; kind: string; reason?: string }) => {
      if (o.task.id === id) outcomes.push({ assignment: o.task.assignment, kind: o.kind, reason: o.reason });
    };
    let id = '';
    node.on('task', onTask);
    try {
      id = await node.client.schedule(defs.sleep, { message: { ms: 3_000 } });
      await until(() => node.stats().inFlight === 1, 30_000);
      // What dead-node recovery and a planning pass do when the node comes back: the task, taken back
      // while its run went on, is assigned to this node again under a newer assignment.
      const { rows } = await db.pool.query<{ assignment: number }>(
        `update tm_tasks set state = 'assigned', assignment = assignment + 1 where id = $1 returning assignment`,
        [id],
      );
      const task = await waitEnded(id);
      expect(task).toMatchObject({ state: 'completed' });
      expect(outcomes).toEqual([
        { assignment: rows[0].assignment - 1, kind: 'failed', reason: 'lost' },
        { assignment: rows[0].assignment, kind: 'done', reason: undefined },
      ]);
      expect(await count(db.pool, `select count(*) from tm_dead_letters where id = $1`, [id])).toBe(0);
    } finally {
      node.off('task', onTask);
    }
  });
});
