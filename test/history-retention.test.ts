/**
 * History retention by partition (migration 004, planner/history-retention.ts): outcomes stay
 * queryable until the retention and then go with their partition, never row by row; inserts never
 * fail for lack of a partition; completions keep flowing while partitions are created and dropped.
 * Short periods (1 s) stand in for days; one test moves the clock instead.
 */
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import {
  HistoryRetention,
  attachable,
  gaps,
  historyPeriodMs,
  listPartitions,
} from '../planner/history-retention.ts';
import { knownMigrations, migrate } from '../migrations/migrator.ts';
import { TaskmillClient } from '../index.ts';
import { cancelTasks, completeTasks, failTasks, findTask } from '../store/tasks.ts';
import * as defs from './fixtures/definitions.ts';
import { count, until, waitForTasks, useTestDatabase, type TestDatabase } from './helpers/database.ts';
import { insertNode, insertTasks } from './helpers/factory.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

/** A database per test, dropped with the file's (kept when a test failed). */
const file = useTestDatabase();
const database = (options?: { migrated?: boolean }): Promise<TestDatabase> => file.another(options);
afterEach(stopAllNodes);

const SECOND = 1_000;
const DAY = 86_400_000;

async function dbNow(db: pg.Pool): Promise<number> {
  const { rows } = await db.query<{ now: Date }>(`select clock_timestamp() as now`);
  return rows[0].now.getTime();
}

/** The partition holding each history row ('tm_history_default' for the safety net). */
async function partitionOf(db: pg.Pool, ids: string[]): Promise<Map<string, string>> {
  const { rows } = await db.query<{ id: string; part: string }>(
    `select id, tableoid::regclass::text as part from tm_history where id = any($1)`,
    [ids],
  );
  return new Map(rows.map((r) => [r.id, r.part]));
}

async function coveredAt(db: pg.Pool, at: number): Promise<boolean> {
  return (await listPartitions(db)).some((p) => p.from.getTime() <= at && at < p.to.getTime());
}

/** Records every row deleted from any partition of tm_history, and which partition it left. */
async function recordDeletes(db: pg.Pool): Promise<() => Promise<Record<string, number>>> {
  await db.query(`create table deletes (partition text not null)`);
  await db.query(`create function record_delete() returns trigger language plpgsql as $$
    begin insert into deletes values (tg_table_name); return old; end $$`);
  await db.query(
    `create trigger record_delete before delete on tm_history for each row execute function record_delete()`,
  );
  return async () => {
    const { rows } = await db.query<{ partition: string; n: number }>(
      `select partition, count(*)::int as n from deletes group by 1`,
    );
    return Object.fromEntries(rows.map((r) => [r.partition, r.n]));
  };
}

describe('partition period and ranges (pure)', () => {
  it('derives the period from the retention: the largest candidate within a quarter of it', () => {
    expect(historyPeriodMs(7 * DAY)).toBe(DAY);
    expect(historyPeriodMs(DAY)).toBe(6 * 3_600_000);
    expect(historyPeriodMs(3_600_000)).toBe(15 * 60_000);
    expect(historyPeriodMs(30 * DAY)).toBe(7 * DAY);
    expect(historyPeriodMs(4 * SECOND)).toBe(SECOND);
    expect(historyPeriodMs(1)).toBe(SECOND);
    expect(() => new HistoryRetention({ db: new pg.Pool(), retentionMs: DAY, periodMs: 1_500 })).toThrow(
      /whole number of seconds/,
    );
  });

  it('finds the uncovered parts of a range, and attaches only parts no transaction can still write', () => {
    const covered = [
      { from: 0, to: 10 },
      { from: 20, to: 30 },
    ];
    expect(gaps({ from: 0, to: 40 }, covered)).toEqual([
      { from: 10, to: 20 },
      { from: 30, to: 40 },
    ]);
    expect(gaps({ from: 5, to: 8 }, covered)).toEqual([]);
    expect(gaps({ from: 25, to: 35 }, [{ from: 0, to: 30 }])).toEqual([{ from: 30, to: 35 }]);
    // future: whole; past (before every open transaction): whole; spanning the present: the part
    // from the next whole second after the lead; too close: nothing.
    expect(attachable({ from: 10_000, to: 20_000 }, 9_000, 5_000)).toEqual({ from: 10_000, to: 20_000 });
    expect(attachable({ from: 1_000, to: 4_000 }, 9_000, 5_000)).toEqual({ from: 1_000, to: 4_000 });
    expect(attachable({ from: 4_000, to: 20_000 }, 9_300, 5_000)).toEqual({ from: 10_000, to: 20_000 });
    expect(attachable({ from: 4_000, to: 9_500 }, 9_300, 5_000)).toBeUndefined();
  });
});

describe('history retention', () => {
  it('keeps outcomes queryable by getTask and findTask until the retention, then drops their partitions', async () => {
    const db = await database();
    const deletes = await recordDeletes(db.pool);
    // Long enough that no row expires before the rounds below end on a loaded machine.
    const retentionMs = 8 * SECOND; // period: 1 s
    const purged: number[] = [];
    const node = await startTestNode(db.url, { historyRetentionMs: retentionMs });
    node.on('maintenance', (r) => purged.push(r.purgedHistory));
    // The leader creates partitions from two seconds ahead; wait for the present to be covered.
    await until(async () => coveredAt(db.pool, await dbNow(db.pool)), 10_000);

    // Tasks end over more than two seconds, so their rows cross at least two period boundaries: each
    // round ends before the next is scheduled 250 ms later, however slow a loaded machine makes them.
    // Each round's rows are read as soon as it ended.
    const ids: string[] = [];
    const finishedAt = new Map<string, number>();
    const partitions = new Set<string>();
    for (let round = 0; round < 10; round++) {
      const batch = await node.client.scheduleMany(defs.echo, [{ message: round }, { message: round }]);
      await waitForTasks(node.client, batch);
      const { rows } = await db.pool.query<{ id: string; finished_at: Date }>(
        `select id, finished_at from tm_history where id = any($1)`,
        [batch],
      );
      expect(rows).toHaveLength(batch.length);
      for (const r of rows) finishedAt.set(r.id, r.finished_at.getTime());
      for (const p of (await partitionOf(db.pool, batch)).values()) partitions.add(p);
      ids.push(...batch);
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(partitions.has('tm_history_default')).toBe(false);
    expect(partitions.size).toBeGreaterThanOrEqual(3);

    // Watch every task until it is gone (database time before and after each look): found, completed
    // with its result, until its retention; gone within retention + period + a few passes; never back.
    const client = new TaskmillClient({ pool: db.pool });
    const lastSeen = new Map<string, number>();
    const goneAt = new Map<string, number>();
    await until(
      async () => {
        const before = await dbNow(db.pool);
        const found = await Promise.all(
          ids.map(async (id) => [id, await client.getTask(id), await findTask(db.pool, id)] as const),
        );
        const after = await dbNow(db.pool);
        for (const [id, viaClient, viaStore] of found) {
          if (viaStore) {
            expect(goneAt.has(id)).toBe(false);
            expect(viaClient).toMatchObject({ state: 'completed', result: { message: expect.any(Number) } });
            expect(viaStore).toMatchObject({ id, state: 'completed' });
            lastSeen.set(id, before);
          } else {
            // Looked up by the client first: its partition may have gone between the two lookups.
            if (viaClient) expect(goneAt.has(id)).toBe(false);
            if (!goneAt.has(id)) goneAt.set(id, after);
          }
        }
        return goneAt.size === ids.length;
      },
      30_000,
      100,
    );
    for (const id of ids) {
      const finished = finishedAt.get(id)!;
      expect(goneAt.get(id)!).toBeGreaterThanOrEqual(finished + retentionMs);
      expect(lastSeen.get(id)!).toBeGreaterThanOrEqual(finished + retentionMs - 1_500);
      expect(goneAt.get(id)!).toBeLessThan(finished + retentionMs + SECOND + 2_500);
    }
    // Gone with their partitions: no row was deleted anywhere, and the partitions no longer exist.
    expect(await deletes()).toEqual({});
    const remaining = new Set((await listPartitions(db.pool)).map((p) => p.name));
    for (const p of partitions) expect(remaining.has(p)).toBe(false);
    expect(
      await count(db.pool, `select count(*) from pg_class where relname = any($1)`, [[...partitions]]),
    ).toBe(0);
    // The purge count of a dropped partition is PostgreSQL's row estimate once it was vacuumed: reported,
    // but not exact.
    expect(purged.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
  }, 60_000);

  it('never fails an insert for lack of a partition: the default takes it, and maintenance moves or purges it', async () => {
    const db = await database();
    const retention = new HistoryRetention({ db: db.pool, retentionMs: 10 * SECOND, periodMs: SECOND });
    const insert = (finishedAtSql: string) =>
      db.pool
        .query<{ id: string }>(
          `insert into tm_history (id, name, workflow_id, state, attempts, created_at, finished_at)
           values (gen_random_uuid(), 'noop', gen_random_uuid(), 'completed', 1, now(), ${finishedAtSql}) returning id`,
        )
        .then((r) => r.rows[0].id);
    // No partition exists yet: every row lands in the default partition.
    const expired = await insert(`now() - interval '30 seconds'`);
    const recent = await insert(`now() - interval '5 seconds'`);
    const future = await insert(`now() + interval '1 hour'`);
    expect([...(await partitionOf(db.pool, [expired, recent, future])).values()]).toEqual(
      Array(3).fill('tm_history_default'),
    );

    const first = await retention.runOnce();
    expect(first).toMatchObject({ skipped: false, dropped: [], purgedFromDefault: 1, deferred: [] });
    const moved = first.created.filter((c) => c.moved > 0);
    expect(moved).toHaveLength(2);
    for (const c of moved) expect(c.to.getTime() - c.from.getTime()).toBe(SECOND);
    const where = await partitionOf(db.pool, [expired, recent, future]);
    expect(where.has(expired)).toBe(false);
    expect(where.get(recent)).toMatch(/^tm_history_p\d{8}t\d{6}$/);
    expect(where.get(future)).toMatch(/^tm_history_p\d{8}t\d{6}$/);
    expect(await count(db.pool, `select count(*) from tm_history_default`)).toBe(0);
    expect(await findTask(db.pool, recent)).toMatchObject({ state: 'completed' });

    // Partitions start two seconds ahead of the present (a row of the seconds before lands in the
    // default partition and moves once they are past, as above) and reach three periods ahead.
    const now = await dbNow(db.pool);
    expect(await coveredAt(db.pool, now)).toBe(false);
    expect(await coveredAt(db.pool, now + 3 * SECOND)).toBe(true);
    // A second pass has nothing to redo: it drops and purges nothing, and creates only what time
    // brought within reach meanwhile (1 s periods: a boundary may pass between the two passes), never a
    // range already covered.
    const before = await listPartitions(db.pool);
    const second = await retention.runOnce();
    expect(second).toMatchObject({ dropped: [], purgedFromDefault: 0 });
    for (const c of second.created) {
      expect(before.filter((p) => p.from < c.to && c.from < p.to)).toEqual([]);
      expect(c.moved).toBe(0);
    }
  }, 20_000);

  it('hides no row from a read that runs while rows move out of the default partition', async () => {
    const db = await database();
    const ids = await Promise.all(
      [30, 20, 10].map((ago) =>
        db.pool
          .query<{ id: string }>(
            `insert into tm_history (id, name, workflow_id, state, attempts, created_at, finished_at)
             values (gen_random_uuid(), 'noop', gen_random_uuid(), 'completed', 1, now(), now() - $1 * interval '1 minute')
             returning id`,
            [ago],
          )
          .then((r) => r.rows[0].id),
      ),
    );
    const mover = await db.pool.connect();
    const reader = await db.pool.connect();
    try {
      const { rows } = await mover.query<{ pid: number }>(`select pg_backend_pid() as pid`);
      await mover.query('begin');
      // The move holds its locks until commit; a read of the whole table starts meanwhile and waits.
      await mover.query(
        `select tm_history_add_partition(now() - interval '1 hour', now() - interval '1 minute', 5000, null)`,
      );
      const readerPid = (await reader.query<{ pid: number }>(`select pg_backend_pid() as pid`)).rows[0].pid;
      const read = reader.query<{ n: string }>(`select count(*) as n from tm_history where id = any($1)`, [
        ids,
      ]);
      await until(
        async () =>
          (
            await db.pool.query(
              `select 1 from pg_stat_activity where pid = $1 and wait_event_type = 'Lock'`,
              [readerPid],
            )
          ).rowCount === 1,
        10_000,
      );
      expect(rows[0].pid).not.toBe(readerPid);
      await mover.query('commit');
      expect(Number((await read).rows[0].n)).toBe(3);
    } finally {
      mover.release();
      reader.release();
    }
    expect([...(await partitionOf(db.pool, ids)).values()].every((p) => p !== 'tm_history_default')).toBe(
      true,
    );
  }, 20_000);

  it('does not attach a range that an open transaction may still write into, and moves its row afterwards', async () => {
    const db = await database();
    const retention = new HistoryRetention({ db: db.pool, retentionMs: 60 * SECOND, periodMs: SECOND });
    // Like an exactly-once task: a transaction that started now and writes its history row later,
    // stamped with its start time (finished_at defaults to now()).
    const open = new pg.Client(db.url);
    await open.connect();
    try {
      await open.query('begin');
      const started = (await open.query<{ t: Date }>(`select now() as t`)).rows[0].t.getTime();
      await retention.runOnce();
      // Partitions start a little ahead of `started`; wait until the gap before them is past by more
      // than the margin, which would let it be attached were no transaction open.
      const gapEnd = Math.min(...(await listPartitions(db.pool)).map((p) => p.from.getTime()));
      expect(gapEnd).toBeGreaterThan(started);
      await until(async () => (await dbNow(db.pool)) > gapEnd + 1_100, 10_000);
      const pass = await retention.runOnce();
      expect(pass.deferred).toEqual([]);
      expect(await coveredAt(db.pool, started)).toBe(false);
      const { rows } = await open.query<{ id: string }>(
        `insert into tm_history (id, name, workflow_id, state, attempts, created_at)
         values (gen_random_uuid(), 'noop', gen_random_uuid(), 'completed', 1, now()) returning id`,
      );
      await open.query('commit');
      const id = rows[0].id;
      expect((await partitionOf(db.pool, [id])).get(id)).toBe('tm_history_default');

      const after = await retention.runOnce();
      expect(
        after.created.find((c) => c.from.getTime() <= started && started < c.to.getTime()),
      ).toMatchObject({
        moved: 1,
      });
      expect((await partitionOf(db.pool, [id])).get(id)).not.toBe('tm_history_default');
    } finally {
      await open.end();
    }
  }, 20_000);

  it('keeps completions, failures and cancellations flowing while partitions are created and dropped', async () => {
    const db = await database();
    const deletes = await recordDeletes(db.pool);
    const retention = new HistoryRetention({ db: db.pool, retentionMs: 2 * SECOND, periodMs: SECOND });
    await until(async () => {
      await retention.runOnce();
      return coveredAt(db.pool, await dbNow(db.pool));
    }, 5_000);
    const nodeId = await insertNode(db.pool);

    const stopAt = Date.now() + 6_000;
    const latencies: number[] = [];
    const errors: unknown[] = [];
    let ended = 0;
    const calls: { startedAt: number; ids: string[] }[] = [];
    const timed = async <T>(ids: string[], run: () => Promise<T>) => {
      const startedAt = Date.now();
      const start = performance.now();
      const result = await run();
      latencies.push(performance.now() - start);
      calls.push({ startedAt, ids });
      return result;
    };
    const worker = async () => {
      const pool = new pg.Pool({ connectionString: db.url, max: 1 });
      try {
        while (Date.now() < stopAt) {
          const held = await insertTasks(
            pool,
            Array.from({ length: 10 }, () => ({ state: 'running' as const, nodeId, assignment: 1 })),
          );
          const ready = await insertTasks(pool, [{}, {}]);
          try {
            const done = await timed(
              held.slice(0, 8).map((t) => t.id),
              () =>
                completeTasks(
                  pool,
                  nodeId,
                  held.slice(0, 8).map((t) => ({
                    kind: 'done' as const,
                    task: { id: t.id, assignment: 1 },
                    result: null,
                    children: [],
                    joinMessages: [],
                  })),
                ),
            );
            const failed = await timed(
              held.slice(8).map((t) => t.id),
              () =>
                failTasks(
                  pool,
                  nodeId,
                  held.slice(8).map((t) => ({
                    kind: 'failed' as const,
                    task: { id: t.id, assignment: 1 },
                    error: { name: 'Error', message: 'boom' },
                    stopRetry: false,
                    settlement: { retryDelayMs: null, deadLetter: false, cancelled: false },
                  })),
                ),
            );
            const cancelled = await timed(
              ready.map((t) => t.id),
              () =>
                cancelTasks(
                  pool,
                  ready.map((t) => t.id),
                ),
            );
            expect(done).toHaveLength(8);
            expect(failed).toHaveLength(2);
            expect(cancelled).toHaveLength(2);
            ended += 12;
          } catch (error) {
            errors.push(error);
          }
        }
      } finally {
        await pool.end();
      }
    };

    // Maintenance as fast as it goes, plus a reader that holds tm_history for 1.5 s in the middle:
    // the drops it holds off give up at once instead of queueing the completions behind them.
    const passes: Awaited<ReturnType<HistoryRetention['runOnce']>>[] = [];
    const passMs: number[] = [];
    const maintain = async () => {
      while (Date.now() < stopAt) {
        const start = performance.now();
        passes.push(await retention.runOnce());
        passMs.push(performance.now() - start);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const longReader = async () => {
      await new Promise((r) => setTimeout(r, 2_000));
      const reader = new pg.Client(db.url);
      await reader.connect();
      await reader.query('begin');
      await reader.query('select count(*) from tm_history');
      await new Promise((r) => setTimeout(r, 1_500));
      await reader.query('commit');
      await reader.end();
    };
    await Promise.all([worker(), worker(), worker(), maintain(), longReader()]);

    expect(errors).toEqual([]);
    const created = passes.flatMap((p) => p.created);
    const dropped = passes.flatMap((p) => p.dropped);
    const deferred = passes.reduce((n, p) => n + p.deferred.length, 0);
    expect(created.length).toBeGreaterThanOrEqual(5);
    expect(dropped.length).toBeGreaterThanOrEqual(3);
    expect(deferred).toBeGreaterThan(0);
    expect(await deletes()).toEqual({});
    // Nothing is lost on the way: every task that ended within the retention is still there (a row is
    // stamped no earlier than its call started; the database runs on this machine's clock).
    const recentSince = (await dbNow(db.pool)) - 2 * SECOND;
    const recent = calls.filter((c) => c.startedAt >= recentSince).flatMap((c) => c.ids);
    expect(recent.length).toBeGreaterThan(0);
    expect(await count(db.pool, `select count(*) from tm_history where id = any($1)`, [recent])).toBe(
      recent.length,
    );
    expect(await count(db.pool, `select count(*) from tm_history`)).toBeLessThan(ended);

    const sorted = [...latencies].sort((a, b) => a - b);
    const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))].toFixed(1);
    const passesSorted = [...passMs].sort((a, b) => a - b);
    console.log(
      `history-retention: ${ended} tasks ended in ${latencies.length} calls; latency ms p50 ${at(0.5)} ` +
        `p99 ${at(0.99)} max ${at(1)}; ${passes.length} passes (p50 ${passesSorted[Math.floor(passesSorted.length / 2)].toFixed(1)} ms, ` +
        `max ${passesSorted[passesSorted.length - 1].toFixed(1)} ms): ${created.length} created, ${dropped.length} dropped, ${deferred} deferred`,
    );
  }, 30_000);

  it('migrates existing history in place and drops it by day once past the retention (clock moved)', async () => {
    const db = await database({ migrated: false });
    await db.pool.query(`create table taskmill_migrations (version integer primary key, name text not null,
      applied_at timestamptz not null default now())`);
    for (const m of knownMigrations().filter((m) => m.version < 4)) {
      await db.pool.query(m.sql);
      await db.pool.query(`insert into taskmill_migrations (version, name) values ($1, $2)`, [
        m.version,
        m.name,
      ]);
    }
    const { rows } = await db.pool.query<{ id: string }>(
      `insert into tm_history (id, name, workflow_id, state, result, attempts, created_at, finished_at)
       select gen_random_uuid(), 'echo', gen_random_uuid(), 'completed', '\\x90', 1, now() - d, now() - d
       from unnest(array[interval '0', interval '1 hour', interval '2 days']) d returning id`,
    );
    const ids = rows.map((r) => r.id);
    expect(await migrate(db.pool)).toEqual(
      knownMigrations()
        .filter((m) => m.version >= 4)
        .map((m) => m.version),
    );

    expect(await count(db.pool, `select count(*) from tm_history`)).toBe(3);
    expect([...new Set((await partitionOf(db.pool, ids)).values())]).toEqual(['tm_history_legacy']);
    const client = new TaskmillClient({ pool: db.pool });
    for (const id of ids)
      expect(await client.getTask(id)).toMatchObject({ id, state: 'completed', result: [] });
    const { rows: key } = await db.pool.query<{ def: string }>(
      `select pg_get_constraintdef(oid) as def from pg_constraint where conrelid = 'tm_history'::regclass and contype = 'p'`,
    );
    expect(key[0].def).toBe('PRIMARY KEY (id, finished_at)');

    // Seven days of retention: daily partitions on UTC midnights, the legacy one kept until its upper
    // bound is seven days old.
    const legacy = (await listPartitions(db.pool)).find((p) => p.name === 'tm_history_legacy')!;
    let now = legacy.to.getTime() + 7 * DAY - SECOND;
    const retention = new HistoryRetention({ db: db.pool, retentionMs: 7 * DAY, now: () => new Date(now) });
    expect(retention.periodMs).toBe(DAY);
    const early = await retention.runOnce();
    expect(early.dropped).toEqual([]);
    expect(early.created.length).toBeGreaterThanOrEqual(4);
    for (const c of early.created) {
      expect(c.from.getTime() % DAY).toBe(0);
      expect(c.to.getTime() - c.from.getTime()).toBe(DAY);
    }
    expect(await client.getTask(ids[2])).toMatchObject({ state: 'completed' });

    now += SECOND;
    const due = await retention.runOnce();
    expect(due.dropped).toEqual([expect.objectContaining({ name: 'tm_history_legacy', rows: 3 })]);
    for (const id of ids) expect(await client.getTask(id)).toBeUndefined();
    expect(await count(db.pool, `select count(*) from pg_class where relname = 'tm_history_legacy'`)).toBe(0);
  }, 20_000);
});
