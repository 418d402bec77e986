/**
 * Flow control in the planner's claim (docs/flow-control.md), one pass at a time: rows are written with
 * the factory, `runOnce()` is called directly, and what it assigned is read back from tm_tasks. Every
 * limit is read from rows, so a second Planner object (a new leader after a failover) decides the same.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import type { PlannerOptions } from '../planner/planner.ts';
import { byPriority, planGroups, roundRobin } from '../planner/flow.ts';
import { TaskmillClient, TaskmillError, defineTask } from '../index.ts';
import { newTask } from '../task/schedule-context.ts';
import { completeTasks, failTasks } from '../store/tasks.ts';
import { requeueDeadLetters } from '../store/dead-letters.ts';
import { count, useTestDatabase } from './helpers/database.ts';
import {
  heldIds,
  insertNode,
  insertTasks,
  leadingPlanner,
  removeTasks,
  type TaskRow,
} from './helpers/factory.ts';
import { databaseDigest, registerDefinitions } from './helpers/snapshot.ts';
import { buildHttpApp } from '../http/server.ts';
import { runCliCaptured } from './helpers/cli.ts';
import { EXIT } from '../cli/output.ts';
import { createLogger } from '../log/logger.ts';
import { noop } from './fixtures/definitions.ts';

const db = useTestDatabase();

beforeEach(async () => {
  await db.pool.query('truncate tm_tasks, tm_nodes, tm_task_defs, tm_flow_limits, tm_flow_starts cascade');
});

const planner = (options: Partial<PlannerOptions> = {}) => leadingPlanner(db.pool, options);

/** Inserts `n` ready `noop` tasks of a key in one statement (a flood). */
async function flood(key: string, n: number): Promise<void> {
  await db.pool.query(
    `insert into tm_tasks (id, name, workflow_id, workflow_created_at, concurrency_key)
     select gen_random_uuid(), 'noop', gen_random_uuid(), now(), $1 from generate_series(1, $2)`,
    [key, n],
  );
}

/** Inserts `n` ready tasks with a concurrency key (the factory writes rows; the key is set after). */
async function keyed(key: string, n: number, row: TaskRow = {}): Promise<string[]> {
  const tasks = await insertTasks(
    db.pool,
    Array.from({ length: n }, () => row),
  );
  const ids = tasks.map((t) => t.id);
  await db.pool.query(`update tm_tasks set concurrency_key = $2 where id = any($1)`, [ids, key]);
  return ids;
}

async function defOptions(name: string, options: object): Promise<void> {
  await db.pool.query(
    `insert into tm_task_defs (name, options) values ($1, $2)
     on conflict (name) do update set options = excluded.options`,
    [name, JSON.stringify(options)],
  );
}

async function heldOf(ids: string[]): Promise<number> {
  return count(db.pool, `select count(*) from tm_tasks where id = any($1) and node_id is not null`, [ids]);
}

const client = () => new TaskmillClient({ pool: db.pool });

describe('concurrency groups', () => {
  it('holds a key pattern limit across passes and across task names, and frees a slot per ended task', async () => {
    await insertNode(db.pool, { capacity: 100, taskNames: ['noop', 'other'] });
    await client().setConcurrencyLimit('tenant:*', 3);
    const a = [...(await keyed('tenant:a', 5)), ...(await keyed('tenant:a', 5, { name: 'other' }))];
    const b = await keyed('tenant:b', 4);
    const free = await keyed('', 6);
    const unmatched = await keyed('other:x', 6);

    await planner().runOnce();
    expect(await heldOf(a)).toBe(3);
    expect(await heldOf(b)).toBe(3);
    expect(await heldOf(free)).toBe(6);
    expect(await heldOf(unmatched)).toBe(6);

    // A new planner (as after a failover) sees the same rows and starts nothing more.
    await planner().runOnce();
    expect(await heldOf(a)).toBe(3);

    const running = (await heldIds(db.pool)).filter((id) => a.includes(id));
    await removeTasks(db.pool, running.slice(0, 2));
    await planner().runOnce();
    expect(await heldOf(a)).toBe(3);
    expect(await count(db.pool, `select count(*) from tm_tasks where id = any($1)`, [a])).toBe(8);
  });

  it('applies the most specific pattern: the key itself, else the longest', async () => {
    await insertNode(db.pool, { capacity: 100 });
    const c = client();
    await c.setConcurrencyLimit('*', 1);
    await c.setConcurrencyLimit('tenant:*', 2);
    await c.setConcurrencyLimit('tenant:big', 4);
    const big = await keyed('tenant:big', 6);
    const small = await keyed('tenant:small', 6);
    const other = await keyed('x', 6);
    await planner().runOnce();
    expect([await heldOf(big), await heldOf(small), await heldOf(other)]).toEqual([4, 2, 1]);
    expect(await c.flowLimits()).toEqual([
      { pattern: '*', concurrency: 1, rate: null },
      { pattern: 'tenant:*', concurrency: 2, rate: null },
      { pattern: 'tenant:big', concurrency: 4, rate: null },
    ]);
    await c.setConcurrencyLimit('tenant:big', null);
    expect((await c.flowLimits()).map((l) => l.pattern)).toEqual(['*', 'tenant:*']);
  });

  it("limits a definition's tasks per key, tasks without a key sharing one group", async () => {
    await insertNode(db.pool, { capacity: 100 });
    await defOptions('noop', { concurrency: { limit: 2 } });
    const a = await keyed('a', 5);
    const b = await keyed('b', 5);
    const none = await keyed('', 5);
    await planner().runOnce();
    expect([await heldOf(a), await heldOf(b), await heldOf(none)]).toEqual([2, 2, 2]);
  });

  it('counts the tasks of a dead node until they are taken back', async () => {
    const dead = await insertNode(db.pool, { heartbeatAgoMs: 60_000 });
    await insertNode(db.pool, { capacity: 100 });
    await client().setConcurrencyLimit('k', 2);
    const held = await insertTasks(db.pool, [{ state: 'running', nodeId: dead }]);
    await db.pool.query(`update tm_tasks set concurrency_key = 'k' where id = $1`, [held[0].id]);
    const ready = await keyed('k', 5);
    await planner().runOnce();
    expect(await heldOf(ready)).toBe(1);
  });

  it('with a limit of 1 runs one task of a key at a time, as strict affinity does', async () => {
    await insertNode(db.pool, { capacity: 100 });
    await client().setConcurrencyLimit('one', 1);
    const limited = await keyed('one', 3);
    const strict = await insertTasks(
      db.pool,
      Array.from({ length: 3 }, () => ({ affinityGroup: 'g', affinity: 'one', strict: true })),
    );
    const p = planner();
    for (let i = 0; i < 3; i++) {
      await p.runOnce();
      expect(await heldOf(limited)).toBe(1);
      expect(await heldOf(strict.map((t) => t.id))).toBe(1);
      // Strict affinity also keeps creation order; the limit serves by priority, then creation order.
      expect(await heldIds(db.pool)).toEqual([limited[i], strict[i].id]);
      await removeTasks(db.pool, await heldIds(db.pool));
    }
  });
});

describe('rate limits', () => {
  it('starts at most K per window, counted from the log in the database across planners', async () => {
    await insertNode(db.pool, { capacity: 100 });
    await client().setRateLimit('api', { limit: 3, windowMs: 60_000 });
    const ids = await keyed('api', 10);
    await planner().runOnce();
    expect(await heldOf(ids)).toBe(3);
    await removeTasks(db.pool, await heldIds(db.pool));
    // Ended, but their starts still count in the window, for this planner and for a new one.
    await planner().runOnce();
    await planner({ fairness: false }).runOnce();
    expect(await heldOf(ids)).toBe(0);
    expect(await count(db.pool, `select count(*) from tm_flow_starts`)).toBe(3);
    // Move the logged starts out of the window: three more may start.
    await db.pool.query(`update tm_flow_starts set started_at = started_at - interval '61 seconds'`);
    await planner().runOnce();
    expect(await heldOf(ids)).toBe(3);
    expect(await count(db.pool, `select count(*) from tm_flow_starts`)).toBe(3);
  });

  it("limits a definition's starts per key", async () => {
    await insertNode(db.pool, { capacity: 100 });
    await defOptions('noop', { rateLimit: { limit: 2, windowMs: 60_000 } });
    const a = await keyed('a', 4);
    const none = await keyed('', 4);
    await planner().runOnce();
    expect([await heldOf(a), await heldOf(none)]).toEqual([2, 2]);
  });
});

describe('fairness across keys', () => {
  it("starts a trickling key's task in the first pass despite a flooded key; without fairness it waits", async () => {
    await insertNode(db.pool, { capacity: 5, taskNames: ['noop'] });
    await flood('flood', 500);
    const [trickle] = await keyed('trickle', 1);
    await planner({ batchSize: 10 }).runOnce();
    expect(await heldOf([trickle])).toBe(1);

    await db.pool.query('truncate tm_tasks');
    await flood('flood', 500);
    const [late] = await keyed('trickle', 1);
    await planner({ batchSize: 10, fairness: false }).runOnce();
    expect(await heldOf([late])).toBe(0);
  });

  it('serves every group within ceil(groups / free slots) passes when there are more groups than slots', async () => {
    const node = await insertNode(db.pool, { capacity: 2, taskNames: ['noop'] });
    const keys = Array.from({ length: 7 }, (_, i) => `k${i}`);
    for (const k of keys) await keyed(k, 3);
    const p = planner({ planFactor: 1 });
    const served = new Set<string>();
    for (let pass = 0; pass < 4; pass++) {
      await p.runOnce();
      const { rows } = await db.pool.query<{ k: string }>(
        `select concurrency_key as k from tm_tasks where node_id = $1`,
        [node],
      );
      rows.forEach((r) => served.add(r.k));
      await removeTasks(db.pool, await heldIds(db.pool));
    }
    expect([...served].sort()).toEqual(keys);
  });

  it('orders a claim round-robin across groups, by priority within a round', () => {
    const t = (key: string, priority: number, seq: number) => ({
      id: `${key}${seq}`,
      name: 'n',
      concurrency_key: key,
      priority,
      seq: String(seq),
    });
    const claimed = [t('a', 0, 1), t('a', 0, 2), t('a', 0, 3), t('b', 0, 10), t('c', 5, 20), t('c', 5, 21)];
    expect(roundRobin(claimed).map((c) => c.id)).toEqual(['c20', 'a1', 'b10', 'c21', 'a2', 'a3']);
    expect(byPriority(claimed).map((c) => c.id)).toEqual(['c20', 'c21', 'a1', 'a2', 'a3', 'b10']);
  });

  it('claims no more of a group than its room, and bounds the claim with many groups', () => {
    const g = (key: string, left: number | null) => ({
      key,
      name: 'n',
      keyConcurrencyLeft: left,
      keyRateLeft: null,
      defConcurrencyLeft: null,
      defRateLeft: null,
    });
    expect(planGroups([g('a', 2), g('b', null), g('c', 0)], 10).takes).toEqual([
      { key: 'a', name: 'n', take: 2 },
      { key: 'b', name: 'n', take: 10 },
    ]);
    const many = planGroups(
      Array.from({ length: 40 }, (_, i) => g(`k${i}`, null)),
      10,
    );
    expect(many.takes.reduce((sum, t) => sum + t.take, 0)).toBeLessThanOrEqual(40);
  });
});

describe('bad input', () => {
  it('refuses limits out of range, bad patterns and unknown options, and writes nothing', async () => {
    const c = client();
    const before = await databaseDigest(db.pool);
    const refused = async (run: () => Promise<unknown>, pattern: RegExp) => {
      const error = await run().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(TaskmillError);
      expect((error as TaskmillError).code).toBe('INVALID_ARGUMENT');
      expect((error as TaskmillError).message).toMatch(pattern);
    };
    await refused(() => c.setConcurrencyLimit('t:*', 0), /limit/);
    await refused(() => c.setConcurrencyLimit('t:*', -3), /limit/);
    await refused(() => c.setConcurrencyLimit('t:*', 1.5), /limit/);
    await refused(() => c.setConcurrencyLimit('', 2), /pattern/);
    await refused(() => c.setRateLimit('t:*', { limit: 0, windowMs: 1000 }), /limit/);
    await refused(() => c.setRateLimit('t:*', { limit: 5, windowMs: -1 }), /windowMs/);
    await refused(() => c.setRateLimit('t:*', { limit: 5, windowMs: 1000, burst: 2 } as never), /burst/);
    expect(await databaseDigest(db.pool)).toEqual(before);
    expect(await c.flowLimits()).toEqual([]);
  });

  it('refuses a definition with a bad limit and a schedule with a bad concurrencyKey', () => {
    const handler = new URL('./fixtures/noop.ts', import.meta.url);
    for (const concurrency of [{ limit: 0 }, { limit: -1 }, { limit: 2, key: 'x' }]) {
      expect(() => defineTask({ name: 'bad', handler, concurrency: concurrency as never })).toThrow(
        expect.objectContaining({ code: 'INVALID_CONFIG' }),
      );
    }
    expect(() => defineTask({ name: 'bad', handler, rateLimit: { limit: 3 } as never })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG' }),
    );
    const def = defineTask({ name: 'ok', handler });
    for (const concurrencyKey of ['', 'a\0b', 42, 'x'.repeat(1001)]) {
      expect(() => newTask(def, { concurrencyKey: concurrencyKey as never })).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
      );
    }
  });
});

describe('schedule', () => {
  it('stores the concurrencyKey given to the client or over HTTP, and refuses a bad one with 400', async () => {
    await registerDefinitions(db.pool, [noop]);
    const id = await client().schedule(noop, { concurrencyKey: 'tenant:1' });
    const app = await buildHttpApp({ pool: db.pool, log: createLogger('silent') });
    try {
      const ok = await app.inject({
        method: 'POST',
        url: '/api/tasks',
        payload: { name: 'noop', concurrencyKey: 'tenant:2' },
      });
      expect(ok.statusCode).toBe(201);
      const { rows } = await db.pool.query<{ k: string }>(
        `select concurrency_key as k from tm_tasks where id = any($1) order by seq`,
        [[id, ok.json<{ id: string }>().id]],
      );
      expect(rows.map((r) => r.k)).toEqual(['tenant:1', 'tenant:2']);
      const bad = await app.inject({
        method: 'POST',
        url: '/api/tasks',
        payload: { name: 'noop', concurrencyKey: '' },
      });
      expect(bad.statusCode).toBe(400);
      const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json<{
        paths: Record<string, { post?: { requestBody: unknown } }>;
      }>();
      expect(JSON.stringify(doc.paths['/api/tasks'].post?.requestBody)).toContain('concurrencyKey');
    } finally {
      await app.close();
    }
    // With dependencies (tm_schedule_waiting) too; a bad key there is refused before anything is written.
    const dependent = await client().schedule(noop, { concurrencyKey: 'tenant:3' }, { dependsOn: [id] });
    const { rows: waiting } = await db.pool.query(
      `select state, concurrency_key as k from tm_tasks where id = $1`,
      [dependent],
    );
    expect(waiting).toEqual([{ state: 'waiting', k: 'tenant:3' }]);
    await expect(client().schedule(noop, { concurrencyKey: '' }, { dependsOn: [id] })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    expect(await count(db.pool, `select count(*) from tm_tasks`)).toBe(3);
  });

  it('keeps the concurrency keys of children scheduled inside a handler, joins included (tm_complete)', async () => {
    const nodeId = await insertNode(db.pool);
    const [parent] = await insertTasks(db.pool, [{ state: 'running', nodeId, assignment: 1 }]);
    const inherited = {
      parentId: parent.id,
      workflowId: parent.workflowId,
      workflowCreatedAt: new Date().toISOString(),
      affinityGroup: null,
      affinity: null,
    };
    const child = newTask(noop, { concurrencyKey: 'tenant:c' }, inherited);
    const plain = newTask(noop, {}, inherited);
    const join = newTask(noop, { concurrencyKey: 'tenant:j' }, inherited);
    join.state = 'waiting';
    join.joinOf = [child.id, plain.id];
    const accepted = await completeTasks(db.pool, nodeId, [
      {
        kind: 'done',
        task: { id: parent.id, assignment: 1 },
        result: null,
        children: [child, plain, join],
        joinMessages: [],
      },
    ]);
    expect(accepted.map((a) => a.outcome)).toEqual(['completed']);
    const { rows } = await db.pool.query<{ id: string; k: string }>(
      `select id, concurrency_key as k from tm_tasks where parent_id = $1`,
      [parent.id],
    );
    expect(Object.fromEntries(rows.map((r) => [r.id, r.k]))).toEqual({
      [child.id]: 'tenant:c',
      [plain.id]: '',
      [join.id]: 'tenant:j',
    });
  });

  it('a task keeps its concurrency key in the dead-letter table and when requeued', async () => {
    const nodeId = await insertNode(db.pool);
    const [task] = await insertTasks(db.pool, [{ state: 'running', nodeId, assignment: 1 }]);
    await db.pool.query(`update tm_tasks set concurrency_key = 'tenant:d' where id = $1`, [task.id]);
    const failed = await failTasks(db.pool, nodeId, [
      {
        kind: 'failed',
        task: { id: task.id, assignment: 1 },
        error: { name: 'Error', message: 'boom' },
        stopRetry: true,
        settlement: { retryDelayMs: null, deadLetter: true, cancelled: false },
      },
    ]);
    expect(failed.map((f) => f.outcome)).toEqual(['dead']);
    const key = async (table: string) =>
      (await db.pool.query(`select concurrency_key as k from ${table} where id = $1`, [task.id])).rows[0]?.k;
    expect(await key('tm_dead_letters')).toBe('tenant:d');
    expect(await requeueDeadLetters(db.pool, { ids: [task.id] })).toEqual({ requeued: [task.id] });
    expect(await key('tm_tasks')).toBe('tenant:d');
  });
});

describe('pattern limits over HTTP and the CLI', () => {
  it('PUT, GET and DELETE /api/flow-limits set, list and remove them; bad input is a 400 that changes nothing', async () => {
    const app = await buildHttpApp({ pool: db.pool, log: createLogger('silent') });
    try {
      const call = async (method: 'GET' | 'PUT' | 'DELETE', url: string, payload?: object) => {
        const response = await app.inject({ method, url, payload });
        return { status: response.statusCode, body: response.json<{ limits?: unknown[] }>() };
      };
      const both = { pattern: 'tenant:*', concurrency: 3, rate: { limit: 10, windowMs: 1_000 } };
      expect(await call('PUT', '/api/flow-limits', both)).toEqual({
        status: 200,
        body: { limits: [both] },
      });
      expect(
        (await call('PUT', '/api/flow-limits', { pattern: 'tenant:*', rate: null })).body.limits,
      ).toEqual([{ pattern: 'tenant:*', concurrency: 3, rate: null }]);
      for (const bad of [
        { pattern: 'x' },
        { pattern: '', concurrency: 1 },
        { pattern: 'x', concurrency: 0 },
        { pattern: 'x', rate: { limit: 1 } },
        { pattern: 'x', concurrency: 1, extra: true },
      ]) {
        expect((await call('PUT', '/api/flow-limits', bad)).status, JSON.stringify(bad)).toBe(400);
      }
      expect((await call('GET', '/api/flow-limits')).body.limits).toEqual([
        { pattern: 'tenant:*', concurrency: 3, rate: null },
      ]);
      expect(await call('DELETE', '/api/flow-limits?pattern=tenant:*')).toEqual({
        status: 200,
        body: { limits: [] },
      });
      const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json<{
        paths: Record<string, object>;
      }>();
      expect(Object.keys(doc.paths['/api/flow-limits']).sort()).toEqual(['delete', 'get', 'put']);
    } finally {
      await app.close();
    }
  });

  it('taskmill limits set|list|remove', async () => {
    const cli = (...args: string[]) => runCliCaptured(args, { url: db.url });
    expect(
      await cli('limits', 'set', 'api:*', '--concurrency', '2', '--rate', '5', '--window', '60000'),
    ).toMatchObject({
      code: EXIT.OK,
      out: 'api:*  concurrency 2  rate 5 per 60000 ms\n',
    });
    expect((await cli('limits', 'set', 'api:*', '--rate', '5')).code).toBe(EXIT.USAGE);
    expect((await cli('limits', 'set', 'api:*')).code).toBe(EXIT.USAGE);
    expect((await cli('limits', 'set', 'api:*', '--concurrency', '0')).code).toBe(EXIT.USAGE);
    expect(JSON.parse((await cli('limits', 'list', '--json')).out)).toEqual({
      limits: [{ pattern: 'api:*', concurrency: 2, rate: { limit: 5, windowMs: 60_000 } }],
    });
    expect(await cli('limits', 'remove', 'api:*')).toMatchObject({ code: EXIT.OK, out: '(no limit)\n' });
    expect(await client().flowLimits()).toEqual([]);
  });
});
