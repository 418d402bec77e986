/**
 * Bad input, as a new user or a fuzzer sends it, through each door: the HTTP API, the library and the
 * CLI. Every one gets a clear refusal (a 4xx with a code and a message; a TaskmillError; a non-zero exit
 * with a message) and leaves every table as it was. The inputs are those that once reached PostgreSQL
 * and came back as HTTP 500s and raw database errors, or were silently coerced or ignored.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runCliCaptured } from '../helpers/cli.ts';
import { startHttpServer, type HttpServer } from '../../http/server.ts';
import { TaskmillClient, defineTask } from '../../index.ts';
import { purgeDeadLetters, listDeadLetters } from '../../store/dead-letters.ts';
import { listTasks } from '../../store/inspect.ts';
import { createLogger } from '../../log/logger.ts';
import { SCHEDULE_LIMITS, type ScheduleContext } from '../../task/schedule-context.ts';
import * as defs from '../fixtures/definitions.ts';
import { useTestDatabase } from '../helpers/database.ts';
import { insertTask } from '../helpers/factory.ts';
import { databaseDigest, registerDefinitions } from '../helpers/snapshot.ts';

const db = useTestDatabase();
let server: HttpServer;
let client: TaskmillClient;
let digest: Record<string, string>;

beforeAll(async () => {
  await registerDefinitions(db.pool, [defs.echo, defs.noop]);
  // Something to lose: a pending task and a dead letter.
  await insertTask(db.pool, { name: 'echo', message: { keep: true } });
  await db.pool.query(
    `insert into tm_dead_letters (id, name, workflow_id, workflow_created_at, strict_affinity, priority, attempts, created_at, failed_at)
     values (gen_random_uuid(), 'echo', gen_random_uuid(), now(), false, 0, 3, now() - interval '1 day', now() - interval '1 hour')`,
  );
  server = await startHttpServer({ pool: db.pool, port: 0, log: createLogger('silent') });
  client = new TaskmillClient({ pool: db.pool, notify: false });
});
afterAll(async () => {
  await server?.close();
  await client?.close();
});
beforeEach(async () => {
  digest = await databaseDigest(db.pool);
});

const unchanged = async () => expect(await databaseDigest(db.pool)).toEqual(digest);
const uuid = '0190a6e2-5b8f-7d2a-9a51-8f1f4c3e2d10';
const maxMessage = SCHEDULE_LIMITS.maxMessageBytes;
// Text PostgreSQL or the driver would have produced, which must never reach a caller.
const RAW_DATABASE_TEXT =
  /index row|out of range for type|violates|invalid input syntax|invalid byte sequence|interval/i;

describe('HTTP: a 4xx with a code and a message, and nothing written', () => {
  const cases: [string, string, string, unknown?][] = [
    ['runAt before year 1 (epoch ms)', 'POST', '/api/tasks', { name: 'echo', runAt: -8.64e15 }],
    ['runAt after year 9999 (epoch ms)', 'POST', '/api/tasks', { name: 'echo', runAt: 8.64e15 }],
    ['runAt after year 9999 (ISO)', 'POST', '/api/tasks', { name: 'echo', runAt: '+275760-09-13T00:00:00Z' }],
    ['runAt 1e300', 'POST', '/api/tasks', { name: 'echo', runAt: 1e300 }],
    ['an 8 KB affinity', 'POST', '/api/tasks', { name: 'echo', affinity: 'a'.repeat(9_000) }],
    [
      'an 8 KB affinity group',
      'POST',
      '/api/tasks',
      { name: 'echo', affinity: 'a', affinityGroup: 'g'.repeat(9_000) },
    ],
    [
      '1,200 bytes of affinity in 400 characters',
      'POST',
      '/api/tasks',
      { name: 'echo', affinity: '€'.repeat(400) },
    ],
    ['a task list filtered by a NUL name', 'GET', '/api/tasks?name=%00'],
    ['dead letters filtered by a NUL name', 'GET', '/api/dead-letters?name=%00'],
    ['a purge older than 1e300 ms', 'POST', '/api/dead-letters/purge', { olderThanMs: 1e300 }],
    ['a purge older than 2^53 ms', 'POST', '/api/dead-letters/purge', { olderThanMs: 2 ** 53 - 1 }],
    ['a name in an array', 'POST', '/api/tasks', { name: ['echo'] }],
    ['runAt true', 'POST', '/api/tasks', { name: 'echo', runAt: true }],
    ['delayMs null', 'POST', '/api/tasks', { name: 'echo', delayMs: null }],
    ['dependsOn as one id', 'POST', '/api/tasks', { name: 'echo', dependsOn: uuid }],
    ['a typo of message', 'POST', '/api/tasks', { name: 'echo', mesage: 'hi' }],
    ['a 1 MB task name', 'POST', '/api/tasks', { name: 'x'.repeat(1_000_000) }],
    ['an HTML task name', 'POST', '/api/tasks', { name: '<img src=x onerror=alert(1)>' }],
    [
      'a message over the size limit',
      'POST',
      '/api/tasks',
      { name: 'echo', message: 'x'.repeat(maxMessage) },
    ],
    ['a workflow id that is not a UUID', 'GET', '/api/workflows/nope'],
    ['a task id that is not a UUID', 'POST', '/api/tasks/nope/cancel'],
    ['a body that is not an object', 'POST', '/api/dead-letters/requeue', [uuid]],
  ];
  it.each(cases)('%s', async (_what, method, path, body) => {
    const response = await fetch(server.url + path, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = (await response.json()) as { code: string; message: string };
    expect(response.status, json.message).toBeGreaterThanOrEqual(400);
    expect(response.status).toBeLessThan(500);
    expect(json.code).toMatch(/^[A-Z_]+$/);
    expect(json.message.length).toBeGreaterThan(10);
    expect(json.message).not.toMatch(RAW_DATABASE_TEXT);
    await unchanged();
  });
});

describe('library: a TaskmillError INVALID_ARGUMENT, and nothing written', () => {
  const handler = new URL('../fixtures/echo.ts', import.meta.url).href;
  const cases: [string, () => Promise<unknown>][] = [
    ['runAt before year 1', () => client.schedule(defs.echo, { runAt: new Date(-8.64e15) })],
    ['runAt after year 9999', () => client.schedule(defs.echo, { runAt: new Date(8.64e15) })],
    ['an 8 KB affinity', () => client.schedule(defs.echo, { affinity: 'a'.repeat(9_000) })],
    [
      'an 8 KB affinity group',
      () => client.schedule(defs.echo, { affinity: 'a', affinityGroup: 'g'.repeat(9_000) }),
    ],
    ['a typo of message', () => client.schedule(defs.echo, { mesage: 'hi' } as ScheduleContext)],
    ['a message over the size limit', () => client.schedule(defs.echo, { message: 'x'.repeat(maxMessage) })],
    [
      'a look-alike definition with a 1 MB name',
      () => client.schedule({ name: 'x'.repeat(1e6), handler } as never),
    ],
    [
      'a look-alike definition with an HTML name',
      () => client.schedule({ name: '<b>x</b>', handler } as never),
    ],
    ['a look-alike definition without priority', () => client.schedule({ name: 'echo', handler } as never)],
    ['a task list filtered by a NUL name', () => listTasks(db.pool, { name: '\0' })],
    ['dead letters filtered by a NUL name', () => listDeadLetters(db.pool, { name: '\0' })],
    ['a purge older than 1e300 ms', () => purgeDeadLetters(db.pool, { olderThanMs: 1e300 })],
  ];
  it.each(cases)('%s', async (_what, act) => {
    const error = await act().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ name: 'TaskmillError', code: 'INVALID_ARGUMENT' });
    expect((error as Error).message).not.toMatch(RAW_DATABASE_TEXT);
    await unchanged();
  });

  it('defineTask() still makes definitions that schedule', async () => {
    const def = defineTask({ name: 'echo', handler });
    const id = await client.schedule(def, { message: 1, runAt: new Date(SCHEDULE_LIMITS.maxRunAt) });
    await db.pool.query(`delete from tm_tasks where id = $1`, [id]);
  });
});

describe('CLI: a non-zero exit with a message, and nothing written', () => {
  const cases: [string, string[], RegExp][] = [
    [
      '--at after year 9999',
      ['schedule', 'echo', '--at', '+275760-09-13T00:00:00Z'],
      /runAt must be between/,
    ],
    ['--at in epoch ms after year 9999', ['schedule', 'echo', '--at', '8000000000000000'], /runAt/],
    ['an 8 KB --affinity', ['schedule', 'echo', '--affinity', 'a'.repeat(9_000)], /at most 1000 bytes/],
    [
      'a --message over the size limit',
      ['schedule', 'echo', '--message', JSON.stringify('x'.repeat(maxMessage))],
      /limit of \d+ bytes/,
    ],
    ['a --workflow that is not a UUID', ['schedule', 'echo', '--workflow', 'w1'], /workflowId/],
    ['an HTML task name', ['schedule', '<b>x</b>'], /not a valid task name/],
    ['task list --name with markup', ['task', 'list', '--name', '<b>x</b>'], /name must be a task name/],
    ['dlt list --name with a space', ['dlt', 'list', '--name', 'a b'], /name must be a task name/],
    ['dlt purge --older-than 2^53', ['dlt', 'purge', '--older-than', String(2 ** 53 - 1)], /olderThanMs/],
    ['workflow show of a non-UUID', ['workflow', 'show', 'nope'], /UUID/],
  ];
  it.each(cases)('%s', async (_what, args, message) => {
    const { code, out, err } = await runCliCaptured(args, { url: db.url });
    expect(code, out).not.toBe(0);
    expect(err).toMatch(message);
    expect(err).not.toMatch(RAW_DATABASE_TEXT);
    await unchanged();
  });
});
