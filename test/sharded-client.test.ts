/**
 * The ShardedClient over two databases of the test server (each a shard with its own node and planner):
 * keys route by rendezvous hashing, keyless tasks take turns, ids are found on whichever shard holds
 * them, and what would cross shards (dependsOn, joins, workflows) is refused with CROSS_SHARD before
 * anything is written. The hash itself is pinned by values computed outside JavaScript.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import {
  PartialScheduleError,
  ShardedClient,
  TaskmillError,
  defaultShardKey,
  rendezvousShard,
  type ScheduleContext,
} from '../index.ts';
import { shardWeights } from '../client/shard-routing.ts';
import * as defs from './fixtures/definitions.ts';
import { count, useTestDatabase, type TestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const NAMES = ['a', 'b'];

describe('rendezvous hashing', () => {
  it('weighs keys as specified: FNV-1a 32 of key, NUL, shard name, then fmix32', () => {
    // Computed with an independent Python implementation of the formula in client/shard-routing.ts.
    expect(shardWeights('tenant\0acme', ['a', 'b', 'c'])).toEqual([4040090519, 1564466218, 347525899]);
    expect(shardWeights('affinity\0\0x', ['a', 'b', 'c'])).toEqual([1718114558, 2075267300, 761166221]);
    expect(shardWeights('é', ['a', 'b', 'c'])).toEqual([1783927679, 2859650736, 3570270271]);
    expect(rendezvousShard('tenant\0acme', ['a', 'b', 'c'])).toBe(0);
    expect(rendezvousShard('tenant\0acme', ['c', 'b', 'a'])).toBe(2);
  });

  it('spreads keys evenly, and a new shard takes only keys that move to it', () => {
    const keys = Array.from({ length: 6_000 }, (_, i) => `tenant\0t${i}`);
    const three = ['s1', 's2', 's3'];
    const four = [...three, 's4'];
    const before = keys.map((k) => three[rendezvousShard(k, three)]);
    const after = keys.map((k) => four[rendezvousShard(k, four)]);
    for (const s of three) {
      const n = before.filter((x) => x === s).length;
      expect(n).toBeGreaterThan(1_800);
      expect(n).toBeLessThan(2_200);
    }
    const moved = keys.filter((_, i) => before[i] !== after[i]);
    expect(moved.every((k) => after[keys.indexOf(k)] === 's4')).toBe(true);
    expect(moved.length).toBeGreaterThan(1_300);
    expect(moved.length).toBeLessThan(1_700);
  });

  it('keys a task by its affinity, else its concurrency key, else not at all', () => {
    expect(defaultShardKey('t', { affinityGroup: 'g', affinity: 'x', concurrencyKey: 'c' })).toBe(
      'affinity\0g\0x',
    );
    expect(defaultShardKey('t', { affinity: 'x' })).toBe(
      defaultShardKey('t', { affinityGroup: '', affinity: 'x' }),
    );
    expect(defaultShardKey('t', { concurrencyKey: 'acme' })).toBe('tenant\0acme');
    expect(defaultShardKey('t', { workflowId: '0190c5b4-0000-7000-8000-000000000000' })).toBeUndefined();
  });
});

describe('ShardedClient over two databases', () => {
  const dbA = useTestDatabase();
  let dbB: TestDatabase;
  let client: ShardedClient;
  const clients: ShardedClient[] = [];

  const open = (options: Partial<ConstructorParameters<typeof ShardedClient>[0]> = {}) => {
    const c = new ShardedClient({
      shards: [
        { name: 'a', pool: dbA.pool },
        { name: 'b', pool: dbB.pool },
      ],
      ...options,
    });
    clients.push(c);
    return c;
  };
  const shardPool = (name: string) => (name === 'a' ? dbA.pool : dbB.pool);
  const tasksIn = (pool: pg.Pool) => count(pool, 'select count(*) from tm_any_task');
  /** An affinity whose default key routes to the named shard. */
  const affinityOn = (shard: string, salt = '') => {
    for (let i = 0; ; i++) {
      const affinity = `${salt}k${i}`;
      if (NAMES[rendezvousShard(defaultShardKey('noop', { affinity })!, NAMES)] === shard) return affinity;
    }
  };

  beforeAll(async () => {
    dbB = await dbA.another();
    await startTestNode(dbA.url, { name: 'shard-a' });
    await startTestNode(dbB.url, { name: 'shard-b' });
    client = open();
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await stopAllNodes();
  });

  it('routes a keyed task to its shard; another client finds, waits for and reads it there', async () => {
    const onB = affinityOn('b');
    const id = await client.schedule(defs.echo, { affinity: onB, message: 'hello' });
    expect(await count(dbB.pool, 'select count(*) from tm_any_task where id = $1', [id])).toBe(1);
    expect(await count(dbA.pool, 'select count(*) from tm_any_task where id = $1', [id])).toBe(0);

    const fresh = open({ locateCacheSize: 0 });
    const done = await fresh.waitForTask<{ message: unknown }>(id, { timeoutMs: 30_000 });
    expect(done).toMatchObject({ id, state: 'completed', result: { message: 'hello' } });
    expect((await fresh.getTask(id))?.state).toBe('completed');
    expect((await fresh.shardOf(id))?.name).toBe('b');
    expect(await fresh.getTask('0190c5b4-0000-7000-8000-000000000000')).toBeUndefined();
    await expect(fresh.cancel('0190c5b4-0000-7000-8000-000000000000')).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    await expect(fresh.getTask('nope')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('spreads tasks without a key over the shards in turn, and returns ids in order', async () => {
    const before = await Promise.all(NAMES.map((n) => tasksIn(shardPool(n))));
    const ctxs: ScheduleContext<{ ms: number }>[] = Array.from({ length: 10 }, () => ({
      message: { ms: 60_000 },
      delayMs: 3_600_000,
    }));
    const ids = await client.scheduleMany(defs.sleep, ctxs);
    expect(new Set(ids).size).toBe(10);
    const after = await Promise.all(NAMES.map((n) => tasksIn(shardPool(n))));
    expect(after.map((n, i) => n - before[i])).toEqual([5, 5]);
    const shards = await Promise.all(ids.map(async (id) => (await client.shardOf(id))?.name));
    expect(shards.filter((s) => s === 'a')).toHaveLength(5);
    // They never run (an hour's delay): cancel them through the client, wherever they are.
    const fresh = open();
    for (const id of ids) expect(await fresh.cancel(id)).toBe('cancelled');
  });

  it('refuses dependsOn and joins across shards, and writes nothing', async () => {
    const onA = await client.schedule(defs.noop, { affinity: affinityOn('a', 'dep') });
    const onB = await client.schedule(defs.noop, { affinity: affinityOn('b', 'dep') });
    const before = await Promise.all(NAMES.map((n) => tasksIn(shardPool(n))));

    const refused = await client.schedule(defs.noop, {}, { dependsOn: [onA, onB] }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TaskmillError);
    expect(refused).toMatchObject({ code: 'CROSS_SHARD' });
    expect((refused as Error).message).toMatch(/shard a .* shard b|one shard/);
    await expect(client.scheduleJoin(defs.noop, {}, [onA, onB])).rejects.toMatchObject({
      code: 'CROSS_SHARD',
    });
    // Keyed for shard b, depending on a task of shard a.
    await expect(
      client.schedule(defs.noop, { affinity: affinityOn('b', 'other') }, { dependsOn: [onA] }),
    ).rejects.toMatchObject({ code: 'CROSS_SHARD' });
    expect(await Promise.all(NAMES.map((n) => tasksIn(shardPool(n))))).toEqual(before);

    // Without a key of its own, a dependent task follows its dependency.
    const follower = await client.schedule(defs.noop, {}, { dependsOn: [onA] });
    expect((await open({ locateCacheSize: 0 }).shardOf(follower))?.name).toBe('a');
  });

  it('keeps a workflow on one shard: a task naming it follows it, a task keyed elsewhere is refused', async () => {
    const first = await client.schedule(defs.noop, { affinity: affinityOn('a', 'wf') });
    const workflowId = (await client.getTask(first))!.workflowId;
    const fresh = open({ locateCacheSize: 0 });
    const second = await fresh.schedule(defs.noop, { workflowId });
    expect((await fresh.shardOf(second))?.name).toBe('a');
    await expect(
      fresh.schedule(defs.noop, { workflowId, affinity: affinityOn('b', 'wf') }),
    ).rejects.toMatchObject({ code: 'CROSS_SHARD' });
    const status = await fresh.waitForWorkflow(workflowId, { timeoutMs: 30_000 });
    expect(status).toMatchObject({ completed: 2, done: true });
    expect((await fresh.workflow(workflowId))?.total).toBe(2);
  });

  it('places a new named workflow by its id, so every client picks the same shard', async () => {
    const workflowId = '0190c5b4-1111-7000-8000-00000000abcd';
    const [x, y] = await Promise.all([
      open().schedule(defs.noop, { workflowId }),
      open().schedule(defs.noop, { workflowId }),
    ]);
    const [sx, sy] = await Promise.all([client.shardOf(x), client.shardOf(y)]);
    expect(sx?.name).toBe(sy?.name);
    expect((await client.waitForWorkflow(workflowId, { timeoutMs: 30_000 })).completed).toBe(2);
  });

  it('refuses what it cannot route: your transaction, a custom key missing for an affinity', async () => {
    await expect(
      client.schedule(defs.noop, {}, { client: dbA.pool } as unknown as { dependsOn?: string[] }),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/shardFor/) });
    const byTenant = open({ shardKey: (_name, ctx) => ctx.concurrencyKey });
    await expect(byTenant.schedule(defs.noop, { affinity: 'x' })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/affinity/),
    });
    const shard = await byTenant.shardFor(defs.noop, { concurrencyKey: 'acme', affinity: 'x' });
    expect(shard.name).toBe(NAMES[rendezvousShard('acme', NAMES)]);
  });

  it('sets limits on every shard, sends events to every shard, and reports every shard', async () => {
    await client.setConcurrencyLimit('tenant:*', 3);
    await client.setRateLimit('api:*', { limit: 10, windowMs: 1_000 });
    for (const pool of [dbA.pool, dbB.pool]) {
      expect(
        await count(pool, `select count(*) from tm_flow_limits where pattern in ('tenant:*', 'api:*')`),
      ).toBe(2);
    }
    await client.setConcurrencyLimit('tenant:*', null);
    await client.setRateLimit('api:*', null);
    expect(await count(dbB.pool, `select count(*) from tm_flow_limits`)).toBe(0);
    expect(await client.sendEvent('nobody-waits', 'k')).toBe(0);
    const clusters = await client.cluster();
    expect(clusters.map((c) => c.shard)).toEqual(NAMES);
    expect(clusters.map((c) => c.overview.nodes.map((n) => n.name))).toEqual([['shard-a'], ['shard-b']]);
  });

  it('validates its configuration', () => {
    const bad = (options: unknown) => () => new ShardedClient(options as never);
    expect(bad({ shards: [] })).toThrow(/needs `shards`/);
    expect(bad({ shards: [{ name: 'a b', pool: dbA.pool }] })).toThrow(/name of 1-100/);
    expect(
      bad({
        shards: [
          { name: 'a', pool: dbA.pool },
          { name: 'a', pool: dbB.pool },
        ],
      }),
    ).toThrow(/unique/);
    expect(bad({ shards: [{ name: 'a', pool: dbA.pool }], locateCacheSize: -1 })).toThrow(/locateCacheSize/);
  });

  it('reports what it committed when one shard of a scheduleMany fails', async () => {
    const broken = await dbA.another({ migrated: false });
    const partial = new ShardedClient({
      shards: [
        { name: 'a', pool: dbA.pool },
        { name: 'c', pool: broken.pool },
      ],
    });
    clients.push(partial);
    const ctxs = Array.from({ length: 4 }, () => ({ delayMs: 3_600_000 }));
    const error = await partial.scheduleMany(defs.noop, ctxs).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PartialScheduleError);
    const p = error as PartialScheduleError;
    expect(p.code).toBe('PARTIALLY_SCHEDULED');
    expect(p.failed.map((f) => f.shard)).toEqual(['c']);
    expect(p.scheduled).toEqual([{ shard: 'a', ids: expect.any(Array) }]);
    expect(p.scheduled[0].ids).toHaveLength(2);
    expect(p.cause).toMatchObject({ code: 'NOT_MIGRATED' });
    for (const id of p.scheduled[0].ids) await partial.cancel(id);
  });
});
