import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  Cron,
  planSlots,
  registerCronTasks,
  type CronMessage,
  type CronOptionInput,
} from '../planner/cron.ts';
import { decode, defineTask, type TaskDefinition } from '../runtime/index.ts';
import { definitionRecord } from '../runtime/task-definition.ts';
import { createTestDatabase, until, type TestDatabase } from './helpers/database.ts';
import { runningNodes, startTestNode, stopAllNodes } from './helpers/nodes.ts';

const echoHandler = new URL('./fixtures/echo.ts', import.meta.url);
const cronTask = (name: string, cron: CronOptionInput) => defineTask({ name, handler: echoHandler, cron });

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});
// A Cron pass handles every cron row: each test starts with none.
beforeEach(async () => {
  await db.pool.query(`delete from tm_cron`);
});
afterAll(async () => {
  await stopAllNodes();
  expect(runningNodes()).toBe(0);
  await db.drop();
});

/** What a node does at start: definitions, then their cron rows (starting at `at`). */
async function register(defs: TaskDefinition[], at: Date): Promise<void> {
  await db.pool.query(
    `insert into tm_task_defs (name, options) select * from unnest($1::text[], $2::jsonb[])
     on conflict (name) do update set options = excluded.options`,
    [defs.map((d) => d.name), defs.map((d) => JSON.stringify(definitionRecord(d)))],
  );
  await registerCronTasks(db.pool, defs, at);
}

/** Instances of a cron task waiting in tm_tasks (no node runs them here), oldest slot first. */
async function instances(name: string): Promise<CronMessage[]> {
  const { rows } = await db.pool.query<{ message: Buffer }>(`select message from tm_tasks where name = $1`, [
    name,
  ]);
  return rows.map((r) => decode<CronMessage>(r.message)).sort((a, b) => a.slot.getTime() - b.slot.getTime());
}

function clock(start: string) {
  let t = new Date(start).getTime();
  return {
    now: () => new Date(t),
    set: (iso: string) => (t = new Date(iso).getTime()),
    advance: (ms: number) => (t += ms),
  };
}

const leader = (isLeader: () => boolean, now: () => Date, pool: pg.Pool = db.pool, missedAfterMs?: number) =>
  new Cron({ db: pool, isLeader, now, missedAfterMs, onError: (error) => expect.fail(String(error)) });

describe('cron definitions', () => {
  it('rejects invalid expressions and time zones when the task is defined', () => {
    for (const [cron, fragment] of [
      [{ expression: '61 * * * * *' }, 'Invalid value for second: 61'],
      [{ expression: 'every minute' }, 'invalid cron expression'],
      [{ expression: '* * *' }, 'invalid cron expression'],
      [{ expression: '0 0 0 1 1 * 2020' }, 'never fires'],
      [{ expression: '* * * * *', timezone: 'Mars/Olympus' }, 'unknown time zone "Mars/Olympus"'],
      [{ expression: '* * * * *', missed: 'twice' }, 'missed'],
      [{ expression: '* * * * *', jitter: 5 }, 'jitter'],
    ] as const) {
      expect(() => cronTask('bad-cron', cron as never)).toThrowError(
        expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining(fragment) }),
      );
    }
  });

  it('accepts seconds, nicknames and time zones, with documented defaults', () => {
    expect(cronTask('every-5s', { expression: '*/5 * * * * *' }).cron).toEqual({
      expression: '*/5 * * * * *',
      timezone: 'UTC',
      missed: 'run-once',
    });
    expect(
      cronTask('daily', { expression: '@daily', timezone: 'Europe/Paris', missed: 'skip' }).cron,
    ).toEqual({
      expression: '@daily',
      timezone: 'Europe/Paris',
      missed: 'skip',
    });
    expect(defineTask({ name: 'plain', handler: echoHandler }).cron).toBeUndefined();
  });
});

describe('slot planning', () => {
  const everyMinute = { expression: '0 * * * * *', timezone: 'UTC', missed: 'run-once' } as const;

  it('creates each slot that is due and not older than missedAfterMs, oldest first', () => {
    const plan = planSlots(
      everyMinute,
      new Date('2024-01-01T12:00:30Z'),
      new Date('2024-01-01T12:02:10Z'),
      90_000,
    );
    expect(plan?.create).toEqual([
      { slot: new Date('2024-01-01T12:01:00Z'), catchUp: false },
      { slot: new Date('2024-01-01T12:02:00Z'), catchUp: false },
    ]);
    expect(plan?.handledUpTo).toEqual(new Date('2024-01-01T12:02:00Z'));
    expect(planSlots(everyMinute, new Date('2024-01-01T12:02:00Z'), new Date('2024-01-01T12:02:59Z'))).toBe(
      undefined,
    );
  });

  it('turns slots missed for longer than missedAfterMs into one catch-up, or none', () => {
    const last = new Date('2024-01-01T12:00:30Z');
    const now = new Date('2024-01-01T13:00:10Z');
    const once = planSlots(everyMinute, last, now, 30_000)!;
    expect(once.create).toEqual([
      { slot: new Date('2024-01-01T12:59:00Z'), catchUp: true },
      { slot: new Date('2024-01-01T13:00:00Z'), catchUp: false },
    ]);
    const skip = planSlots({ ...everyMinute, missed: 'skip' }, last, now, 30_000)!;
    expect(skip.create).toEqual([{ slot: new Date('2024-01-01T13:00:00Z'), catchUp: false }]);
    expect(skip.handledUpTo).toEqual(new Date('2024-01-01T13:00:00Z'));
    expect(skip.missed).toBe(true);
  });
});

describe('slot planning limits', () => {
  it('creates at most maxInstancesPerPass instances per pass and says more are due', () => {
    const everySecond = { expression: '* * * * * *', timezone: 'UTC', missed: 'run-once' } as const;
    const last = new Date('2024-01-01T00:00:00Z');
    const plan = planSlots(everySecond, last, new Date('2024-01-01T01:00:00Z'), 3_600_000)!;
    expect(plan.create).toHaveLength(1_000);
    expect(plan.more).toBe(true);
    expect(plan.handledUpTo).toEqual(new Date('2024-01-01T00:16:40Z'));
    const rest = planSlots(everySecond, plan.handledUpTo, new Date('2024-01-01T00:20:00Z'), 3_600_000)!;
    expect(rest.create[0].slot).toEqual(new Date('2024-01-01T00:16:41Z'));
    expect(rest.more).toBe(false);
  });
});

describe('cron instances in the database', () => {
  it('creates exactly one instance per slot when three leaders race on every pass', async () => {
    const def = cronTask('race', { expression: '*/2 * * * * *' });
    const c = clock('2024-03-01T00:00:00.300Z');
    await register([def], c.now());
    // Every pass of the three reads tm_cron before any of them writes: a real lost compare-and-set.
    let waiting: (() => void)[] = [];
    const barrier = () =>
      new Promise<void>((resolve) => {
        waiting.push(resolve);
        if (waiting.length === 3) {
          for (const release of waiting) release();
          waiting = [];
        }
      });
    const pools = [0, 1, 2].map(() => new pg.Pool({ connectionString: db.url, max: 2 }));
    const racers = pools.map((pool) => {
      const gated = {
        query: async (...args: Parameters<pg.Pool['query']>) => {
          const result = await (pool.query as (...a: unknown[]) => Promise<unknown>)(...args);
          if (String(args[0]).includes('from tm_cron c join tm_task_defs')) await barrier();
          return result;
        },
      } as unknown as pg.Pool;
      return leader(() => true, c.now, gated);
    });
    let lost = 0;
    for (let pass = 0; pass < 15; pass++) {
      c.advance(pass % 3 === 0 ? 3_000 : 1_000);
      const results = await Promise.all(racers.map((r) => r.runOnce()));
      lost += results.reduce((n, r) => n + r.lost, 0);
      expect(results.filter((r) => r.created > 0).length).toBeLessThanOrEqual(1);
    }
    await Promise.all(pools.map((p) => p.end()));
    const slots = (await instances('race')).map((m) => m.slot.toISOString());
    expect(new Set(slots).size).toBe(slots.length);
    // 2024-03-01T00:00:00.300 + 25 s: every even second from :02 to :24.
    expect(slots).toEqual(
      Array.from({ length: 12 }, (_, i) => `2024-03-01T00:00:${String(2 + 2 * i).padStart(2, '0')}.000Z`),
    );
    expect(lost).toBeGreaterThan(0);
  });

  it('continues after a failover without a duplicate or a missed slot, even while two nodes believe they lead', async () => {
    const def = cronTask('failover', { expression: '* * * * * *' });
    const c = clock('2024-03-02T00:00:00.500Z');
    await register([def], c.now());
    let holder = 'a' as 'a' | 'b' | 'both' | 'none';
    const a = leader(() => holder === 'a' || holder === 'both', c.now);
    const b = leader(() => holder === 'b' || holder === 'both', c.now);
    const schedule: (typeof holder)[] = ['a', 'a', 'a', 'none', 'none', 'both', 'both', 'b', 'b', 'b'];
    for (const who of schedule) {
      holder = who;
      c.advance(1_000);
      await a.runOnce();
      await b.runOnce();
    }
    const messages = await instances('failover');
    expect(messages.map((m) => m.slot.toISOString())).toEqual(
      Array.from({ length: 10 }, (_, i) => `2024-03-02T00:00:${String(1 + i).padStart(2, '0')}.000Z`),
    );
    expect(messages.every((m) => !m.catchUp)).toBe(true);
  });

  it('runs missed slots once (run-once) or not at all (skip) after the cluster was down', async () => {
    const once = cronTask('missed-once', { expression: '0 * * * * *' });
    const skip = cronTask('missed-skip', { expression: '0 * * * * *', missed: 'skip' });
    const c = clock('2024-03-03T12:00:00.500Z');
    await register([once, skip], c.now());
    const cron = leader(() => true, c.now);
    c.advance(60_000);
    expect(await cron.runOnce()).toMatchObject({ created: 2, caughtUp: 0, skipped: 0 });
    // Down from 12:01:00.5 to 12:10:00.5: slots 12:02 .. 12:09 were missed, 12:10 is on time.
    c.set('2024-03-03T12:10:00.500Z');
    expect(await cron.runOnce()).toMatchObject({ created: 3, caughtUp: 1, skipped: 1 });
    c.set('2024-03-03T12:11:00.100Z');
    await cron.runOnce();
    expect(await instances('missed-once')).toEqual([
      { slot: new Date('2024-03-03T12:01:00Z'), catchUp: false },
      { slot: new Date('2024-03-03T12:09:00Z'), catchUp: true },
      { slot: new Date('2024-03-03T12:10:00Z'), catchUp: false },
      { slot: new Date('2024-03-03T12:11:00Z'), catchUp: false },
    ]);
    expect(await instances('missed-skip')).toEqual([
      { slot: new Date('2024-03-03T12:01:00Z'), catchUp: false },
      { slot: new Date('2024-03-03T12:10:00Z'), catchUp: false },
      { slot: new Date('2024-03-03T12:11:00Z'), catchUp: false },
    ]);
  });

  it('reads the expression in its time zone, daylight saving time included', async () => {
    const ny = cronTask('nine-in-new-york', { expression: '0 0 9 * * *', timezone: 'America/New_York' });
    const tokyo = cronTask('nine-in-tokyo', { expression: '0 9 * * *', timezone: 'Asia/Tokyo' });
    const c = clock('2024-03-08T00:00:00.000Z');
    await register([ny, tokyo], c.now());
    const cron = leader(() => true, c.now, db.pool, 86_400_000);
    // 9:00 in New York is 14:00Z before the switch to daylight saving time (2024-03-10), 13:00Z after.
    for (const day of ['08', '09', '10', '11']) {
      c.set(`2024-03-${day}T23:59:59.000Z`);
      await cron.runOnce();
    }
    expect((await instances('nine-in-new-york')).map((m) => m.slot.toISOString())).toEqual([
      '2024-03-08T14:00:00.000Z',
      '2024-03-09T14:00:00.000Z',
      '2024-03-10T13:00:00.000Z',
      '2024-03-11T13:00:00.000Z',
    ]);
    // 9:00 in Tokyo is 00:00Z; the 2024-03-08 slot was at the registration instant, not after it.
    expect((await instances('nine-in-tokyo')).map((m) => m.slot.toISOString())).toEqual([
      '2024-03-09T00:00:00.000Z',
      '2024-03-10T00:00:00.000Z',
      '2024-03-11T00:00:00.000Z',
    ]);
  });

  it('keeps its progress when re-registered and forgets a task registered without cron', async () => {
    const def = cronTask('reregistered', { expression: '0 * * * * *' });
    const c = clock('2024-03-04T00:00:00.500Z');
    await register([def], c.now());
    const cron = leader(() => true, c.now);
    c.advance(60_000);
    await cron.runOnce();
    await register(
      [cronTask('reregistered', { expression: '30 * * * * *' })],
      new Date('2030-01-01T00:00:00Z'),
    );
    const { rows } = await db.pool.query(
      `select last_slot, expression from tm_cron where name = 'reregistered'`,
    );
    expect(rows[0]).toEqual({ last_slot: new Date('2024-03-04T00:01:00Z'), expression: '30 * * * * *' });
    c.advance(30_000);
    await cron.runOnce();
    expect((await instances('reregistered')).map((m) => m.slot.toISOString())).toEqual([
      '2024-03-04T00:01:00.000Z',
      '2024-03-04T00:01:30.000Z',
    ]);
    await register([defineTask({ name: 'reregistered', handler: echoHandler })], c.now());
    expect((await db.pool.query(`select 1 from tm_cron where name = 'reregistered'`)).rowCount).toBe(0);
  });

  it('does nothing on a node that does not lead', async () => {
    const def = cronTask('follower', { expression: '* * * * * *' });
    const c = clock('2024-03-05T00:00:00.500Z');
    await register([def], c.now());
    c.advance(5_000);
    expect(await leader(() => false, c.now).runOnce()).toMatchObject({ leader: false, created: 0 });
    expect(await instances('follower')).toEqual([]);
  });
});

describe('cron on running nodes', () => {
  it('creates one instance per second across three nodes and a leader stop, and runs them', async () => {
    const tick = cronTask('tick', { expression: '* * * * * *' });
    const nodes = await Promise.all([0, 1, 2].map(() => startTestNode(db.url, { tasks: [tick] })));
    const history = async () => {
      const { rows } = await db.pool.query<{ result: Buffer }>(
        `select result from tm_history where name = 'tick' and state = 'completed'`,
      );
      return rows.map((r) => decode<{ message: CronMessage }>(r.result).message.slot.getTime());
    };
    await until(async () => (await history()).length >= 3, 15_000);
    const first = nodes.find((n) => n.isLeader)!;
    expect(first).toBeDefined();
    await first.stop();
    const before = (await history()).length;
    await until(async () => (await history()).length >= before + 3, 15_000);
    await Promise.all(nodes.map((n) => n.stop()));
    // Whatever was created but not yet run is still in tm_tasks: count it too.
    const pending = (await instances('tick')).map((m) => m.slot.getTime());
    const slots = [...(await history()), ...pending].sort((a, b) => a - b);
    expect(new Set(slots).size).toBe(slots.length);
    expect(slots.length).toBeGreaterThanOrEqual(6);
    for (let i = 1; i < slots.length; i++) expect(slots[i] - slots[i - 1]).toBe(1_000);
  });
});
