/**
 * Bad input gets a clear TaskmillError and changes nothing; bulk scheduling is one statement.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TaskmillClient, defineTask, startNode, type NodeOptions } from '../index.ts';
import { v7 as uuidv7 } from 'uuid';
import { SCHEDULE_LIMITS, type ScheduleContext } from '../task/schedule-context.ts';
import * as defs from './fixtures/definitions.ts';
import { count, useTestDatabase } from './helpers/database.ts';
import { FAST } from './helpers/nodes.ts';

const db = useTestDatabase();
let client: TaskmillClient;

beforeAll(async () => {
  client = new TaskmillClient({ pool: db.pool });
});
afterAll(async () => {
  await client.close();
});

const rows = () =>
  count(
    db.pool,
    `select (select count(*) from tm_tasks) + (select count(*) from tm_history)
       + (select count(*) from tm_dead_letters) + (select count(*) from tm_nodes)
       + (select count(*) from tm_task_defs)`,
  );

/** Runs `act`, expects it to reject with `code` (and a message matching `message`), and no row to change. */
async function refused(act: () => Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  const before = await rows();
  let error: unknown;
  try {
    await act();
  } catch (e) {
    error = e;
  }
  expect(error, 'expected a rejection').toBeDefined();
  expect(error).toMatchObject({ name: 'TaskmillError', code });
  if (message) expect((error as Error).message).toMatch(message);
  expect(await rows()).toBe(before);
}

describe('schedule() refuses bad input and writes nothing', () => {
  it('an unknown task name', async () => {
    await refused(() => client.schedule('no-such-task'), 'UNKNOWN_TASK', /no-such-task/);
    await refused(() => client.scheduleMany('no-such-task', [{}, {}]), 'UNKNOWN_TASK');
    await refused(() => client.schedule('bad\u0000name'), 'UNKNOWN_TASK');
    await refused(() => client.schedule(''), 'UNKNOWN_TASK');
  });

  it('a message that does not encode: function, symbol, circular, a "__proto__" key', async () => {
    const circular: Record<string, unknown> = { a: 1 };
    circular.self = circular;
    const messages: unknown[] = [
      () => 1,
      { handler: () => 1 },
      Symbol('s'),
      { deep: [{ s: Symbol('s') }] },
      circular,
      new Map<string, unknown>([['f', () => 1]]),
      // msgpack would deliver it renamed to "__proto_".
      JSON.parse('{"__proto__": 0}'),
      { nested: [JSON.parse('{"a": {"__proto__": {"x": 1}}}')] },
    ];
    for (const message of messages) {
      await refused(() => client.schedule(defs.echo, { message }), 'ENCODE_FAILED', /message/);
    }
  });

  it('bad delays and run-at times', async () => {
    for (const delayMs of [-1, Number.NaN, Number.POSITIVE_INFINITY, '10' as unknown as number]) {
      await refused(() => client.schedule(defs.noop, { delayMs }), 'INVALID_ARGUMENT', /delayMs/);
    }
    for (const runAt of [new Date('not a date'), '2030-01-01' as unknown as Date, 0 as unknown as Date]) {
      await refused(() => client.schedule(defs.noop, { runAt }), 'INVALID_ARGUMENT', /runAt/);
    }
    await refused(
      () => client.schedule(defs.noop, { delayMs: 10, runAt: new Date() }),
      'INVALID_ARGUMENT',
      /not both/,
    );
  });

  it('bad priority, workflow id and affinity', async () => {
    for (const priority of [1.5, Number.NaN, 2_000_000, '1' as unknown as number]) {
      await refused(() => client.schedule(defs.noop, { priority }), 'INVALID_ARGUMENT', /priority/);
    }
    for (const workflowId of ['abc', '', 42 as unknown as string]) {
      await refused(() => client.schedule(defs.noop, { workflowId }), 'INVALID_ARGUMENT', /workflowId/);
    }
    await refused(
      () => client.schedule(defs.noop, { affinityGroup: 'g' }),
      'INVALID_ARGUMENT',
      /affinityGroup.*without affinity/,
    );
    await refused(() => client.schedule(defs.noop, { affinity: '' }), 'INVALID_ARGUMENT', /affinity/);
    await refused(
      () => client.schedule(defs.noop, { affinity: 7 as unknown as string }),
      'INVALID_ARGUMENT',
      /affinity/,
    );
    // PostgreSQL text cannot hold NUL: refused up front, not as a driver error.
    await refused(() => client.schedule(defs.noop, { affinity: 'a\u0000b' }), 'INVALID_ARGUMENT', /NUL/);
    await refused(
      () => client.schedule(defs.noop, { affinityGroup: 'g\u0000', affinity: 'a' }),
      'INVALID_ARGUMENT',
      /NUL/,
    );
  });

  it('a batch with one bad context writes none of it', async () => {
    const ctxs = [{}, {}, { delayMs: -5 }, {}];
    await refused(() => client.scheduleMany(defs.noop, ctxs), 'INVALID_ARGUMENT');
    await refused(() => client.scheduleMany(defs.noop, [{}, { message: () => 1 }]), 'ENCODE_FAILED');
    await refused(() => client.scheduleMany(defs.noop, {} as unknown as []), 'INVALID_ARGUMENT');
  });

  it('an unknown key in the context, such as a typo', async () => {
    const typo = { mesage: 'hi' } as unknown as ScheduleContext;
    await refused(() => client.schedule(defs.echo, typo), 'INVALID_ARGUMENT', /unknown key "mesage"/);
    await refused(() => client.scheduleMany(defs.echo, [{}, typo]), 'INVALID_ARGUMENT', /mesage/);
    await refused(() => client.scheduleJoin(defs.echo, typo, [uuidv7()]), 'INVALID_ARGUMENT', /mesage/);
    await refused(() => client.schedule(defs.echo, [] as ScheduleContext), 'INVALID_ARGUMENT', /object/);
  });

  it('run-at times beyond what PostgreSQL and ISO 8601 share', async () => {
    for (const runAt of [new Date(-8.64e15), new Date(8.64e15), new Date('+010000-01-01T00:00:00Z')]) {
      await refused(() => client.schedule(defs.noop, { runAt }), 'INVALID_ARGUMENT', /runAt must be between/);
    }
    // The bounds themselves are accepted by the database.
    const bounds = [new Date(SCHEDULE_LIMITS.minRunAt), new Date(SCHEDULE_LIMITS.maxRunAt)];
    const ids = await client.scheduleMany(
      defs.noop,
      bounds.map((runAt) => ({ runAt })),
    );
    await db.pool.query(`delete from tm_tasks where id = any($1)`, [ids]);
  });

  it('an affinity key or group over the byte limit (it would not fit the key index)', async () => {
    const max = SCHEDULE_LIMITS.maxAffinityBytes;
    for (const ctx of [
      { affinity: 'a'.repeat(max + 1) },
      { affinity: '\u20ac'.repeat(Math.ceil(max / 3) + 1) },
      { affinity: 'a', affinityGroup: 'g'.repeat(max + 1) },
      { affinity: 'a'.repeat(10_000), affinityGroup: 'g'.repeat(10_000) },
    ]) {
      await refused(
        () => client.schedule(defs.noop, ctx),
        'INVALID_ARGUMENT',
        new RegExp(`at most ${max} bytes`),
      );
    }
    const id = await client.schedule(defs.noop, {
      affinity: 'a'.repeat(max),
      affinityGroup: 'g'.repeat(max),
    });
    await db.pool.query(`delete from tm_tasks where id = $1`, [id]);
  });

  it('a message over the size limit, with its size and the limit in the error', async () => {
    const max = SCHEDULE_LIMITS.maxMessageBytes;
    // msgpack: a string of n >= 65536 bytes is n + 5 bytes.
    const over = { message: 'x'.repeat(max - 4) };
    await refused(
      () => client.schedule(defs.echo, over),
      'INVALID_ARGUMENT',
      new RegExp(`${max + 1} bytes.*limit of ${max} bytes`),
    );
    await refused(() => client.scheduleMany(defs.echo, [{}, over]), 'INVALID_ARGUMENT', /limit/);
    const id = await client.schedule(defs.echo, { message: 'x'.repeat(max - 5) });
    await db.pool.query(`delete from tm_tasks where id = $1`, [id]);
  });

  it('an object that only looks like a definition', async () => {
    const handler = new URL('./fixtures/noop.ts', import.meta.url).href;
    const fakes = [
      { name: 'x'.repeat(1_000_000), handler },
      { name: '<img src=x onerror=alert(1)>', handler },
      { name: 'noop', handler }, // no priority, no affinity mode
      { ...defs.noop, priority: 1.5 },
      { ...defs.noop, affinityMode: 'loose' },
    ];
    for (const fake of fakes) {
      await refused(() => client.schedule(fake as never), 'INVALID_ARGUMENT', /defineTask/);
      await refused(() => client.scheduleMany(fake as never, [{}]), 'INVALID_ARGUMENT', /defineTask/);
    }
  });

  it('something that is neither a definition nor a name', async () => {
    await refused(
      () => client.schedule({ name: 'noop' } as unknown as string),
      'INVALID_ARGUMENT',
      /defineTask/,
    );
  });
});

describe('defineTask() refuses invalid options with INVALID_CONFIG', () => {
  const handler = new URL('./fixtures/noop.ts', import.meta.url);
  const cases: [string, Record<string, unknown>][] = [
    ['a name with spaces', { name: 'has space' }],
    ['an empty name', { name: '' }],
    ['a name too long', { name: 'x'.repeat(201) }],
    ['an unknown retry mode', { retry: { mode: 'SOMETIMES' } }],
    ['a negative retry delay', { retry: { mode: 'FIXED', delayMs: -1 } }],
    ['an unknown retry option', { retry: { mode: 'OFF', delayMs: 5 } }],
    ['a negative timeout', { timeoutMs: -1 }],
    ['a zero cluster limit', { maxParallelInCluster: 0 }],
    ['a fractional node limit', { maxParallelInNode: 1.5 }],
    ['an unknown affinity mode', { affinityMode: 'loose' }],
    ['an unknown guarantee', { guarantee: 'at-most-once' }],
    ['a relative handler path', { handler: './noop.ts' }],
    ['an unknown option', { retries: 3 }],
  ];
  for (const [what, options] of cases) {
    it(what, () => {
      expect(() => defineTask({ name: 'ok', handler, ...options } as never)).toThrow(
        expect.objectContaining({ name: 'TaskmillError', code: 'INVALID_CONFIG' }),
      );
    });
  }

  it('accepts the same definition without the bad option', () => {
    expect(defineTask({ name: 'ok.name:v1-2_x', handler }).name).toBe('ok.name:v1-2_x');
  });
});

describe('startNode() refuses invalid configuration and registers nothing', () => {
  const base = (): NodeOptions => ({
    ...FAST,
    planner: { ...FAST.planner },
    connectionString: db.url,
    tasks: [defs.noop],
  });
  const cases: [string, (o: NodeOptions) => void, RegExp][] = [
    ['maxParallelTasksInNode 0', (o) => (o.maxParallelTasksInNode = 0), /maxParallelTasksInNode/],
    [
      'nodeTimeoutMs under twice the heartbeat',
      (o) => Object.assign(o, { heartbeatIntervalMs: 1_000, nodeTimeoutMs: 1_500 }),
      /nodeTimeoutMs.*twice/,
    ],
    ['a polling delay map without 0', (o) => (o.planner = { pollingDelay: { 1: 10 } }), /pollingDelay/],
    ['a negative polling delay', (o) => (o.planner = { pollingDelay: { 0: -1 } }), /pollingDelay/],
    ['a non-numeric threshold', (o) => (o.planner = { pollingDelay: { 0: 10, abc: 5 } }), /pollingDelay/],
    ['a plan factor below 1', (o) => (o.planner = { planFactor: 0.5 }), /planFactor/],
    ['a CPU limit above 1', (o) => (o.planner = { nodeCpuLimit: 1.5 }), /nodeCpuLimit/],
    ['an unknown option', (o) => Object.assign(o, { maxParalelTasks: 3 }), /maxParalelTasks/],
    ['a task defined twice', (o) => (o.tasks = [defs.noop, defs.noop]), /twice/],
    ['something else than a definition', (o) => (o.tasks = [{ name: 'x' } as never]), /defineTask/],
    [
      'a handler module that does not exist',
      (o) =>
        (o.tasks = [defineTask({ name: 'ghost', handler: new URL('./fixtures/ghost.ts', import.meta.url) })]),
      /not found/,
    ],
  ];
  for (const [what, change, message] of cases) {
    it(what, async () => {
      const options = base();
      change(options);
      await refused(() => startNode(options), 'INVALID_CONFIG', message);
      expect(await count(db.pool, `select count(*) from tm_nodes`)).toBe(0);
    });
  }
});

describe('bulk scheduling', () => {
  it('inserts 10,000 tasks in one statement', async () => {
    const ids = await client.scheduleMany(
      defs.echo,
      Array.from({ length: 10_000 }, (_, i) => ({ message: { i }, priority: i % 7 })),
    );
    expect(new Set(ids).size).toBe(10_000);
    const { rows: stats } = await db.pool.query<{ n: number; stamps: number; xids: number }>(
      `select count(*)::int as n, count(distinct created_at)::int as stamps, count(distinct xmin::text)::int as xids
       from tm_tasks where id = any($1)`,
      [ids],
    );
    // One transaction stamp and one inserting transaction for all of them: one statement.
    expect(stats[0]).toEqual({ n: 10_000, stamps: 1, xids: 1 });
    await db.pool.query(`delete from tm_tasks where id = any($1)`, [ids]);
  });
});
