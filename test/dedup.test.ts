/**
 * Deduplication (idempotencyKey) and debounce (debounce: { key, delayMs }) of scheduled tasks:
 * tm_schedule_keyed (migrations/008) decides each key on its committed row, so concurrent schedulers
 * agree; what "the same key" spans (one task name) and the retention window after the end.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TaskmillClient } from '../client/client.ts';
import { TaskmillError } from '../task/errors.ts';
import { decode } from '../task/codec.ts';
import { purgeKeysAndProgress } from '../store/history.ts';
import { count, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';
import { echo, noop, sleep } from './fixtures/definitions.ts';

const db = useTestDatabase();
let client: TaskmillClient;

beforeAll(() => {
  client = new TaskmillClient({ pool: db.pool });
});
afterAll(async () => {
  await stopAllNodes();
  await client?.close();
});

const rows = (key: string) =>
  count(db.pool, `select count(*) from tm_tasks t join tm_task_keys k on k.task_id = t.id where k.key = $1`, [
    key,
  ]);

async function messageOf(id: string): Promise<unknown> {
  const { rows } = await db.pool.query<{ message: Buffer }>(`select message from tm_tasks where id = $1`, [
    id,
  ]);
  return decode(rows[0].message);
}

describe('idempotencyKey', () => {
  it('a second schedule with the key returns the first task and writes nothing', async () => {
    const first = await client.schedule(echo, { message: 1, idempotencyKey: 'order-1' });
    const before = await count(db.pool, `select count(*) from tm_tasks`);
    const second = await client.schedule(echo, { message: 2, idempotencyKey: 'order-1' });
    expect(second).toBe(first);
    expect(await count(db.pool, `select count(*) from tm_tasks`)).toBe(before);
    expect(await messageOf(first)).toBe(1);
  });

  it('keeps the concurrency key of a keyed schedule (and of the unkeyed tasks of its batch)', async () => {
    const keyed = await client.schedule(echo, { idempotencyKey: 'with-tenant', concurrencyKey: 'tenant-7' });
    const debounced = await client.schedule(echo, {
      debounce: { key: 'tenant-debounce', delayMs: 60_000 },
      concurrencyKey: 'tenant-8',
    });
    const { rows } = await db.pool.query<{ id: string; concurrency_key: string }>(
      `select id, concurrency_key from tm_tasks where id = any($1) order by concurrency_key`,
      [[keyed, debounced]],
    );
    expect(rows).toEqual([
      { id: keyed, concurrency_key: 'tenant-7' },
      { id: debounced, concurrency_key: 'tenant-8' },
    ]);
  });

  it('is per task name: the same key on another task is another task', async () => {
    const a = await client.schedule(echo, { idempotencyKey: 'shared-key' });
    const b = await client.schedule(noop, { idempotencyKey: 'shared-key' });
    expect(b).not.toBe(a);
  });

  it('is exact under concurrent schedulers: one task, every caller gets its id', async () => {
    // Several pools, so the inserts really race on separate sessions.
    const pools = Array.from({ length: 4 }, () => new pg.Pool({ connectionString: db.url, max: 5 }));
    const clients = pools.map((pool) => new TaskmillClient({ pool }));
    try {
      const ids = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          clients[i % clients.length].schedule(echo, { message: i, idempotencyKey: 'race' }),
        ),
      );
      expect(new Set(ids).size).toBe(1);
      expect(await rows('race')).toBe(1);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await Promise.all(pools.map((p) => p.end()));
    }
  });

  it('within one batch, tasks with one key are one task; tasks without a key are inserted', async () => {
    const ids = await client.scheduleMany(echo, [
      { message: 'a', idempotencyKey: 'batch-key' },
      { message: 'plain' },
      { message: 'b', idempotencyKey: 'batch-key' },
    ]);
    expect(ids[2]).toBe(ids[0]);
    expect(ids[1]).not.toBe(ids[0]);
    expect(await messageOf(ids[0])).toBe('a');
    expect(await messageOf(ids[1])).toBe('plain');
  });

  it('an ended task lets its key go, unless it ended within its retention window', async () => {
    const plain = await client.schedule(echo, { idempotencyKey: 'ends' });
    await client.cancel(plain);
    expect(await client.schedule(echo, { idempotencyKey: 'ends' })).not.toBe(plain);

    const kept = await client.schedule(echo, { idempotencyKey: 'kept', idempotencyRetentionMs: 3_600_000 });
    await client.cancel(kept);
    expect(await client.schedule(echo, { idempotencyKey: 'kept' })).toBe(kept);
    // Once the window has passed (the task ended over an hour ago), the key is free again.
    await db.pool.query(`update tm_history set finished_at = now() - interval '2 hours' where id = $1`, [
      kept,
    ]);
    const next = await client.schedule(echo, { idempotencyKey: 'kept' });
    expect(next).not.toBe(kept);
    expect((await client.getTask(next))?.state).toBe('ready');
  });
});

describe('debounce', () => {
  it('replaces the pending task message and pushes its start; works within a batch', async () => {
    const first = await client.schedule(echo, { message: 1, debounce: { key: 'user-7', delayMs: 60_000 } });
    const before = (await client.getTask(first))!.notBefore!;
    const ids = await client.scheduleMany(echo, [
      { message: 2, debounce: { key: 'user-7', delayMs: 120_000 } },
      { message: 3, debounce: { key: 'user-7', delayMs: 120_000 } },
    ]);
    expect(ids).toEqual([first, first]);
    expect(await messageOf(first)).toBe(3);
    const after = (await client.getTask(first))!.notBefore!;
    expect(after.getTime() - before.getTime()).toBeGreaterThan(50_000);
    expect(await rows('user-7')).toBe(1);
  });

  it('concurrent debounces of one key leave one pending task with one of their messages', async () => {
    const ids = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        client.schedule(echo, { message: i, debounce: { key: 'burst', delayMs: 60_000 } }),
      ),
    );
    expect(new Set(ids).size).toBe(1);
    expect(await rows('burst')).toBe(1);
  });

  it('once the task has started, a new schedule creates a new task, which runs with the last message', async () => {
    await startTestNode(db.url);
    try {
      const first = await client.schedule(sleep, {
        message: { ms: 3_000 },
        debounce: { key: 'run', delayMs: 0 },
      });
      await expect
        .poll(async () => (await client.getTask(first))?.state, { timeout: 30_000 })
        .toBe('running');
      const second = await client.schedule(sleep, {
        message: { ms: 1 },
        debounce: { key: 'run', delayMs: 0 },
      });
      expect(second).not.toBe(first);
      expect((await client.waitForTask(second, { timeoutMs: 30_000 })).state).toBe('completed');
      expect((await client.waitForTask(first, { timeoutMs: 30_000 })).state).toBe('completed');
    } finally {
      await stopAllNodes();
    }
  });
});

describe('bad input changes nothing', () => {
  const cases: [string, object][] = [
    ['negative debounce delay', { debounce: { key: 'k', delayMs: -1 } }],
    ['oversized key', { idempotencyKey: 'x'.repeat(1_001) }],
    ['empty key', { idempotencyKey: '' }],
    ['unknown debounce option', { debounce: { key: 'k', delayMs: 1, maxWaitMs: 5 } }],
    ['debounce with delayMs', { debounce: { key: 'k', delayMs: 1 }, delayMs: 5 }],
    ['both kinds of key', { debounce: { key: 'k', delayMs: 1 }, idempotencyKey: 'k' }],
    ['retention without a key', { idempotencyRetentionMs: 1_000 }],
    ['negative retention', { idempotencyKey: 'k', idempotencyRetentionMs: -1 }],
  ];
  it.each(cases)('%s', async (_what, ctx) => {
    const before = await count(db.pool, `select count(*) from tm_tasks`);
    const error = await client.schedule(echo, ctx).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TaskmillError);
    expect((error as TaskmillError).code).toBe('INVALID_ARGUMENT');
    expect(await count(db.pool, `select count(*) from tm_tasks`)).toBe(before);
  });

  it('a key with dependsOn', async () => {
    const dep = await client.schedule(echo, {});
    await expect(
      client.schedule(echo, { idempotencyKey: 'dep' }, { dependsOn: [dep] }),
    ).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
  });
});

describe('history retention', () => {
  it('deletes keys their tasks let go and progress of tasks gone, once older than the retention', async () => {
    const pending = await client.schedule(echo, { idempotencyKey: 'old-pending' });
    const ended = await client.schedule(echo, { idempotencyKey: 'old-ended' });
    await client.cancel(ended);
    await db.pool.query(`update tm_task_keys set created_at = now() - interval '2 days'`);
    await db.pool.query(
      `insert into tm_task_progress (task_id, value, updated_at)
       values ($1, '1', now() - interval '2 days'), ($2, '2', now() - interval '2 days'), (gen_random_uuid(), '3', now())`,
      [pending, ended],
    );
    const before = new Date(Date.now() - 86_400_000);
    expect(await purgeKeysAndProgress(db.pool, before)).toBeGreaterThanOrEqual(2);
    expect(await count(db.pool, `select count(*) from tm_task_keys where key = 'old-pending'`)).toBe(1);
    expect(await count(db.pool, `select count(*) from tm_task_keys where key = 'old-ended'`)).toBe(0);
    expect(await count(db.pool, `select count(*) from tm_task_progress where task_id = $1`, [pending])).toBe(
      1,
    );
    expect(await count(db.pool, `select count(*) from tm_task_progress where task_id = $1`, [ended])).toBe(0);
    expect(await count(db.pool, `select count(*) from tm_task_progress where value = '3'`)).toBe(1);
  });
});
