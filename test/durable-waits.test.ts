/**
 * Durable waits (docs/durable-waits.md): ctx.step memoizes across attempts, ctx.sleep and
 * ctx.waitForEvent end the attempt without holding a slot and continue later (uncharged), sendEvent
 * wakes every waiter of (name, key) and returns the count, timeouts continue with { timedOut: true },
 * bad input changes nothing, and the step and suspension writes are fenced by node and assignment.
 * Node kills are in durable-waits-cluster.test.ts.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineTask, type TaskmillNode } from '../index.ts';
import { runCliCaptured } from './helpers/cli.ts';
import { EXIT } from '../cli/output.ts';
import { startHttpServer, type HttpServer } from '../http/server.ts';
import { createLogger } from '../log/logger.ts';
import { encode } from '../task/codec.ts';
import { saveStep, suspendTask } from '../store/steps.ts';
import { purgeKeysAndProgress } from '../store/history.ts';
import { count, until, useTestDatabase, waitForTasks } from './helpers/database.ts';
import { insertNode, insertTask } from './helpers/factory.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';
import { all, durable, echo } from './fixtures/definitions.ts';
import type { DurableItem, DurableMessage } from './fixtures/durable.ts';

const durableOnce = defineTask<DurableMessage, unknown[]>({
  name: 'durable-once',
  handler: new URL('./fixtures/durable.ts', import.meta.url),
  guarantee: 'exactly-once',
  retry: { mode: 'OFF' },
});

const db = useTestDatabase();
const dir = mkdtempSync(join(tmpdir(), 'taskmill-durable-'));
const log = join(dir, 'steps.log');
let node: TaskmillNode;
let server: HttpServer;
let tags = 0;

beforeAll(async () => {
  // One slot: a sleeping task must not hold it.
  node = await startTestNode(db.url, {
    tasks: [...all, durable, durableOnce],
    maxParallelTasksInNode: 1,
    historyRetentionMs: 60_000,
  });
  server = await startHttpServer({ connectionString: db.url, port: 0, log: createLogger('silent') });
});
afterAll(async () => {
  await server?.close();
  await stopAllNodes();
});

const cli = (...args: string[]) => runCliCaptured(args, { url: db.url });

async function post(path: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(server.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

function schedule(plan: DurableItem[], catchErrors = false): Promise<{ id: string; tag: string }> {
  const tag = `t${++tags}`;
  return node.client
    .schedule(durable, { message: { log, tag, plan, catchErrors } })
    .then((id) => ({ id, tag }));
}

/** How many times each step function of `tag` ran. */
function runs(tag: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const line of readFileSync(log, 'utf8').split('\n')) {
    const [t, step] = line.split(':');
    if (t === tag) counts[step] = (counts[step] ?? 0) + 1;
  }
  return counts;
}

async function state(id: string) {
  return (await node.client.getTask(id))?.state;
}

describe('ctx.step', () => {
  it('a finished step is not redone by the retry after a failure, and returns its recorded value', async () => {
    const { id, tag } = await schedule([{ step: 'a' }, { throwOnAttempt: 1 }, { step: 'b' }]);
    const [task] = await waitForTasks(node.client, [id]);
    expect(task.state).toBe('completed');
    expect(task.attempts).toBe(2);
    expect(task.result).toEqual([`a@${process.pid}`, 'attempt 2', `b@${process.pid}`]);
    expect(runs(tag)).toEqual({ a: 1, b: 1 });
  });

  it('refuses a step name used twice in a run, an empty or reserved name, and exactly-once tasks', async () => {
    const { id } = await schedule([{ step: 'x' }, { step: 'x' }, { step: '' }, { step: '#1 sleep' }], true);
    const [task] = await waitForTasks(node.client, [id]);
    expect(task.result).toEqual([
      `x@${process.pid}`,
      'INVALID_ARGUMENT',
      'INVALID_ARGUMENT',
      'INVALID_ARGUMENT',
    ]);
    const once = await node.client.schedule(durableOnce, {
      message: { log, tag: 'once', plan: [{ step: 'y' }], catchErrors: true },
    });
    expect((await node.client.waitForTask(once, { timeoutMs: 30_000 })).result).toEqual(['NOT_ALLOWED']);
    expect(await count(db.pool, `select count(*) from tm_task_steps where task_id = $1`, [once])).toBe(0);
  });
});

describe('ctx.sleep', () => {
  it('ends the attempt: the task is sleeping, holds no slot, and continues uncharged after the time', async () => {
    const started = Date.now();
    const { id, tag } = await schedule([{ step: 'before' }, { sleep: 1_500 }, { step: 'after' }]);
    await until(async () => (await state(id)) === 'sleeping');
    const sleeping = await node.client.getTask(id);
    expect(sleeping?.attempts).toBe(0);
    expect(sleeping?.nodeId).toBeNull();
    // The node's only slot is free: another task runs while this one sleeps.
    const other = await node.client.scheduleAndWait(echo, { message: 'meanwhile' }, { timeoutMs: 30_000 });
    expect(other.state).toBe('completed');
    expect(await state(id)).toBe('sleeping');
    const [task] = await waitForTasks(node.client, [id]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_500);
    expect(task.state).toBe('completed');
    expect(task.attempts).toBe(1);
    expect(task.result).toEqual([`before@${process.pid}`, 'slept', `after@${process.pid}`]);
    expect(runs(tag)).toEqual({ before: 1, after: 1 });
  });

  it('bad durations fail the call, record nothing and leave the task running', async () => {
    const { id } = await schedule([{ sleep: -1 }, { sleep: Number.NaN }, { sleep: 61_000 }], true);
    const [task] = await waitForTasks(node.client, [id]);
    expect(task.result).toEqual(['INVALID_ARGUMENT', 'INVALID_ARGUMENT', 'INVALID_ARGUMENT']);
    expect(await count(db.pool, `select count(*) from tm_task_steps where task_id = $1`, [id])).toBe(0);
  });

  it('a sleeping task is cancelled at once', async () => {
    const { id } = await schedule([{ sleep: 50_000 }]);
    await until(async () => (await state(id)) === 'sleeping');
    expect(await node.client.cancel(id)).toBe('cancelled');
    expect(await state(id)).toBe('cancelled');
  });
});

describe('ctx.waitForEvent and sendEvent', () => {
  it('wakes every task waiting for (name, key) with the payload; other keys and names wake nobody', async () => {
    const a = await schedule([{ step: 'a' }, { event: 'paid', key: 'order-1' }, { step: 'b' }]);
    const b = await schedule([{ event: 'paid', key: 'order-1' }]);
    const c = await schedule([{ event: 'paid', key: 'order-2', timeoutMs: 50_000 }]);
    await until(async () =>
      (await Promise.all([a, b, c].map((t) => state(t.id)))).every((s) => s === 'sleeping'),
    );
    expect(await node.client.sendEvent('paid', 'order-9', { amount: 1 })).toBe(0);
    expect(await node.client.sendEvent('shipped', 'order-1', { amount: 1 })).toBe(0);
    expect(await node.client.sendEvent('paid', 'order-1', { amount: 42 })).toBe(2);
    const [ta, tb] = await waitForTasks(node.client, [a.id, b.id]);
    expect(ta.result).toEqual([
      `a@${process.pid}`,
      { timedOut: false, payload: { amount: 42 } },
      `b@${process.pid}`,
    ]);
    expect(tb.result).toEqual([{ timedOut: false, payload: { amount: 42 } }]);
    expect(runs(a.tag)).toEqual({ a: 1, b: 1 });
    // Delivered once: the same event again wakes nobody.
    expect(await node.client.sendEvent('paid', 'order-1', { amount: 43 })).toBe(0);
    expect(await state(c.id)).toBe('sleeping');
    await node.client.cancel(c.id);
  });

  it('a wait whose timeout passes continues with { timedOut: true }', async () => {
    const { id } = await schedule([{ event: 'never', key: 'k', timeoutMs: 300 }, { step: 'after' }]);
    const [task] = await waitForTasks(node.client, [id]);
    expect(task.result).toEqual([{ timedOut: true }, `after@${process.pid}`]);
    // Too late: the wait has timed out.
    expect(await node.client.sendEvent('never', 'k', 1)).toBe(0);
  });

  it('refuses an empty event name, a missing key and a bad timeout, in the handler and in sendEvent', async () => {
    const { id } = await schedule(
      [
        { event: '', key: 'k' },
        { event: 'e', key: undefined as unknown as string },
        { event: 'e', key: 'k', timeoutMs: -5 },
      ],
      true,
    );
    const [task] = await waitForTasks(node.client, [id]);
    expect(task.result).toEqual(['INVALID_ARGUMENT', 'INVALID_ARGUMENT', 'INVALID_ARGUMENT']);
    expect(await count(db.pool, `select count(*) from tm_task_steps where task_id = $1`, [id])).toBe(0);
    await expect(node.client.sendEvent('', 'k')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(node.client.sendEvent('e', 7 as unknown as string)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    await expect(node.client.sendEvent('e', 'k', () => 1)).rejects.toMatchObject({ code: 'ENCODE_FAILED' });
  });
});

describe('events over HTTP and the CLI', () => {
  it('POST /api/events and `taskmill event send` wake the waiters and say how many', async () => {
    const a = await schedule([{ event: 'approved', key: 'doc-1' }]);
    const b = await schedule([{ event: 'approved', key: 'doc-2' }]);
    await until(async () => (await state(a.id)) === 'sleeping' && (await state(b.id)) === 'sleeping');
    const listed = await cli('task', 'list', '--state', 'sleeping', '--json');
    expect(listed.code).toBe(EXIT.OK);
    expect((JSON.parse(listed.out) as { tasks: { id: string }[] }).tasks.map((t) => t.id)).toEqual(
      expect.arrayContaining([a.id, b.id]),
    );

    expect(await post('/api/events', { name: 'approved', key: 'doc-1', payload: { by: 'ann' } })).toEqual({
      status: 200,
      body: { woken: 1 },
    });
    expect(await post('/api/events', { name: '', key: 'doc-1' })).toMatchObject({ status: 400 });
    expect(await post('/api/events', { name: 'approved' })).toMatchObject({ status: 400 });

    expect(await cli('event', 'send', 'approved', 'doc-2', '--payload', '{"by":"bob"}')).toMatchObject({
      code: EXIT.OK,
      out: 'woke 1 task\n',
    });
    expect(await cli('event', 'send', 'approved', 'doc-2', '--payload', '{bad', '--json')).toMatchObject({
      code: EXIT.USAGE,
    });
    expect((await cli('event', 'send', 'approved', 'nobody', '--json')).out).toBe('{\n  "woken": 0\n}\n');

    const [ta, tb] = await waitForTasks(node.client, [a.id, b.id]);
    expect(ta.result).toEqual([{ timedOut: false, payload: { by: 'ann' } }]);
    expect(tb.result).toEqual([{ timedOut: false, payload: { by: 'bob' } }]);
  });
});

describe('fencing', () => {
  it('a stale run (reassigned task) records no step and cannot suspend the task', async () => {
    const nodeId = await insertNode(db.pool);
    const task = await insertTask(db.pool, { name: 'durable', state: 'running', nodeId, assignment: 2 });
    const stale = { taskId: task.id, nodeId, assignment: 1 };
    expect(await saveStep(db.pool, stale, 'a', encode(1))).toBe(false);
    expect(await suspendTask(db.pool, stale, { step: '#1 sleep', sleepMs: 1_000 })).toBe('stale');
    expect(await count(db.pool, `select count(*) from tm_task_steps where task_id = $1`, [task.id])).toBe(0);
    const rows = await db.pool.query(`select state, node_id from tm_tasks where id = $1`, [task.id]);
    expect(rows.rows[0]).toEqual({ state: 'running', node_id: nodeId });
    // The run that holds it writes.
    const current = { ...stale, assignment: 2 };
    expect(await saveStep(db.pool, current, 'a', encode(1))).toBe(true);
    expect(await suspendTask(db.pool, current, { step: '#1 sleep', sleepMs: 60_000 })).toBe('sleeping');
    await node.client.cancel(task.id);
  });
});

describe('retention', () => {
  it('deletes the steps of ended tasks, and keeps those of pending tasks and dead letters', async () => {
    const { id: ended } = await schedule([{ step: 'a' }]);
    await waitForTasks(node.client, [ended]);
    const pending = (
      await insertTask(db.pool, { name: 'durable', state: 'sleeping', notBeforeInMs: 3_600_000 })
    ).id;
    const dead = '0190a5b2-0000-7000-8000-0000000000dd';
    await db.pool.query(
      `insert into tm_dead_letters (id, name, workflow_id, workflow_created_at, strict_affinity, message, priority,
         attempts, error, created_at)
       values ($1, 'durable', $1, now(), false, null, 0, 3, 'boom', now())`,
      [dead],
    );
    await db.pool.query(
      `insert into tm_task_steps (task_id, name, kind) select unnest($1::uuid[]), 'a', 'done'`,
      [[pending, dead]],
    );
    const steps = (id: string) =>
      count(db.pool, `select count(*) from tm_task_steps where task_id = $1`, [id]);
    expect(await steps(ended)).toBe(1);
    await purgeKeysAndProgress(db.pool, new Date(Date.now() + 60_000));
    expect([await steps(ended), await steps(pending), await steps(dead)]).toEqual([0, 1, 1]);
    await node.client.cancel(pending);
  });
});
