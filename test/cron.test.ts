import { readFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import {
  Cron,
  planSlots,
  registerCronTasks,
  type CronMessage,
  type CronOptionInput,
} from '../planner/cron.ts';
import { TaskmillClient, decode, defineTask, type TaskDefinition } from '../index.ts';
import { definitionRecord } from '../task/task-definition.ts';
import { buildHttpApp, startHttpServer } from '../http/server.ts';
import { runCli } from '../cli/main.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { docExamples, runCurl, shellWords } from './helpers/doc-examples.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const echoHandler = new URL('./fixtures/echo.ts', import.meta.url);
const cronTask = (name: string, cron: CronOptionInput) => defineTask({ name, handler: echoHandler, cron });

const db = useTestDatabase();

// A Cron pass handles every cron row: each test starts with none.
beforeEach(async () => {
  await db.pool.query(`delete from tm_cron`);
});
afterAll(stopAllNodes);

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

/** What nodes do when they take instances: every waiting instance of `name` starts. */
async function startInstances(name: string): Promise<void> {
  await db.pool.query(`update tm_tasks set state = 'running' where name = $1 and state = 'ready'`, [name]);
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
    // Each problem is reported at the option that has it.
    expect(() => cronTask('bad-zone', { expression: '* * * * *', timezone: 'Mars/Olympus' })).toThrowError(
      /at cron\.timezone/,
    );
    expect(() => cronTask('bad-expression', { expression: 'every minute' })).toThrowError(
      /at cron\.expression/,
    );
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
      await startInstances('race');
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
      await startInstances('failover');
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
    await startInstances('missed-once');
    await startInstances('missed-skip');
    c.set('2024-03-03T12:10:00.500Z');
    expect(await cron.runOnce()).toMatchObject({ created: 3, caughtUp: 1, skipped: 1 });
    await startInstances('missed-once');
    await startInstances('missed-skip');
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
      await startInstances('nine-in-new-york');
      await startInstances('nine-in-tokyo');
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
    await startInstances('reregistered');
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

describe('an instance that has not started', () => {
  it('holds the next slots back; run-once makes it stand for them, and the cron resumes once it starts', async () => {
    const tick = cronTask('held-once', { expression: '* * * * * *' });
    const c = clock('2024-03-06T00:00:00.500Z');
    await register([tick], c.now());
    const cron = leader(() => true, c.now);
    c.advance(1_000);
    expect(await cron.runOnce()).toMatchObject({ created: 1, heldBack: 0 });
    // No node takes it for 150 s (every node dropped the task): one instance waits, not 151.
    for (let i = 0; i < 150; i++) {
      c.advance(1_000);
      expect(await cron.runOnce()).toMatchObject({ created: 0, heldBack: 1 });
    }
    expect(await instances('held-once')).toEqual([{ slot: new Date('2024-03-06T00:02:31Z'), catchUp: true }]);
    // A node comes back and takes it: the next slot gets an instance of its own, nothing more.
    await startInstances('held-once');
    c.advance(1_000);
    expect(await cron.runOnce()).toMatchObject({ created: 1, heldBack: 0 });
    const { rows } = await db.pool.query<{ state: string; message: Buffer }>(
      `select state, message from tm_tasks where name = 'held-once' order by seq`,
    );
    expect(rows.map((r) => [r.state, decode<CronMessage>(r.message)])).toEqual([
      ['running', { slot: new Date('2024-03-06T00:02:31Z'), catchUp: true }],
      ['ready', { slot: new Date('2024-03-06T00:02:32Z'), catchUp: false }],
    ]);
  });

  it('keeps its own slot with missed: skip, and a retrying instance holds nothing back', async () => {
    const tick = cronTask('held-skip', { expression: '* * * * * *', missed: 'skip' });
    const c = clock('2024-03-07T00:00:00.500Z');
    await register([tick], c.now());
    const cron = leader(() => true, c.now);
    for (let i = 0; i < 40; i++) {
      c.advance(1_000);
      await cron.runOnce();
    }
    expect(await instances('held-skip')).toEqual([
      { slot: new Date('2024-03-07T00:00:01Z'), catchUp: false },
    ]);
    // Back in the queue after a failed attempt: it has started, so the next slot is created.
    await db.pool.query(`update tm_tasks set attempt = 1 where name = 'held-skip'`);
    c.advance(1_000);
    expect(await cron.runOnce()).toMatchObject({ created: 1, heldBack: 0 });
    expect((await instances('held-skip')).map((m) => m.slot.toISOString())).toEqual([
      '2024-03-07T00:00:01.000Z',
      '2024-03-07T00:00:41.000Z',
    ]);
  });
});

describe('listing and removing crons', () => {
  it('lists crons with their last instance and live nodes, and removes one through the client, HTTP and CLI', async () => {
    const orphan = cronTask('orphan', { expression: '* * * * * *' });
    const kept = cronTask('kept', { expression: '0 0 * * * *', timezone: 'Europe/Paris', missed: 'skip' });
    const gone = cronTask('gone', { expression: '0 * * * * *' });
    const c = clock('2024-03-09T00:00:00.500Z');
    await register([orphan, kept, gone], c.now());
    c.advance(1_000);
    await leader(() => true, c.now).runOnce();
    const client = new TaskmillClient({ pool: db.pool });
    const listed = await client.listCrons();
    expect(listed.map((x) => x.name)).toEqual(['gone', 'kept', 'orphan']);
    const row = listed.find((x) => x.name === 'orphan')!;
    expect(row).toMatchObject({
      expression: '* * * * * *',
      timezone: 'UTC',
      missed: 'run-once',
      lastSlot: new Date('2024-03-09T00:00:01Z'),
      lastTaskState: 'waiting',
      nodes: 0,
    });
    expect(row.nextSlot!.getTime()).toBeGreaterThan(Date.now() - 1_000);
    expect(listed.find((x) => x.name === 'kept')).toMatchObject({ lastTaskId: null, lastTaskState: null });

    // Library: the leader creates nothing more for a removed cron; its waiting instance is reported.
    expect(await client.removeCron('orphan')).toEqual({
      name: 'orphan',
      lastTaskId: row.lastTaskId,
      lastTaskState: 'waiting',
    });
    await expect(client.removeCron('orphan')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(client.removeCron('not a name')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await startInstances('orphan');
    c.advance(5_000);
    await leader(() => true, c.now).runOnce();
    expect(await count(db.pool, `select count(*) from tm_tasks where name = 'orphan'`)).toBe(1);

    // HTTP.
    const app = await buildHttpApp({ pool: db.pool });
    try {
      const list = await app.inject({ method: 'GET', url: '/api/crons' });
      expect(list.statusCode).toBe(200);
      expect(list.json<{ crons: { name: string; lastSlot: string }[] }>().crons).toEqual([
        expect.objectContaining({ name: 'gone', lastSlot: '2024-03-09T00:00:00.500Z', nodes: 0 }),
        expect.objectContaining({
          name: 'kept',
          timezone: 'Europe/Paris',
          missed: 'skip',
          lastTaskState: null,
        }),
      ]);
      const removed = await app.inject({ method: 'DELETE', url: '/api/crons/gone' });
      expect(removed.statusCode).toBe(200);
      expect(removed.json()).toEqual({ name: 'gone', lastTaskId: null, lastTaskState: null });
      const again = await app.inject({ method: 'DELETE', url: '/api/crons/gone' });
      expect(again.statusCode).toBe(404);
      expect(again.json()).toMatchObject({ code: 'NOT_FOUND' });
      expect((await app.inject({ method: 'DELETE', url: '/api/crons/bad%20name' })).statusCode).toBe(400);
    } finally {
      await app.close();
    }

    // CLI.
    const cli = async (...args: string[]) => {
      let out = '';
      let err = '';
      const code = await runCli(['--database-url', db.url, ...args], {
        out: (t) => (out += t),
        err: (t) => (err += t),
        env: {},
        cwd: process.cwd(),
        signal: new AbortController().signal,
      });
      return { code, out, err };
    };
    const text = await cli('cron', 'list');
    expect(text.code, text.err).toBe(0);
    expect(text.out).toMatch(/^kept +0 0 \* \* \* \* +Europe\/Paris +skip /m);
    const json = await cli('cron', 'list', '--json');
    expect(JSON.parse(json.out).crons.map((x: { name: string }) => x.name)).toEqual(['kept']);
    expect(await cli('cron', 'remove', 'kept')).toMatchObject({ code: 0, out: 'removed cron kept\n' });
    expect(await cli('cron', 'remove', 'kept')).toMatchObject({ code: 3 });
    expect((await cli('cron', 'list')).out).toBe('(no cron)\n');
  });
});

describe('docs/cron.md', () => {
  it('runs its commands and curl examples', async () => {
    const markdown = readFileSync(new URL('../docs/cron.md', import.meta.url), 'utf8');
    const nightly = () =>
      register(
        [cronTask('nightly-report', { expression: '0 30 2 * * *' })],
        new Date('2024-03-10T00:00:00Z'),
      );
    await nightly();
    const commands = docExamples(markdown, 'taskmill');
    expect(commands).toEqual(['taskmill cron list', 'taskmill cron remove nightly-report']);
    for (const command of commands) {
      const code = await runCli(['--database-url', db.url, ...shellWords(command).slice(1)], {
        out: () => {},
        err: () => {},
        env: {},
        cwd: process.cwd(),
        signal: new AbortController().signal,
      });
      expect(code, command).toBe(0);
    }
    await nightly();
    const server = await startHttpServer({ pool: db.pool, port: 0 });
    try {
      const curls = docExamples(markdown, 'curl');
      expect(curls).toHaveLength(2);
      for (const command of curls) {
        const response = await runCurl(command, { TASKMILL_URL: server.url });
        expect(response.status, command).toBe(200);
      }
    } finally {
      await server.close();
    }
    expect(await count(db.pool, `select count(*) from tm_cron where name = 'nightly-report'`)).toBe(0);
  });
});

describe('cron on running nodes', () => {
  it('creates one instance per second across three nodes and a leader stop, and runs them', async () => {
    const tick = cronTask('tick', { expression: '* * * * * *' });
    const nodes = await Promise.all([0, 1, 2].map(() => startTestNode(db.url, { tasks: [tick] })));
    const runs = async () => {
      const { rows } = await db.pool.query<{ result: Buffer }>(
        `select result from tm_history where name = 'tick' and state = 'completed'`,
      );
      return rows.map((r) => decode<{ message: CronMessage }>(r.result).message);
    };
    const history = async () => (await runs()).map((m) => m.slot.getTime());
    await until(async () => (await history()).length >= 3, 15_000);
    const first = nodes.find((n) => n.isLeader)!;
    expect(first).toBeDefined();
    await first.stop();
    const before = (await history()).length;
    await until(async () => (await history()).length >= before + 3, 15_000);
    await Promise.all(nodes.map((n) => n.stop()));
    // Whatever was created but not yet run is still in tm_tasks: count it too.
    const messages = [...(await runs()), ...(await instances('tick'))].sort(
      (a, b) => a.slot.getTime() - b.slot.getTime(),
    );
    const slots = messages.map((m) => m.slot.getTime());
    expect(new Set(slots).size).toBe(slots.length);
    expect(slots.length).toBeGreaterThanOrEqual(6);
    // One instance per slot; slots held back while an instance waited for a node (the failover) are
    // stood for by that instance, marked catchUp.
    for (let i = 1; i < slots.length; i++) {
      if (!messages[i].catchUp) expect(slots[i] - slots[i - 1]).toBe(1_000);
    }
  });
});
