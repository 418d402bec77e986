/**
 * One vocabulary of task states on every surface: the library (getTask, listTasks, clusterStats), the
 * CLI, the HTTP API and its OpenAPI document, the metrics and the dashboard all use TASK_STATES /
 * DEPTH_STATES of task/task-states.ts, and derive `delayed` and `retrying` from the rows by one rule.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCliCaptured } from './helpers/cli.ts';
import { renderStatus } from '../cli/commands/status.ts';
import { buildHttpApp } from '../http/server.ts';
import { TaskmillClient } from '../client/client.ts';
import { clusterStats, listTasks } from '../store/inspect.ts';
import { createLogger } from '../log/logger.ts';
import { DEFAULT_RETRY_POLICY, type RetryPolicy } from '../task/retry-policy.ts';
import {
  DEPTH_STATES,
  PENDING_STATES,
  ENDED_STATES,
  TASK_STATES,
  retryOutlook,
  visibleState,
  type TaskStatus,
} from '../task/task-states.ts';
import { useTestDatabase } from './helpers/database.ts';
import { insertTask } from './helpers/factory.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const HOUR = 3_600_000;
const db = useTestDatabase();
let client: TaskmillClient;
let app: FastifyInstance;
/** Task id by the state its row was written to show. */
const ids = {} as Record<
  'waiting' | 'sleeping' | 'delayed' | 'ready' | 'retrying' | 'dueRetry' | 'assigned' | 'running',
  string
>;
let dead: string;

beforeAll(async () => {
  client = new TaskmillClient({ pool: db.pool });
  ids.waiting = (await insertTask(db.pool, { state: 'waiting' })).id;
  // Sleeping (a durable wait): stored as such, whatever its not-before time.
  ids.sleeping = (await insertTask(db.pool, { state: 'sleeping', notBeforeInMs: HOUR, attempt: 1 })).id;
  ids.delayed = (await insertTask(db.pool, { notBeforeInMs: HOUR })).id;
  ids.ready = (await insertTask(db.pool, { notBeforeInMs: -1_000, affinity: 'k' })).id;
  ids.retrying = (await insertTask(db.pool, { attempt: 2, notBeforeInMs: HOUR, affinity: 'k' })).id;
  // A failed task whose next attempt is due is ready again: the planner takes it on its next pass.
  ids.dueRetry = (await insertTask(db.pool, { attempt: 1, notBeforeInMs: -1_000 })).id;
  const node = '0190a5b2-0000-7000-8000-0000000000aa';
  ids.assigned = (await insertTask(db.pool, { state: 'assigned', nodeId: node })).id;
  ids.running = (await insertTask(db.pool, { state: 'running', nodeId: node })).id;
  dead = '0190a5b2-0000-7000-8000-0000000000dd';
  await db.pool.query(
    `insert into tm_dead_letters (id, name, workflow_id, workflow_created_at, affinity_group, affinity,
       strict_affinity, message, priority, attempts, error, created_at)
     values ($1, 'noop', $1, now(), '', 'k', false, null, 0, 3, 'boom', now())`,
    [dead],
  );
  await db.pool.query(
    `insert into tm_history (id, name, workflow_id, state, attempts, created_at)
     values ('0190a5b2-0000-7000-8000-0000000000cc', 'noop', '0190a5b2-0000-7000-8000-0000000000cc', 'completed',
       1, now())`,
  );
  app = await buildHttpApp({ pool: db.pool, log: createLogger('silent') });
}, 60_000);

afterAll(async () => {
  await app?.close();
});

const expected: Record<keyof typeof ids, TaskStatus> = {
  waiting: 'waiting',
  sleeping: 'sleeping',
  delayed: 'delayed',
  ready: 'ready',
  retrying: 'retrying',
  dueRetry: 'ready',
  assigned: 'assigned',
  running: 'running',
};

const cli = (args: string[]) =>
  runCliCaptured(args, { url: db.url, env: { PATH: process.env.PATH, HOME: process.env.HOME }, cwd: ROOT });

describe('the list of states', () => {
  it('is made of the pending states, the ended ones and dead, each once', () => {
    expect([...TASK_STATES].sort()).toEqual([...PENDING_STATES, ...ENDED_STATES, 'dead'].sort());
    expect(new Set(TASK_STATES).size).toBe(TASK_STATES.length);
    expect(DEPTH_STATES).toEqual([...PENDING_STATES, 'dead']);
  });

  it('derives delayed and retrying from ready rows not yet due, by failed attempts', () => {
    const now = new Date('2030-01-01T00:00:00Z');
    const later = new Date(now.getTime() + 1);
    const cases: [string, number, Date | null, TaskStatus][] = [
      ['ready', 0, later, 'delayed'],
      ['ready', 3, later, 'retrying'],
      ['ready', 3, now, 'ready'],
      ['ready', 0, null, 'ready'],
      ['waiting', 0, later, 'waiting'],
      ['sleeping', 2, later, 'sleeping'],
      ['running', 2, later, 'running'],
    ];
    for (const [stored, attempts, notBefore, state] of cases)
      expect(visibleState(stored, attempts, notBefore, now), `${stored}/${attempts}`).toBe(state);
  });
});

describe('every surface uses it', () => {
  it('library: getTask and listTasks agree on every row, and filter by every state', async () => {
    for (const [key, id] of Object.entries(ids)) {
      const state = expected[key as keyof typeof ids];
      expect((await client.getTask(id))?.state, key).toBe(state);
    }
    expect((await client.getTask(dead))?.state).toBe('dead');
    const all = await listTasks(db.pool);
    for (const [key, id] of Object.entries(ids))
      expect(all.tasks.find((t) => t.id === id)?.state, key).toBe(expected[key as keyof typeof ids]);
    for (const state of TASK_STATES) {
      const page = await listTasks(db.pool, { states: [state] });
      expect(
        page.tasks.every((t) => t.state === state),
        state,
      ).toBe(true);
    }
    expect((await listTasks(db.pool, { states: ['delayed'] })).tasks.map((t) => t.id)).toEqual([ids.delayed]);
    expect((await listTasks(db.pool, { states: ['retrying'] })).tasks.map((t) => t.id)).toEqual([
      ids.retrying,
    ]);
    expect((await listTasks(db.pool, { states: ['ready'] })).tasks.map((t) => t.id).sort()).toEqual(
      [ids.ready, ids.dueRetry].sort(),
    );
  });

  it('library: the queue depths and their totals count exactly DEPTH_STATES', async () => {
    const stats = await clusterStats(db.pool);
    expect(Object.keys(stats.totals)).toEqual([...DEPTH_STATES]);
    expect(stats.totals).toEqual({
      waiting: 1,
      sleeping: 1,
      delayed: 1,
      ready: 2,
      retrying: 1,
      assigned: 1,
      running: 1,
      dead: 1,
    });
    for (const d of stats.depths) expect(DEPTH_STATES).toContain(d.state);
    const text = renderStatus(stats);
    expect(text).toContain(`queue: ${DEPTH_STATES.map((s) => `${s} ${stats.totals[s]}`).join(', ')}`);
  });

  it('every row has every field, whichever tables the filter reads', async () => {
    const keys = Object.keys((await listTasks(db.pool, { states: ['running'] })).tasks[0]).sort();
    for (const state of ['completed', 'dead'] as const) {
      const [task] = (await listTasks(db.pool, { states: [state] })).tasks;
      expect(Object.keys(task).sort(), state).toEqual(keys);
      expect(task.state).toBe(state);
      expect(task.affinityGroup, state).toBeNull();
      expect(task.finishedAt, state).toBeInstanceOf(Date);
    }
  });

  it('an affinity without a group shows its group as null, pending or dead', async () => {
    const page = await listTasks(db.pool);
    expect(page.tasks.find((t) => t.id === ids.ready)).toMatchObject({ affinityGroup: null, affinity: 'k' });
    expect(page.tasks.find((t) => t.id === dead)).toMatchObject({ affinityGroup: null, affinity: 'k' });
    expect(page.tasks.find((t) => t.id === ids.delayed)).toMatchObject({
      affinityGroup: null,
      affinity: null,
    });
  });

  it('CLI: task list --state takes every state and prints the derived ones', async () => {
    for (const state of TASK_STATES) {
      const run = await cli(['task', 'list', '--state', state, '--json']);
      expect(run.err, state).toBe('');
      expect(run.code, state).toBe(0);
      const page = JSON.parse(run.out) as { tasks: { id: string; state: string }[] };
      expect(
        page.tasks.every((t) => t.state === state),
        state,
      ).toBe(true);
    }
    const delayed = await cli(['task', 'list', '--state', 'delayed,retrying']);
    expect(delayed.code).toBe(0);
    expect(delayed.out).toMatch(new RegExp(`${ids.delayed}.*delayed`));
    expect(delayed.out).toMatch(new RegExp(`${ids.retrying}.*retrying`));
    expect(delayed.out).not.toContain(ids.ready);
    const bad = await cli(['task', 'list', '--state', 'later']);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toContain(`use ${TASK_STATES.join(', ')}`);
    const help = await cli(['task', 'list', '--help']);
    expect(help.out.replace(/\s+/g, ' ')).toContain(TASK_STATES.join(', '));
    const status = await cli(['status', '--json']);
    expect(Object.keys(JSON.parse(status.out).totals)).toEqual([...DEPTH_STATES]);
  });

  it('HTTP: the OpenAPI enums are the lists, and list, get and stats answer with them', async () => {
    const spec = (await app.inject({ method: 'GET', url: '/openapi.json' })).json();
    const enums: unknown[][] = [];
    const walk = (v: unknown, key = ''): void => {
      if (Array.isArray(v)) v.forEach((x) => walk(x));
      else if (v && typeof v === 'object') {
        const o = v as Record<string, unknown>;
        if (key === 'state' && Array.isArray(o.enum) && o.enum.includes('running')) enums.push(o.enum);
        if (key === 'state' && o.items && Array.isArray((o.items as { enum?: unknown[] }).enum))
          enums.push((o.items as { enum: unknown[] }).enum);
        // A query parameter: { name: 'state', schema: { type: 'array', items: { enum } } }.
        const items = (o.schema as { items?: { enum?: unknown[] } } | undefined)?.items;
        if (o.name === 'state' && Array.isArray(items?.enum)) enums.push(items.enum);
        for (const [k, x] of Object.entries(o)) walk(x, k);
      }
    };
    walk(spec);
    expect(enums.length).toBeGreaterThanOrEqual(4);
    for (const e of enums) expect([[...TASK_STATES], [...DEPTH_STATES]]).toContainEqual(e);
    const totals =
      spec.paths['/api/stats'].get.responses['200'].content['application/json'].schema.properties.totals
        .properties;
    expect(Object.keys(totals)).toEqual([...DEPTH_STATES]);

    const list = await app.inject({ method: 'GET', url: '/api/tasks?state=retrying,delayed' });
    expect(list.statusCode).toBe(200);
    expect(
      list
        .json()
        .tasks.map((t: { id: string; state: string }) => [t.id, t.state])
        .sort(),
    ).toEqual(
      [
        [ids.delayed, 'delayed'],
        [ids.retrying, 'retrying'],
      ].sort(),
    );
    expect(list.json().tasks.find((t: { id: string }) => t.id === ids.retrying).affinityGroup).toBeNull();
    const one = await app.inject({ method: 'GET', url: `/api/tasks/${ids.retrying}` });
    expect(one.json()).toMatchObject({ state: 'retrying', retry: { attemptsSoFar: 2 } });
    const stats = await app.inject({ method: 'GET', url: '/api/stats' });
    expect(Object.keys(stats.json().totals)).toEqual([...DEPTH_STATES]);
  });

  it('metrics: taskmill_queue_depth has a series for every depth state of a task', async () => {
    const text = (await app.inject({ method: 'GET', url: '/metrics' })).body;
    const states = [...text.matchAll(/^taskmill_queue_depth\{task="noop",state="([a-z]+)"\}/gm)].map(
      (m) => m[1],
    );
    expect(states.sort()).toEqual([...DEPTH_STATES].sort());
    expect(text).toMatch(/^taskmill_queue_depth\{task="noop",state="retrying"\} 1$/m);
  });

  it('dashboard: keeps no list of its own and takes the states from /api/stats', () => {
    const html = readFileSync(path.join(ROOT, 'http/dashboard.html'), 'utf8');
    const script = html.slice(html.indexOf('<script>'));
    for (const state of PENDING_STATES)
      expect(script, `the dashboard script names ${state}`).not.toMatch(new RegExp(`['"\`]${state}['"\`,]`));
    expect(script).toContain('Object.keys(stats.totals)');
  });
});

describe('retry outlook', () => {
  const created = new Date('2030-01-01T00:00:00Z');
  it('the default policy allows 10 attempts of an always-failing task, the last 2,560 s after creation', () => {
    const r = retryOutlook(
      undefined,
      { state: 'ready', attempts: 0, createdAt: created, notBefore: created },
      created,
    );
    expect(r).toMatchObject({ registered: false, attemptsSoFar: 0, attemptsLeft: 10 });
    expect(r.policy).toEqual(DEFAULT_RETRY_POLICY);
    expect(r.lastAttemptBy?.getTime()).toBe(created.getTime() + 2_560_000);
  });

  it('counts the attempts a policy still allows after the failed ones', () => {
    const fixed: RetryPolicy = { mode: 'FIXED', delayMs: 1_000, maxRetries: 3, maxIntervalMs: HOUR };
    const next = new Date(created.getTime() + 2_000);
    const cases: [RetryPolicy, number, number | null][] = [
      [{ mode: 'OFF' }, 0, 1],
      [fixed, 0, 4],
      [fixed, 2, 2],
      [fixed, 3, 1],
      [{ ...fixed, maxRetries: -1, maxIntervalMs: 10_000 }, 2, 9],
      [{ ...fixed, maxRetries: -1, delayMs: 0 }, 2, null],
    ];
    for (const [policy, attempts, left] of cases) {
      const r = retryOutlook(
        policy,
        { state: 'retrying', attempts, createdAt: created, notBefore: next },
        created,
      );
      expect(r.attemptsLeft, `${JSON.stringify(policy)} after ${attempts}`).toBe(left);
      expect(r.nextAttemptAt).toEqual(next);
    }
  });

  it('getTask reports the registered policy, attempts so far and left, and the next attempt', async () => {
    const policy: RetryPolicy = { mode: 'FIXED', delayMs: 60_000, maxRetries: 5, maxIntervalMs: 24 * HOUR };
    await db.pool.query(`insert into tm_task_defs (name, options) values ('flaky', $1::jsonb)`, [
      JSON.stringify({ handler: 'file:///flaky.ts', retry: policy }),
    ]);
    const { id } = await insertTask(db.pool, { name: 'flaky', attempt: 2, notBeforeInMs: 30_000 });
    const task = await client.getTask(id);
    expect(task?.state).toBe('retrying');
    expect(task?.retry).toMatchObject({ policy, registered: true, attemptsSoFar: 2, attemptsLeft: 4 });
    expect(task?.retry?.nextAttemptAt).toEqual(task?.notBefore);

    const shown = await cli(['task', 'show', id]);
    expect(shown.code).toBe(0);
    expect(shown.out).toMatch(/state:\s+retrying/);
    expect(shown.out).toMatch(/retry:\s+FIXED: retried every 60 s, at most 5 times/);
    expect(shown.out).toMatch(/failed:\s+2 attempts so far/);
    expect(shown.out).toMatch(/attempts left:\s+at most 4, the next one included/);
    expect(shown.out).toMatch(/next attempt:\s+\S+Z \(in \d+ s\)/);
    const fresh = await cli(['task', 'show', ids.ready]);
    expect(fresh.out).toMatch(/retry:\s+BACKOFF: .*\(the default: no node registered this task\)/);
    expect(fresh.out).toMatch(/attempts left:\s+at most 10/);
    expect((await client.getTask(dead))?.retry).toBeNull();
  });
});
