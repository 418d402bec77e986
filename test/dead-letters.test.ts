import pg from 'pg';
import { v7 as uuidv7 } from 'uuid';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  defineTask,
  encode,
  getDeadLetter,
  listDeadLetters,
  purgeDeadLetters,
  requeueDeadLetters,
  type TaskmillNode,
} from '../index.ts';
import { PLANNER_CHANNEL } from '../store/channels.ts';
import * as defs from './fixtures/definitions.ts';
import { useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

/** Strict affinity, fails at once: the head of its key goes straight to the dead-letter table. */
const strictFails = defineTask({
  name: 'strict-fails',
  handler: new URL('./fixtures/throws.ts', import.meta.url),
  affinityMode: 'strict',
  retry: { mode: 'OFF' },
});

const db = useTestDatabase();
let node: TaskmillNode;

beforeAll(async () => {
  await db.pool.query(
    `create table runs (task_id uuid, key text, workflow_id uuid, seq int, started_at timestamptz,
       ended_at timestamptz, pid int)`,
  );
  node = await startTestNode(db.url, { tasks: [...defs.all, strictFails] });
});
beforeEach(async () => {
  await db.pool.query(`delete from tm_dead_letters`);
});
afterAll(stopAllNodes);

interface DeadRow {
  id?: string;
  name?: string;
  message?: unknown;
  workflowId?: string;
  failedAgoMs?: number;
  attempts?: number;
}

/** Writes a dead letter directly (a task that failed every attempt), for a name no node may run. */
async function insertDead(row: DeadRow = {}): Promise<string> {
  const id = row.id ?? uuidv7();
  await db.pool.query(
    `insert into tm_dead_letters (id, name, workflow_id, workflow_created_at, strict_affinity, message, priority,
       attempts, error, created_at, failed_at)
     values ($1, $2, $3, now() - interval '1 hour', false, $4, 0, $5, 'Error: it broke', now() - interval '1 hour',
       now() - $6 * interval '1 millisecond')`,
    [
      id,
      row.name ?? 'parked',
      row.workflowId ?? uuidv7(),
      encode(row.message ?? null),
      row.attempts ?? 3,
      row.failedAgoMs ?? 0,
    ],
  );
  return id;
}

/** Every task here ends within seconds; the margin is for a loaded 2-core machine. */
const waitEnded = (id: string) => node.client.waitForTask(id, { timeoutMs: 30_000 });

const deadIds = async () =>
  (await db.pool.query<{ id: string }>(`select id from tm_dead_letters order by id`)).rows.map((r) => r.id);
const hotIds = async () =>
  (await db.pool.query<{ id: string }>(`select id from tm_tasks order by id`)).rows.map((r) => r.id);

describe('listing and inspecting dead letters', () => {
  it('lists a page at a time in id order, filtered by name, without messages', async () => {
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(await insertDead({ name: i % 2 ? 'odd' : 'even', message: { i } }));
    const first = await listDeadLetters(db.pool, { limit: 2 });
    expect(first.map((d) => d.id)).toEqual(ids.slice(0, 2));
    const second = await listDeadLetters(db.pool, { limit: 2, after: first[1].id });
    expect(second.map((d) => d.id)).toEqual(ids.slice(2, 4));
    expect((await listDeadLetters(db.pool, { limit: 2, after: second[1].id })).map((d) => d.id)).toEqual([
      ids[4],
    ]);
    expect((await listDeadLetters(db.pool, { name: 'odd' })).map((d) => d.id)).toEqual([ids[1], ids[3]]);
    expect(first[0]).toMatchObject({ name: 'even', attempts: 3, error: 'Error: it broke', priority: 0 });
    expect(first[0]).not.toHaveProperty('message');
  });

  it('gives one dead letter with its decoded message, error and attempts', async () => {
    const id = await node.client.schedule(defs.throws, { message: { payload: [1, 2, 3], big: 10n } });
    await waitEnded(id);
    const dead = await getDeadLetter(db.pool, id);
    expect(dead).toMatchObject({
      id,
      name: 'throws',
      attempts: 3,
      message: { payload: [1, 2, 3], big: 10n },
      strictAffinity: false,
    });
    expect(dead.error).toContain('boom');
  });

  it('rejects bad input with a clear error', async () => {
    await expect(getDeadLetter(db.pool, uuidv7())).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(getDeadLetter(db.pool, 'nope')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    for (const options of [
      { limit: 0 },
      { limit: 1.5 },
      { limit: 20_000 },
      { after: 'x' },
      { name: 'a b' },
    ]) {
      await expect(listDeadLetters(db.pool, options)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    }
  });
});

describe('requeueing dead letters', () => {
  it('moves a dead letter back under the same id, and a node runs it to completion', async () => {
    const id = await insertDead({ name: 'echo', message: { hello: 'again' }, attempts: 7 });
    expect(await requeueDeadLetters(db.pool, { ids: [id] })).toEqual({ requeued: [id] });
    const task = await waitEnded(id);
    expect(task).toMatchObject({
      id,
      state: 'completed',
      attempts: 1,
      result: { message: { hello: 'again' } },
    });
    expect(await deadIds()).toEqual([]);
  });

  it('resets the attempts: a task that fails again gets its whole retry budget again', async () => {
    const id = await node.client.schedule(defs.throws);
    expect(await waitEnded(id)).toMatchObject({ state: 'dead', attempts: 3 });
    await requeueDeadLetters(db.pool, { ids: [id] });
    expect(await waitEnded(id)).toMatchObject({ state: 'dead' });
    expect(await getDeadLetter(db.pool, id)).toMatchObject({ attempts: 3 });
  });

  it('wakes the planner', async () => {
    const listener = new pg.Client(db.url);
    await listener.connect();
    try {
      await listener.query(`listen ${PLANNER_CHANNEL}`);
      const woken = new Promise<void>((resolve) => listener.on('notification', () => resolve()));
      const id = await insertDead();
      await requeueDeadLetters(db.pool, { ids: [id] });
      await woken;
    } finally {
      await listener.end();
    }
    await db.pool.query(`delete from tm_tasks where name = 'parked'`);
  });

  it('requeues by name or all of them, atomically', async () => {
    const a = [await insertDead({ name: 'parked-a' }), await insertDead({ name: 'parked-a' })];
    const b = await insertDead({ name: 'parked-b' });
    expect((await requeueDeadLetters(db.pool, { name: 'parked-a' })).requeued.sort()).toEqual(a.sort());
    expect(await deadIds()).toEqual([b]);
    expect(await requeueDeadLetters(db.pool, { all: true })).toEqual({ requeued: [b] });
    expect(await deadIds()).toEqual([]);
    const rows = await db.pool.query(
      `select attempt, state, not_before <= now() as due from tm_tasks where id = any($1)`,
      [[...a, b]],
    );
    expect(rows.rows).toEqual(Array(3).fill({ attempt: 0, state: 'ready', due: true }));
    await db.pool.query(`delete from tm_tasks where id = any($1)`, [[...a, b]]);
  });

  it('changes nothing when one of the ids is unknown', async () => {
    const known = await insertDead();
    const unknown = uuidv7();
    await expect(requeueDeadLetters(db.pool, { ids: [known, unknown] })).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: expect.stringContaining(unknown),
    });
    expect(await deadIds()).toEqual([known]);
    expect(await hotIds()).not.toContain(known);
  });

  it('rejects bad selectors', async () => {
    const id = await insertDead();
    for (const selector of [
      {},
      { ids: [] },
      { ids: ['x'] },
      { ids: [id], name: 'parked' },
      { all: false },
      { name: '' },
    ]) {
      await expect(requeueDeadLetters(db.pool, selector as never)).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
      });
    }
    expect(await deadIds()).toEqual([id]);
  });

  it('puts a task back in its workflow when the workflow has pending tasks, else behind the waiting ones', async () => {
    const workflowId = uuidv7();
    await db.pool.query(
      `insert into tm_tasks (id, name, workflow_id, workflow_created_at, message, state)
       values ($1, 'parked', $2, now() - interval '2 hours', null, 'waiting')`,
      [uuidv7(), workflowId],
    );
    const inWorkflow = await insertDead({ workflowId });
    const alone = await insertDead();
    await requeueDeadLetters(db.pool, { ids: [inWorkflow, alone] });
    const { rows } = await db.pool.query(
      `select id, workflow_created_at < now() - interval '90 minutes' as kept_place from tm_tasks where id = any($1)`,
      [[inWorkflow, alone]],
    );
    expect(Object.fromEntries(rows.map((r) => [r.id, r.kept_place]))).toEqual({
      [inWorkflow]: true,
      [alone]: false,
    });
    await db.pool.query(`delete from tm_tasks where name = 'parked'`);
  });
});

describe('purging dead letters', () => {
  it('purges by ids, by name and by age', async () => {
    const [x, y] = [await insertDead({ name: 'px' }), await insertDead({ name: 'px' })];
    const old = await insertDead({ name: 'py', failedAgoMs: 3_600_000 });
    const fresh = await insertDead({ name: 'py' });
    expect(await purgeDeadLetters(db.pool, { ids: [x] })).toEqual({ purged: 1 });
    expect(await purgeDeadLetters(db.pool, { olderThanMs: 60_000 })).toEqual({ purged: 1 });
    expect(await deadIds()).toEqual([y, fresh].sort());
    expect(await purgeDeadLetters(db.pool, { name: 'py', olderThanMs: 60_000 })).toEqual({ purged: 0 });
    expect(await purgeDeadLetters(db.pool, { name: 'px' })).toEqual({ purged: 1 });
    expect(await purgeDeadLetters(db.pool, { olderThanMs: 0 })).toEqual({ purged: 1 });
    expect(await deadIds()).toEqual([]);
    expect(old).not.toBe(fresh);
  });

  it('changes nothing on an unknown id or a bad selector', async () => {
    const id = await insertDead();
    await expect(purgeDeadLetters(db.pool, { ids: [id, uuidv7()] })).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    for (const selector of [
      {},
      { ids: [id], name: 'parked' },
      { olderThanMs: -1 },
      { everything: true },
      { name: 3 },
    ]) {
      await expect(purgeDeadLetters(db.pool, selector as never)).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
      });
    }
    expect(await deadIds()).toEqual([id]);
  });
});

describe('dead letters and strict affinity', () => {
  it('moves a strict key on to its next task when the head task is dead-lettered', async () => {
    const head = await node.client.schedule(strictFails, { affinity: 'k-1' });
    const next = await node.client.schedule(defs.recordStrict, {
      affinity: 'k-1',
      message: { url: db.url, key: 'k-1' },
    });
    expect(await waitEnded(head)).toMatchObject({ state: 'dead' });
    expect(await waitEnded(next)).toMatchObject({ state: 'completed' });
    const { rows } = await db.pool.query(
      `select r.started_at >= d.failed_at as after from runs r, tm_dead_letters d
       where r.task_id = $1 and d.id = $2`,
      [next, head],
    );
    expect(rows).toEqual([{ after: true }]);
  });
});
