import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildHttpApp, startHttpServer, type HttpServer } from '../http/server.ts';
import { checkBinding, parseAllowedHosts } from '../http/auth.ts';
import { SubmitBatcher } from '../http/submit-batcher.ts';
import type { TaskmillClient } from '../client/client.ts';
import type { ScheduleContext } from '../task/schedule-context.ts';
import { createLogger } from '../log/logger.ts';
import type { TaskmillNode } from '../index.ts';
import type { FlushResult } from '../node/completer.ts';
import { TaskmillMetrics } from '../node/metrics.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';
import { docExamples, runCurl } from './helpers/doc-examples.ts';

const silent = createLogger('silent');
const db = useTestDatabase();
let node: TaskmillNode;
let server: HttpServer;
let metrics: TaskmillMetrics;

beforeAll(async () => {
  node = await startTestNode(db.url);
  // Latency counts history rows once they are latencySettleMs old (2 s by default), and a scrape
  // reuses a database snapshot younger than snapshotTtlMs (500 ms): the metrics test scrapes right
  // after its tasks ended (their end is committed by then), and reads the database anew.
  metrics = new TaskmillMetrics({
    db: db.pool,
    nodeTimeoutMs: 1_000,
    latencySettleMs: 0,
    snapshotTtlMs: 0,
    log: silent,
  });
  metrics.observe(node);
  server = await startHttpServer({
    connectionString: db.url,
    port: 0,
    node,
    metrics,
    log: silent,
    nodeTimeoutMs: 1_000,
  });
});
afterAll(async () => {
  await server?.close();
  metrics?.close();
  await stopAllNodes();
});

async function call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const response = await fetch(server.url + path, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.text();
  let json: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- response bodies are checked field by field
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, json, text, headers: response.headers };
}

const pendingCount = () => count(db.pool, `select count(*) from tm_tasks`);
/** Tasks ever scheduled and still known: running them moves rows between tables, not out of them. */
const knownTasks = () =>
  count(
    db.pool,
    `select (select count(*) from tm_tasks) + (select count(*) from tm_history) + (select count(*) from tm_dead_letters)`,
  );

/** A request with headers fetch() will not send as given (Host), to `url` (default: the test server). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked field by field
type Json = any;
function rawCall(
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: unknown,
  url = server.url,
): Promise<{ status: number; json: Json }> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      url + path,
      {
        method,
        headers: payload === undefined ? headers : { 'content-type': 'application/json', ...headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, json });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}
/** Every task of these tests ends within seconds; the margin is for a loaded 2-core machine. */
const ended = (id: string, timeoutMs = 30_000) => node.client.waitForTask(id, { timeoutMs });

describe('submitting tasks', () => {
  it('schedules one task and returns it with its result once it ran', async () => {
    const submit = await call('POST', '/api/tasks', { name: 'echo', message: { hello: 'world' } });
    expect(submit.status).toBe(201);
    expect(submit.json.id).toMatch(/^[0-9a-f-]{36}$/);
    await ended(submit.json.id);
    const task = await call('GET', `/api/tasks/${submit.json.id}`);
    expect(task.status).toBe(200);
    expect(task.json).toMatchObject({
      id: submit.json.id,
      name: 'echo',
      state: 'completed',
      attempts: 1,
      result: { message: { hello: 'world' }, attempt: 1 },
    });
  });

  it('schedules many tasks of several names in one request, ids in request order', async () => {
    const submit = await call('POST', '/api/tasks', [
      { name: 'noop' },
      { name: 'echo', message: 1 },
      { name: 'noop', priority: 5 },
    ]);
    expect(submit.status).toBe(201);
    expect(submit.json.ids).toHaveLength(3);
    for (const id of submit.json.ids) await ended(id);
    const names = await Promise.all(
      submit.json.ids.map(async (id: string) => (await call('GET', `/api/tasks/${id}`)).json.name),
    );
    expect(names).toEqual(['noop', 'echo', 'noop']);
  });

  it('takes a delay, an epoch-ms time or an ISO time', async () => {
    const before = Date.now();
    const delayed = await call('POST', '/api/tasks', { name: 'noop', delayMs: 3_600_000 });
    const atEpoch = await call('POST', '/api/tasks', { name: 'noop', runAt: before + 7_200_000 });
    const atIso = await call('POST', '/api/tasks', {
      name: 'noop',
      runAt: new Date(before + 10_800_000).toISOString(),
    });
    const notBefore = async (id: string) =>
      new Date((await call('GET', `/api/tasks/${id}`)).json.notBefore).getTime();
    expect(Math.abs((await notBefore(delayed.json.id)) - (before + 3_600_000))).toBeLessThan(60_000);
    expect(await notBefore(atEpoch.json.id)).toBe(before + 7_200_000);
    expect(await notBefore(atIso.json.id)).toBe(before + 10_800_000);
    for (const r of [delayed, atEpoch, atIso])
      expect((await call('POST', `/api/tasks/${r.json.id}/cancel`)).status).toBe(200);
  });

  it.each([
    ['an unknown task name', { name: 'nope' }, 'UNKNOWN_TASK', /nope/],
    [
      'an unknown name in the middle of a batch',
      [{ name: 'noop' }, { name: 'nope' }, { name: 'noop' }],
      'UNKNOWN_TASK',
      /nope/,
    ],
    [
      'a bad item in a batch',
      [{ name: 'noop' }, { name: 'noop', delayMs: -1 }],
      'INVALID_ARGUMENT',
      /body\.1\.delayMs must be >= 0/,
    ],
    ['a negative delay', { name: 'noop', delayMs: -5 }, 'INVALID_ARGUMENT', /delayMs must be >= 0/],
    [
      'a field that does not exist',
      { name: 'noop', delay: 5 },
      'INVALID_ARGUMENT',
      /additional properties \(delay\)/,
    ],
    ['a missing name', { message: 1 }, 'INVALID_ARGUMENT', /required property 'name'/],
    ['a runAt that is not a time', { name: 'noop', runAt: 'tomorrow' }, 'INVALID_ARGUMENT', /runAt/],
    [
      'both delayMs and runAt',
      { name: 'noop', delayMs: 1, runAt: Date.now() },
      'INVALID_ARGUMENT',
      /delayMs or runAt/,
    ],
    [
      'a workflow id that is not a UUID',
      { name: 'noop', workflowId: 'w1' },
      'INVALID_ARGUMENT',
      /workflowId must match format "uuid"/,
    ],
    ['an empty batch', [], 'INVALID_ARGUMENT', /fewer than 1/],
    ['a body that is not JSON', '{"name": ', 'FST_ERR_CTP_INVALID_JSON_BODY', /JSON/],
  ])('refuses %s with a 400 and schedules nothing', async (_what, body, code, message) => {
    const before = await pendingCount();
    const response = await call('POST', '/api/tasks', body);
    expect(response.status).toBe(400);
    expect(response.json.code).toBe(code);
    expect(response.json.message).toMatch(message);
    expect(await pendingCount()).toBe(before);
  });
});

describe('request bodies are taken as sent, never coerced', () => {
  const id = '0190a6e2-5b8f-7d2a-9a51-8f1f4c3e2d10';
  it.each([
    ['a name in an array', { name: ['echo'] }, /body\.name must be string/],
    ['runAt true', { name: 'noop', runAt: true }, /body\.runAt must be integer,string/],
    ['delayMs null', { name: 'noop', delayMs: null }, /body\.delayMs must be integer/],
    ['delayMs as text', { name: 'noop', delayMs: '10' }, /body\.delayMs must be integer/],
    ['priority as text', { name: 'noop', priority: '5' }, /body\.priority must be integer/],
    ['dependsOn as one id', { name: 'noop', dependsOn: id }, /body\.dependsOn must be array/],
    ['affinity as a number', { name: 'noop', affinity: 7 }, /body\.affinity must be string/],
    ['a batch item of the wrong type', [{ name: 'noop' }, 'noop'], /body\.1 must be object/],
  ])('refuses %s with a 400 and schedules nothing', async (_what, body, message) => {
    const before = await knownTasks();
    const response = await call('POST', '/api/tasks', body);
    expect(response.status).toBe(400);
    expect(response.json.code).toBe('INVALID_ARGUMENT');
    expect(response.json.message).toMatch(message);
    expect(await knownTasks()).toBe(before);
  });

  it('refuses requeue and purge bodies of the wrong type', async () => {
    for (const body of [{ all: 'true' }, { ids: id }, { name: ['echo'] }]) {
      const response = await call('POST', '/api/dead-letters/requeue', body);
      expect(response.status, JSON.stringify(body)).toBe(400);
    }
    for (const body of [{ olderThanMs: '0' }, { olderThanMs: null }, { olderThanMs: 1e300 }, { ids: id }]) {
      const response = await call('POST', '/api/dead-letters/purge', body);
      expect(response.status, JSON.stringify(body)).toBe(400);
      expect(response.json.code).toBe('INVALID_ARGUMENT');
    }
  });

  it('still parses query strings: numbers, repeated and comma-separated lists', async () => {
    const listed = await call('GET', '/api/tasks?limit=2&state=completed&state=failed,dead');
    expect(listed.status).toBe(200);
    expect(listed.json.tasks.length).toBeLessThanOrEqual(2);
    expect((await call('GET', '/api/stats?windowMinutes=5&bucketSeconds=60')).status).toBe(200);
    expect((await call('GET', '/api/dead-letters?limit=1')).status).toBe(200);
    for (const query of ['limit=abc', 'limit=1.5', 'limit=0', 'limit=1&limit=2', 'name=%00', 'nope=1']) {
      const response = await call('GET', `/api/tasks?${query}`);
      expect(response.status, query).toBe(400);
      expect(response.json.code, query).toBe('INVALID_ARGUMENT');
    }
    expect((await call('GET', '/api/dead-letters?name=%00')).status).toBe(400);
    expect((await call('GET', '/api/stats?windowMinutes=x')).status).toBe(400);
  });
});

describe('concurrent submits', () => {
  it('share multi-row inserts, and a bad request among them fails alone', async () => {
    const before = await pendingCount();
    const bodies = Array.from({ length: 30 }, (_, i) =>
      i === 17
        ? { name: 'noop', affinityGroup: 'g', delayMs: 3_600_000 }
        : { name: 'noop', message: i, delayMs: 3_600_000 },
    );
    const responses = await Promise.all(bodies.map((b) => call('POST', '/api/tasks', b)));
    expect(responses.map((r) => r.status)).toEqual(bodies.map((_, i) => (i === 17 ? 400 : 201)));
    expect(responses[17].json.message).toMatch(/affinityGroup was given without affinity/);
    expect(await pendingCount()).toBe(before + 29);
    // Each request got its own task.
    const stored = await Promise.all(
      responses
        .filter((r) => r.status === 201)
        .map(async (r) => (await call('GET', `/api/tasks/${r.json.id}`)).json.id),
    );
    expect(new Set(stored).size).toBe(29);
  });

  it('answers each request with its own ids from one statement', async () => {
    const calls: number[] = [];
    const fake = {
      async scheduleMany(_name: unknown, ctxs: ScheduleContext[]) {
        calls.push(ctxs.length);
        if (ctxs.some((c) => c.message === 'bad')) throw new Error('bad message');
        return ctxs.map((c) => `id-${String(c.message)}`);
      },
    } as unknown as TaskmillClient;
    const batcher = new SubmitBatcher(fake);
    const ids = await Promise.all([
      batcher.submit('noop', [{ message: 1 }, { message: 2 }]),
      batcher.submit('noop', [{ message: 3 }]),
      batcher.submit('noop', [{ message: 4 }, { message: 5 }]),
    ]);
    expect(ids).toEqual([['id-1', 'id-2'], ['id-3'], ['id-4', 'id-5']]);
    expect(calls).toEqual([5]);

    calls.length = 0;
    const outcomes = await Promise.allSettled([
      batcher.submit('noop', [{ message: 6 }]),
      batcher.submit('noop', [{ message: 'bad' }]),
      batcher.submit('noop', [{ message: 7 }]),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    // The failed batch, then each request alone.
    expect(calls).toEqual([3, 1, 1, 1]);
  });
});

describe('dependencies', () => {
  it('holds a task until the tasks it depends on completed', async () => {
    const first = await call('POST', '/api/tasks', { name: 'noop', delayMs: 3_600_000 });
    const second = await call('POST', '/api/tasks', {
      name: 'echo',
      message: 'after',
      dependsOn: [first.json.id],
    });
    expect(second.status).toBe(201);
    expect((await call('GET', `/api/tasks/${second.json.id}`)).json.state).toBe('waiting');
    await call('POST', `/api/tasks/${first.json.id}/cancel`);
    // A dependency that ends without success fails its dependents, with the reason.
    await ended(second.json.id);
    const task = (await call('GET', `/api/tasks/${second.json.id}`)).json;
    expect(task).toMatchObject({ state: 'failed', error: expect.stringMatching(/DependencyFailed/) });
  });

  it('refuses dependencies on unknown tasks and schedules nothing', async () => {
    const before = await pendingCount();
    const response = await call('POST', '/api/tasks', [
      { name: 'noop' },
      { name: 'noop', dependsOn: ['0190a5b2-0000-7000-8000-0000000000ee'] },
    ]);
    expect(response.status).toBe(400);
    expect(response.json.message).toMatch(/unknown task ids: 0190a5b2-0000-7000-8000-0000000000ee/);
    expect(await pendingCount()).toBe(before);
  });
});

describe('dead letters', () => {
  it('lists, shows, requeues and purges them', async () => {
    const { json } = await call('POST', '/api/tasks', { name: 'throws', message: { why: 'test' } });
    await ended(json.id);
    const list = await call('GET', '/api/dead-letters?name=throws&limit=10');
    expect(list.json.deadLetters.map((d: { id: string }) => d.id)).toContain(json.id);
    const one = await call('GET', `/api/dead-letters/${json.id}`);
    expect(one.json).toMatchObject({ id: json.id, name: 'throws', attempts: 3, message: { why: 'test' } });
    expect((await call('POST', `/api/dead-letters/${json.id}/requeue`)).json).toEqual({
      requeued: [json.id],
    });
    // It fails again and comes back to the dead-letter table.
    expect(await ended(json.id)).toMatchObject({ state: 'dead' });
    expect((await call('POST', '/api/dead-letters/requeue', { name: 'throws' })).json.requeued).toContain(
      json.id,
    );
    expect(await ended(json.id)).toMatchObject({ state: 'dead' });
    expect((await call('POST', '/api/dead-letters/purge', { ids: [json.id] })).json).toEqual({ purged: 1 });
    expect((await call('GET', `/api/dead-letters/${json.id}`)).status).toBe(404);
  });

  it.each([
    ['/api/dead-letters/requeue', {}, 400, /exactly one of/],
    [
      '/api/dead-letters/requeue',
      { ids: ['0190a5b2-0000-7000-8000-0000000000ee'] },
      404,
      /nothing was changed/,
    ],
    ['/api/dead-letters/requeue', { ids: ['nope'] }, 400, /must match format "uuid"/],
    ['/api/dead-letters/requeue', { all: false }, 400, /must be equal to one of the allowed values/],
    ['/api/dead-letters/purge', {}, 400, /purge needs ids, name or olderThanMs/],
    ['/api/dead-letters/purge', { olderThanMs: -1 }, 400, /must be >= 0/],
    [
      '/api/dead-letters/purge',
      { ids: ['0190a5b2-0000-7000-8000-0000000000ee'], name: 'x' },
      400,
      /no other criterion/,
    ],
  ])('POST %s %j answers %i and changes nothing', async (url, body, status, message) => {
    const before = await count(
      db.pool,
      `select (select count(*) from tm_dead_letters) + (select count(*) from tm_tasks)`,
    );
    const response = await call('POST', url, body);
    expect(response.status).toBe(status);
    expect(response.json.message).toMatch(message);
    expect(
      await count(db.pool, `select (select count(*) from tm_dead_letters) + (select count(*) from tm_tasks)`),
    ).toBe(before);
  });
});

describe('reading tasks', () => {
  it('lists with filters and keyset pagination, newest first', async () => {
    const workflowId = '0190a5b2-0000-7000-8000-000000000001';
    const ids: string[] = [];
    for (let i = 0; i < 5; i++)
      ids.push((await call('POST', '/api/tasks', { name: 'noop', workflowId, delayMs: 3_600_000 })).json.id);
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page = await call(
        'GET',
        `/api/tasks?workflow=${workflowId}&state=delayed,waiting&limit=2${cursor ? `&cursor=${cursor}` : ''}`,
      );
      expect(page.status).toBe(200);
      seen.push(...page.json.tasks.map((t: { id: string }) => t.id));
      cursor = page.json.nextCursor;
      pages++;
    } while (cursor);
    expect(seen).toEqual([...ids].reverse());
    expect(pages).toBe(3);
    const byName = await call('GET', `/api/tasks?name=echo&state=completed&limit=100`);
    expect(byName.json.tasks.length).toBeGreaterThan(0);
    expect(
      byName.json.tasks.every(
        (t: { name: string; state: string }) => t.name === 'echo' && t.state === 'completed',
      ),
    ).toBe(true);
  });

  it.each([
    ['GET', '/api/tasks/not-a-uuid', 400],
    ['GET', '/api/tasks/0190a5b2-0000-7000-8000-0000000000ff', 404],
    ['GET', '/api/tasks?state=snoozing', 400],
    ['GET', '/api/tasks?limit=0', 400],
    ['GET', '/api/tasks?cursor=abc', 400],
    ['GET', '/api/tasks?colour=blue', 400],
    ['POST', '/api/tasks/0190a5b2-0000-7000-8000-0000000000ff/cancel', 404],
    ['GET', '/api/workflows/0190a5b2-0000-7000-8000-0000000000ff', 404],
    ['POST', '/api/workflows/not-a-uuid/cancel', 400],
    ['GET', '/api/nothing-here', 404],
  ])('%s %s answers %i with a message', async (method, path, status) => {
    const response = await call(method, path);
    expect(response.status).toBe(status);
    expect(response.json.message).toEqual(expect.any(String));
  });
});

describe('cancelling', () => {
  it('cancels a task that has not started, then refuses a second cancel', async () => {
    const { json } = await call('POST', '/api/tasks', { name: 'noop', delayMs: 3_600_000 });
    expect(await call('POST', `/api/tasks/${json.id}/cancel`)).toMatchObject({
      status: 200,
      json: { id: json.id, outcome: 'cancelled' },
    });
    expect((await call('GET', `/api/tasks/${json.id}`)).json.state).toBe('cancelled');
    const again = await call('POST', `/api/tasks/${json.id}/cancel`);
    expect(again.status).toBe(409);
    expect(again.json.code).toBe('NOT_CANCELLABLE');
  });

  it('asks the node to abort a running task, which ends cancelled', async () => {
    const { json } = await call('POST', '/api/tasks', { name: 'sleep', message: { ms: 20_000 } });
    await until(async () => (await call('GET', `/api/tasks/${json.id}`)).json.state === 'running');
    expect((await call('POST', `/api/tasks/${json.id}/cancel`)).json).toEqual({
      id: json.id,
      outcome: 'requested',
    });
    await ended(json.id, 10_000);
    expect((await call('GET', `/api/tasks/${json.id}`)).json.state).toBe('cancelled');
  });

  it('cancels a workflow and reports its counts', async () => {
    const workflowId = '0190a5b2-0000-7000-8000-000000000002';
    await call(
      'POST',
      '/api/tasks',
      [1, 2, 3].map(() => ({ name: 'noop', workflowId, delayMs: 3_600_000 })),
    );
    const cancelled = await call('POST', `/api/workflows/${workflowId}/cancel`);
    expect(cancelled.json).toMatchObject({ id: workflowId, cancelled: 3, requested: 0 });
    const status = await call('GET', `/api/workflows/${workflowId}`);
    expect(status.json).toMatchObject({ cancelled: 3, pending: 0, done: true });
  });
});

describe('cluster state', () => {
  it('shows nodes, the leader and stats', async () => {
    await until(async () => (await call('GET', '/api/nodes')).json.leader !== null);
    const nodes = await call('GET', '/api/nodes');
    expect(nodes.json.nodes).toEqual([
      expect.objectContaining({ name: node.name, alive: true, leader: true }),
    ]);
    expect(nodes.json.leader).toMatchObject({ nodeId: node.id, nodeName: node.name });

    await call('POST', '/api/tasks', { name: 'noop', delayMs: 3_600_000 });
    const stats = await call('GET', '/api/stats?windowMinutes=5&bucketSeconds=60');
    expect(stats.status).toBe(200);
    expect(stats.json.totals.delayed).toBeGreaterThanOrEqual(1);
    expect(stats.json.depths).toContainEqual(expect.objectContaining({ name: 'noop', state: 'delayed' }));
    expect(stats.json.throughput.buckets).toHaveLength(5);
    const completedInWindow = stats.json.throughput.buckets.reduce(
      (s: number, b: { completed: number }) => s + b.completed,
      0,
    );
    expect(completedInWindow).toBeGreaterThanOrEqual(4);
    expect(stats.json.nodes[0].name).toBe(node.name);
  });

  it('answers health and readiness probes', async () => {
    expect(await call('GET', '/healthz')).toMatchObject({ status: 200, json: { status: 'ok' } });
    expect(await call('GET', '/readyz')).toMatchObject({ status: 200, json: { status: 'ready' } });
    const empty = await db.another({ migrated: false });
    const app = await buildHttpApp({ pool: empty.pool, log: silent });
    try {
      const response = await app.inject({ method: 'GET', url: '/readyz' });
      expect(response.statusCode).toBe(503);
      expect(response.json().reason).toMatch(/taskmill migrate up/);
      const submit = await app.inject({ method: 'POST', url: '/api/tasks', payload: { name: 'noop' } });
      expect(submit.statusCode).toBe(503);
      expect(submit.json().code).toBe('NOT_MIGRATED');
    } finally {
      await app.close();
      await empty.drop();
    }
  });

  it('serves an OpenAPI document that describes the API', async () => {
    const doc = (await call('GET', '/openapi.json')).json;
    expect(doc.openapi).toBe('3.0.3');
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining([
        '/api/tasks',
        '/api/tasks/{id}',
        '/api/tasks/{id}/cancel',
        '/api/stats',
        '/api/nodes',
        '/api/workflows/{id}/cancel',
      ]),
    );
    expect(doc.paths['/api/tasks'].post.requestBody.content['application/json'].schema.oneOf).toHaveLength(2);
    expect(doc.components.securitySchemes.bearer).toEqual({ type: 'http', scheme: 'bearer' });
  });
});

describe('metrics', () => {
  it('exports task outcomes, queue depth, planner passes and latency in Prometheus text', async () => {
    const first = await call('GET', '/metrics');
    expect(first.headers.get('content-type')).toMatch(/^text\/plain/);
    const read = (text: string) => (pattern: string) =>
      Number(new RegExp(`^${pattern} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
    const before = read(first.text);
    // The node's counters move on its flush events, which may come a moment after the end is
    // committed (and heard by waitForTask): wait for the node to report each final outcome.
    const reported = new Set<string>();
    let check = () => {};
    const onFlush = (result: FlushResult) => {
      for (const a of result.accepted) if (a.outcome !== 'retried') reported.add(a.id);
      check();
    };
    node.on('flush', onFlush);
    const { json } = await call('POST', '/api/tasks', [{ name: 'echo' }, { name: 'throws' }]);
    const ids = json.ids as string[];
    const allReported = new Promise<void>((resolve) => {
      check = () => ids.every((id) => reported.has(id)) && resolve();
      check();
    }).finally(() => node.off('flush', onFlush));
    await ended(ids[0]);
    await ended(ids[1]);
    await allReported;
    const text = (await call('GET', '/metrics')).text;
    const value = read(text);
    const delta = (pattern: string) => value(pattern) - before(pattern);
    expect(delta('taskmill_tasks_completed_total\\{task="echo"\\}')).toBe(1);
    expect(delta('taskmill_tasks_retried_total\\{task="throws"\\}')).toBe(2);
    expect(delta('taskmill_tasks_dead_lettered_total\\{task="throws"\\}')).toBe(1);
    expect(delta('taskmill_tasks_scheduled_total\\{task="echo"\\}')).toBe(1);
    expect(delta('taskmill_tasks_cancelled_total\\{task="sleep"\\}')).toBe(0);
    expect(value('taskmill_tasks_cancelled_total\\{task="sleep"\\}')).toBe(1);
    expect(value('taskmill_queue_depth\\{task="throws",state="dead"\\}')).toBe(
      await count(db.pool, `select count(*) from tm_dead_letters where name = 'throws'`),
    );
    expect(value('taskmill_cluster_nodes\\{status="alive"\\}')).toBe(1);
    expect(value('taskmill_cluster_leader')).toBe(1);
    expect(value(`taskmill_node_leader\\{node="${node.name}"\\}`)).toBe(1);
    expect(value('taskmill_planner_passes_total')).toBeGreaterThan(0);
    expect(value('taskmill_planner_claimed_total')).toBeGreaterThan(0);
    // Every row inserted so far is counted (rolled-back inserts too, so at least the rows that exist).
    const present = await count(
      db.pool,
      `select (select count(*) from tm_tasks) + (select count(*) from tm_history) + (select count(*) from tm_dead_letters)`,
    );
    expect(value('taskmill_cluster_tasks_created_total')).toBeGreaterThanOrEqual(present);
    // The first scrape set the latency watermark (now, settling 0 ms): tasks that ended since are counted.
    const latencyCount = value('taskmill_task_latency_seconds_count\\{task="echo",outcome="completed"\\}');
    expect(latencyCount).toBeGreaterThanOrEqual(1);
    expect(
      value('taskmill_task_latency_seconds_bucket\\{task="echo",outcome="completed",le="\\+Inf"\\}'),
    ).toBe(latencyCount);
    expect(text).toMatch(/^taskmill_planner_pass_duration_seconds_bucket\{le="0.001"\} \d+$/m);
    expect(
      value('taskmill_task_run_seconds_count\\{task="echo",outcome="completed"\\}'),
    ).toBeGreaterThanOrEqual(1);
    expect(
      value('taskmill_task_run_seconds_count\\{task="throws",outcome="failed"\\}'),
    ).toBeGreaterThanOrEqual(3);
    expect(text).toMatch(/^taskmill_node_in_flight\{node="[^"]+"\} \d+$/m);
    expect(text).toMatch(/^process_cpu_user_seconds_total /m);
  });
});

describe('authentication', () => {
  const token = 'a-token-long-enough-0123';

  it('refuses to serve beyond loopback without a token, or with a short one', () => {
    expect(() => checkBinding('0.0.0.0', undefined)).toThrow(/without a token/);
    expect(() => checkBinding('0.0.0.0', 'short')).toThrow(/at least 16/);
    expect(() => checkBinding('127.0.0.1', undefined)).not.toThrow();
    expect(() => checkBinding('::1', undefined)).not.toThrow();
  });

  it('requires the bearer token on every route but the probes and the dashboard shell', async () => {
    const app = await buildHttpApp({ pool: db.pool, host: '0.0.0.0', token, log: silent });
    try {
      const get = (url: string, authorization?: string) =>
        app.inject({ method: 'GET', url, headers: authorization ? { authorization } : {} });
      for (const url of ['/api/stats', '/api/tasks', '/metrics', '/openapi.json']) {
        const denied = await get(url);
        expect(denied.statusCode, url).toBe(401);
        expect(denied.headers['www-authenticate']).toBe('Bearer');
        expect((await get(url, `Bearer ${token}x`)).statusCode, url).toBe(401);
        expect((await get(url, `Bearer ${token}`)).statusCode, url).toBe(200);
      }
      const before = await pendingCount();
      const post = await app.inject({ method: 'POST', url: '/api/tasks', payload: { name: 'noop' } });
      expect(post.statusCode).toBe(401);
      expect(await pendingCount()).toBe(before);
      for (const url of ['/healthz', '/readyz', '/']) expect((await get(url)).statusCode, url).toBe(200);
    } finally {
      await app.close();
    }
  });
});

describe('DNS rebinding and cross-site requests, without a token', () => {
  const port = () => new URL(server.url).port;

  it('answers only to localhost, 127.0.0.1 and [::1] on its own port', async () => {
    for (const host of [`127.0.0.1:${port()}`, `localhost:${port()}`, 'localhost', `[::1]:${port()}`]) {
      expect((await rawCall('GET', '/api/nodes', { host })).status, host).toBe(200);
    }
    for (const host of ['evil.example', `evil.example:${port()}`, `127.0.0.1.evil.example:${port()}`]) {
      for (const path of ['/api/nodes', '/', '/metrics', '/healthz']) {
        const response = await rawCall('GET', path, { host });
        expect(response.status, `${host} ${path}`).toBe(403);
        expect(response.json).toMatchObject({ code: 'HOST_NOT_ALLOWED', message: /allowedHosts/ });
      }
    }
    const otherPort = Number(port()) === 1 ? 2 : 1;
    expect((await rawCall('GET', '/api/nodes', { host: `localhost:${otherPort}` })).status).toBe(403);
  });

  it('refuses state-changing requests from another origin, and changes nothing', async () => {
    const before = await knownTasks();
    const host = `127.0.0.1:${port()}`;
    for (const origin of ['http://evil.example', `http://evil.example:${port()}`, 'null']) {
      const response = await rawCall('POST', '/api/tasks', { host, origin }, { name: 'noop' });
      expect(response.status, origin).toBe(403);
      expect(response.json.code).toBe('ORIGIN_NOT_ALLOWED');
    }
    expect(await knownTasks()).toBe(before);
    // Reads from elsewhere are left to the browser's same-origin policy.
    expect((await rawCall('GET', '/api/nodes', { host, origin: 'http://evil.example' })).status).toBe(200);
    const same = await rawCall(
      'POST',
      '/api/tasks',
      { host, origin: `http://${host}` },
      { name: 'noop', delayMs: 3_600_000 },
    );
    expect(same.status).toBe(201);
    expect((await call('POST', `/api/tasks/${same.json.id}/cancel`)).status).toBe(200);
  });

  it('answers to the allowed hosts of a reverse proxy, and to any host with a token', async () => {
    const proxied = await startHttpServer({
      pool: db.pool,
      port: 0,
      log: silent,
      allowedHosts: ['tasks.example.com', 'proxy.internal:8443'],
    });
    try {
      const at = (host: string) => rawCall('GET', '/api/nodes', { host }, undefined, proxied.url);
      expect((await at('tasks.example.com')).status).toBe(200);
      expect((await at('TASKS.example.com:443')).status).toBe(200);
      expect((await at('proxy.internal:8443')).status).toBe(200);
      expect((await at('proxy.internal:8444')).status).toBe(403);
      expect((await at('evil.example')).status).toBe(403);
    } finally {
      await proxied.close();
    }
    const token = 'a-token-long-enough-0123';
    const withToken = await startHttpServer({ pool: db.pool, port: 0, log: silent, token });
    try {
      const response = await rawCall(
        'GET',
        '/api/nodes',
        { host: 'evil.example', authorization: `Bearer ${token}` },
        undefined,
        withToken.url,
      );
      expect(response.status).toBe(200);
    } finally {
      await withToken.close();
    }
  });

  it('takes allowed hosts from TASKMILL_HTTP_ALLOWED_HOSTS and refuses ones that are not host names', async () => {
    expect(parseAllowedHosts(' a.example , b.example:8080,')).toEqual(['a.example', 'b.example:8080']);
    for (const bad of ['http://a.example', 'a.example/path', 'a b', 'a.example:99999']) {
      expect(() => parseAllowedHosts([bad]), bad).toThrow(
        expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringMatching(/host name/) }),
      );
    }
    process.env.TASKMILL_HTTP_ALLOWED_HOSTS = 'from-env.example';
    try {
      const app = await buildHttpApp({ pool: db.pool, log: silent });
      try {
        const get = (host: string) => app.inject({ method: 'GET', url: '/healthz', headers: { host } });
        expect((await get('from-env.example')).statusCode).toBe(200);
        expect((await get('evil.example')).statusCode).toBe(403);
      } finally {
        await app.close();
      }
    } finally {
      delete process.env.TASKMILL_HTTP_ALLOWED_HOSTS;
    }
  });
});

describe('docs/operations.md', () => {
  it('runs every curl example of the HTTP reference against a live server', async () => {
    const examples = docExamples(
      readFileSync(new URL('../docs/operations.md', import.meta.url), 'utf8'),
      'curl',
    );
    expect(examples.length).toBeGreaterThanOrEqual(6);
    const vars: Record<string, string> = { TASKMILL_URL: server.url };
    for (const example of examples) {
      const response = await runCurl(example, vars);
      expect(response.status, example).toBeLessThan(300);
      // Examples may capture ids for later ones: `# => ID` after a submit, `# => WORKFLOW` etc.
      const capture = /# => (\w+)=(\w+)/.exec(example);
      if (capture) vars[capture[1]] = String((response.json as Record<string, unknown>)[capture[2]]);
    }
  });
});
