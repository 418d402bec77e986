/**
 * The completer against a real database: batches bounded by bytes as well as count, a failed batch
 * bisected so one bad row fails alone (with a clear error, by its retry policy) while the others
 * commit, error texts made storable, and outcomes kept (never failed) while the database is away.
 */
import type pg from 'pg';
import { v4 as uuidv4 } from 'uuid';
import { afterEach, describe, expect, it } from 'vitest';
import { Completer, MAX_TRANSIENT_RETRIES, takeBatch, type FlushResult } from '../node/completer.ts';
import { encode } from '../task/codec.ts';
import { newTask } from '../task/schedule-context.ts';
import { storableError } from '../store/tasks.ts';
import type { DoneOutcome, Outcome } from '../task/outcome.ts';
import type { FailedAttempt, Settlement } from '../task/settle.ts';
import * as defs from './fixtures/definitions.ts';
import { count, useTestDatabase } from './helpers/database.ts';
import { insertTasks, taskStates } from './helpers/factory.ts';

const db = useTestDatabase();
const nodeId = uuidv4();

afterEach(async () => {
  await db.pool.query('truncate tm_tasks, tm_history, tm_dead_letters');
});

/** `n` tasks running on `nodeId` under assignment 1. */
async function running(n: number): Promise<string[]> {
  const rows = await insertTasks(
    db.pool,
    Array.from({ length: n }, () => ({ state: 'running' as const, nodeId })),
  );
  return rows.map((r) => r.id);
}

const task = (id: string) => ({ id, name: defs.noop.name, assignment: 1, attempt: 0, createdAt: new Date() });
const DEAD: FailedAttempt = { retryDelayMs: null, deadLetter: true, cancelled: false };

/** A success and its settlement (by default: dead letter if the database refuses it). */
const success = (
  id: string,
  result: unknown = 'ok',
  extra: Partial<DoneOutcome> = {},
  ifRejected: FailedAttempt = DEAD,
): [Outcome, Settlement] => [
  { kind: 'done', task: task(id), result: encode(result), children: [], joinMessages: [], ...extra },
  { action: 'complete', ifRejected },
];

/** A failed attempt (error `Error: <message>`) that ends in the dead-letter table. */
const failure = (id: string, message: string): [Outcome, Settlement] => [
  { kind: 'failed', task: task(id), error: { name: 'Error', message }, stopRetry: false },
  { action: 'fail', ...DEAD },
];

/** A completer that flushes only when told (drain) and records its flushes and errors. */
function completer(options: Partial<ConstructorParameters<typeof Completer>[0]> = {}) {
  const flushes: FlushResult[] = [];
  const errors: unknown[] = [];
  const c = new Completer({
    db: db.pool,
    nodeId,
    flushIntervalMs: 60_000,
    onFlush: (f) => flushes.push(f),
    onError: (e) => errors.push(e),
    ...options,
  });
  return { c, flushes, errors };
}

const total = (flushes: FlushResult[], key: 'completed' | 'retried' | 'deadLettered' | 'stale') =>
  flushes.reduce((n, f) => n + f[key], 0);

describe('takeBatch', () => {
  const q = (...sizes: number[]) => sizes.map((bytes, i) => ({ i, bytes }));
  it.each([
    { sizes: [10, 10, 10], count: 10, bytes: 100, atLeastOne: true, taken: 3 },
    { sizes: [10, 10, 10], count: 2, bytes: 100, atLeastOne: true, taken: 2 },
    { sizes: [10, 10, 10], count: 10, bytes: 25, atLeastOne: true, taken: 2 },
    { sizes: [10, 10, 10], count: 10, bytes: 20, atLeastOne: true, taken: 2 },
    { sizes: [50, 10, 10], count: 10, bytes: 20, atLeastOne: true, taken: 1 },
    { sizes: [50, 10, 10], count: 10, bytes: 20, atLeastOne: false, taken: 0 },
    { sizes: [10, 50, 10], count: 10, bytes: 20, atLeastOne: true, taken: 1 },
    { sizes: [10, 10], count: 0, bytes: 100, atLeastOne: true, taken: 0 },
    { sizes: [], count: 10, bytes: 100, atLeastOne: true, taken: 0 },
  ])(
    '$sizes within $count items and $bytes bytes takes $taken',
    ({ sizes, count, bytes, atLeastOne, taken }) => {
      const queue = q(...sizes);
      const batch = takeBatch(queue, count, bytes, atLeastOne);
      expect(batch.map((e) => e.i)).toEqual(sizes.slice(0, taken).map((_, i) => i));
      expect(queue.length).toBe(sizes.length - taken);
    },
  );
});

describe('storableError', () => {
  it('keeps a short text, replaces NUL characters, and cuts a long one with a marker', () => {
    expect(storableError('boom', 1024)).toBe('boom');
    expect(storableError('a\0b', 1024)).toBe('a\uFFFDb');
    const cut = storableError('é'.repeat(10_000), 1024);
    expect(Buffer.byteLength(cut)).toBeLessThanOrEqual(1024);
    expect(cut).toMatch(/^é+\n\[truncated: \d+ of 20000 bytes kept\]$/);
  });
});

describe('the completer', () => {
  it('bounds a batch by bytes as well as by count', async () => {
    const ids = await running(10);
    const { c, flushes } = completer({ maxBatchBytes: 5_000 });
    for (const id of ids) c.add(...success(id, 'x'.repeat(2_000)));
    expect(await c.drain()).toBe(0);
    expect(total(flushes, 'completed')).toBe(10);
    // Two results of about 2 KB fit in 5,000 bytes, three do not.
    expect(flushes.map((f) => f.completed)).toEqual([2, 2, 2, 2, 2]);
    // A single outcome over the budget still goes, alone.
    const [big] = await running(1);
    c.add(...success(big, 'x'.repeat(10_000)));
    await c.drain();
    expect(flushes.at(-1)?.completed).toBe(1);
  });

  it('reports exactly-once outcomes their thread committed, writing nothing for them', async () => {
    const statements: unknown[] = [];
    const recording = {
      query: (...args: unknown[]) => {
        statements.push(args[0]);
        return (db.pool.query as (...a: unknown[]) => Promise<unknown>)(...args);
      },
    } as unknown as pg.Pool;
    const { c, flushes } = completer({ db: recording });
    const committed = (id: string, outcome: 'completed' | 'cancelled' | 'stale'): [Outcome, Settlement] => [
      { kind: 'committed', task: task(id), outcome },
      { action: 'committed' },
    ];
    c.add(...committed('a', 'completed'));
    c.add(...committed('b', 'cancelled'));
    c.add(...committed('c', 'stale'));
    expect(c.pending).toBe(3);
    expect(await c.drain()).toBe(0);
    expect(statements).toEqual([]);
    expect(flushes).toEqual([
      {
        completed: 1,
        retried: 0,
        deadLettered: 0,
        failed: 0,
        cancelled: 1,
        suspended: 0,
        stale: 1,
        accepted: [
          { id: 'a', name: defs.noop.name, outcome: 'completed' },
          { id: 'b', name: defs.noop.name, outcome: 'cancelled' },
        ],
        // Committed by their threads: this flush wrote nothing.
        batchSize: 0,
        durationMs: 0,
      },
    ]);
  });

  it('reports saturation by bytes as well as by count', async () => {
    const [id] = await running(1);
    const { c } = completer({ highWaterMarkBytes: 100_000, maxBatchBytes: 1_000_000 });
    c.add(...success(id, 'x'.repeat(50_000)));
    expect(c.saturated).toBe(false);
    c.add(...success(id, 'x'.repeat(60_000)));
    expect(c.pendingBytes).toBeGreaterThan(100_000);
    expect(c.saturated).toBe(true);
    await c.drain();
    expect(c.saturated).toBe(false);
  });

  it('bisects a refused batch: the bad row fails alone by its retry policy, the others commit', async () => {
    const ids = await running(9);
    const bad = ids[3];
    const badToo = ids[7];
    const child = newTask(defs.noop, {});
    // A row the database refuses (integer out of range): the whole statement fails with it.
    child.priority = 2 ** 31;
    const { c, flushes, errors } = completer();
    for (const id of ids) {
      if (id === bad) c.add(...success(id, 'ok', { children: [child] }, { ...DEAD, retryDelayMs: 0 }));
      else if (id === badToo) c.add(...success(id, 'ok', { children: [{ ...child, id: uuidv4() }] }));
      else c.add(...success(id));
    }
    expect(await c.drain()).toBe(0);
    expect(total(flushes, 'completed')).toBe(7);
    expect(
      await count(db.pool, `select count(*) from tm_history where id = any($1) and state = 'completed'`, [
        ids,
      ]),
    ).toBe(7);
    // Retried by its policy, with a clear error.
    const states = await taskStates(db.pool, [bad]);
    expect(states.get(bad)).toMatchObject({ state: 'ready', attempt: 1 });
    const { rows } = await db.pool.query(`select last_error from tm_tasks where id = $1`, [bad]);
    expect(rows[0].last_error).toMatch(/COMPLETION_FAILED.*could not be committed.*22003.*out of range/s);
    // Without a policy: the dead-letter table.
    const dead = await db.pool.query(`select error from tm_dead_letters where id = $1`, [badToo]);
    expect(dead.rows[0].error).toMatch(/COMPLETION_FAILED/);
    expect(total(flushes, 'retried')).toBe(1);
    expect(total(flushes, 'deadLettered')).toBe(1);
    expect(errors.map((e) => (e as { code?: string }).code)).toEqual([
      'COMPLETION_FAILED',
      'COMPLETION_FAILED',
    ]);
    // No child of a refused completion was written.
    expect(await count(db.pool, `select count(*) from tm_tasks where parent_id = any($1)`, [ids])).toBe(0);
  });

  it('stores an error text holding NUL characters, bounded to maxErrorBytes', async () => {
    const ids = await running(3);
    const { c, flushes } = completer({ maxErrorBytes: 2_048 });
    c.add(...failure(ids[0], 'bad\0byte'));
    c.add(...failure(ids[1], 'e'.repeat(1_000_000)));
    c.add(...failure(ids[2], 'plain'));
    expect(await c.drain()).toBe(0);
    expect(total(flushes, 'deadLettered')).toBe(3);
    const { rows } = await db.pool.query<{ id: string; error: string }>(
      `select id, error from tm_dead_letters where id = any($1)`,
      [ids],
    );
    const error = new Map(rows.map((r) => [r.id, r.error]));
    expect(error.get(ids[0])).toBe('Error: bad\uFFFDbyte');
    expect(Buffer.byteLength(error.get(ids[1])!)).toBeLessThanOrEqual(2_048);
    expect(error.get(ids[1])).toMatch(/^Error: e+\n\[truncated: \d+ of 1000007 bytes kept\]$/);
    expect(error.get(ids[2])).toBe('Error: plain');
  });

  it('keeps every outcome while the database is unreachable, backing off, and commits them once it is back', async () => {
    const ids = await running(6);
    let down = true;
    const calls = { n: 0 };
    const flaky = {
      query: (...args: unknown[]) => {
        calls.n++;
        if (down) {
          const error = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), {
            code: 'ECONNREFUSED',
          });
          return Promise.reject(error);
        }
        return (db.pool.query as (...a: unknown[]) => Promise<unknown>)(...args);
      },
    } as unknown as pg.Pool;
    const { c, flushes } = completer({ db: flaky, maxRetryDelayMs: 400 });
    for (const id of ids.slice(0, 5)) c.add(...success(id));
    c.add(...failure(ids[5], 'boom'));
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      await expect(c.runOnce()).rejects.toMatchObject({ code: 'ECONNREFUSED' });
      delays.push(c.retryDelay);
      expect(c.pending).toBe(6);
    }
    // One statement per flush: nothing bisected, nothing turned into a failure.
    expect(calls.n).toBe(6);
    expect(delays).toEqual([50, 100, 200, 400, 400, 400]);
    expect(flushes).toEqual([]);
    expect((await taskStates(db.pool, ids)).size).toBe(6);
    down = false;
    expect(await c.drain()).toBe(0);
    expect(total(flushes, 'completed')).toBe(5);
    expect(total(flushes, 'deadLettered')).toBe(1);
    expect(c.retryDelay).toBe(0);
  });

  it('retries a batch hit by a deadlock as it is, then bisects it when the conflict persists', async () => {
    const ids = await running(4);
    const tries: number[] = [];
    const conflicting = {
      query: (...args: unknown[]) => {
        const batch = (args[1] as unknown[])[1] as string[];
        tries.push(batch.length);
        if (batch.length > 1) {
          return Promise.reject(Object.assign(new Error('deadlock detected'), { code: '40P01' }));
        }
        return (db.pool.query as (...a: unknown[]) => Promise<unknown>)(...args);
      },
    } as unknown as pg.Pool;
    const { c, flushes } = completer({ db: conflicting, maxRetryDelayMs: 1 });
    for (const id of ids) c.add(...success(id));
    for (let i = 0; i < MAX_TRANSIENT_RETRIES; i++) {
      await expect(c.runOnce()).rejects.toMatchObject({ code: '40P01' });
      expect(c.pending).toBe(4);
    }
    expect(tries).toEqual(Array(MAX_TRANSIENT_RETRIES).fill(4));
    const result = await c.runOnce();
    expect(result.completed).toBe(4);
    expect(total(flushes, 'completed')).toBe(4);
  });

  it('paces partial flushes by the time the last one took, and sends a full batch at once', async () => {
    const ids = await running(9);
    // Every statement takes at least 20 ms: a flush of d >= 20 ms, and with a share of 0.1 the next
    // partial flush waits 9 x d, bounded by maxFlushIntervalMs.
    const starts: number[] = [];
    const ends: number[] = [];
    const slow = {
      query: async (...args: unknown[]) => {
        starts.push(performance.now());
        await new Promise((resolve) => setTimeout(resolve, 20));
        const result = await (db.pool.query as (...a: unknown[]) => Promise<unknown>)(...args);
        ends.push(performance.now());
        return result;
      },
    } as unknown as pg.Pool;
    const { c, flushes } = completer({
      db: slow,
      flushIntervalMs: 5,
      maxFlushIntervalMs: 120,
      flushShare: 0.1,
      batchSize: 3,
    });
    expect(c.partialFlushDelay()).toBe(5); // nothing flushed yet: the base interval
    // A flush of one outcome does not pace the next: outcomes do not arrive faster than flushes.
    c.add(...success(ids[0]));
    await expect.poll(() => flushes.length, { timeout: 30_000 }).toBe(1);
    expect(c.partialFlushDelay()).toBe(5);

    // A flush of two does: a partial batch right after waits for the paced time from the flush's end.
    c.add(...success(ids[1]));
    c.add(...success(ids[2]));
    await expect.poll(() => flushes.length, { timeout: 30_000 }).toBe(2);
    c.add(...success(ids[3]));
    await expect.poll(() => flushes.length, { timeout: 30_000 }).toBe(3);
    expect(starts[2] - ends[1]).toBeGreaterThanOrEqual(119);

    // A full batch goes at once: its statement has started before add() returns.
    const before = starts.length;
    for (const id of ids.slice(4, 7)) c.add(...success(id));
    expect(starts.length).toBe(before + 1);
    await expect.poll(() => flushes.length, { timeout: 30_000 }).toBe(4);

    // A share of 1 turns pacing off: a partial batch goes after flushIntervalMs whatever came before.
    const unpaced = completer({ db: slow, flushIntervalMs: 5, maxFlushIntervalMs: 120, flushShare: 1 });
    unpaced.c.add(...success(ids[7]));
    unpaced.c.add(...success(ids[8]));
    await expect.poll(() => unpaced.flushes.length, { timeout: 30_000 }).toBe(1);
    expect(unpaced.c.partialFlushDelay()).toBe(5);
    expect(total([...flushes, ...unpaced.flushes], 'completed')).toBe(9);
  });
});
