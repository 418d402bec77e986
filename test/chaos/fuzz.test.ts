/**
 * Property-based tests (fast-check) of the two doors through which anyone can write tasks:
 * - the schedule API with arbitrary contexts: each call either inserts exactly the row the context
 *   describes, when a model of the documented rules says it is valid, or throws a TaskmillError
 *   INVALID_ARGUMENT and writes nothing;
 * - the HTTP API with arbitrary JSON bodies and query strings: never a 5xx, and a 4xx writes nothing.
 * A failure prints the seed and the shrunk counterexample; replay it with FUZZ_SEED=<seed>.
 */
import fc from 'fast-check';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildHttpApp } from '../../http/server.ts';
import { decode, encode } from '../../task/codec.ts';
import { TaskmillClient } from '../../index.ts';
import { createLogger } from '../../log/logger.ts';
import { SCHEDULE_LIMITS, isUuid, type ScheduleContext } from '../../task/schedule-context.ts';
import * as defs from '../fixtures/definitions.ts';
import { count, useTestDatabase } from '../helpers/database.ts';
import { databaseDigest, registerDefinitions } from '../helpers/snapshot.ts';

const RUNS = 200;
/**
 * The seed: fixed by default, so a run of the suite is repeatable; FUZZ_SEED=<integer> replays one,
 * FUZZ_SEED=random explores new cases (each failure found that way becomes a case of its own).
 */
const SEED =
  process.env.FUZZ_SEED === 'random'
    ? Math.floor(Math.random() * 2 ** 31)
    : Number(process.env.FUZZ_SEED ?? 20_261_202);
const db = useTestDatabase();
let client: TaskmillClient;
let app: FastifyInstance;

beforeAll(async () => {
  await registerDefinitions(db.pool, [defs.echo, defs.noop]);
  client = new TaskmillClient({ pool: db.pool, notify: false });
  app = await buildHttpApp({ pool: db.pool, log: createLogger('silent') });
});
afterAll(async () => {
  await app?.close();
  await client?.close();
});

const KEYS = ['message', 'workflowId', 'affinityGroup', 'affinity', 'priority', 'delayMs', 'runAt'];
const { maxDelayMs, minRunAt, maxRunAt, maxAffinityBytes, maxMessageBytes } = SCHEDULE_LIMITS;

/** `value` with every -0 replaced by 0. */
function withoutNegativeZero(value: unknown): unknown {
  if (Object.is(value, -0)) return 0;
  if (Array.isArray(value)) return value.map(withoutNegativeZero);
  if (value === null || typeof value !== 'object' || ArrayBuffer.isView(value) || value instanceof Date)
    return value;
  if (value instanceof Map || value instanceof Set) return value;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withoutNegativeZero(v)]));
}

/** True when a plain object inside `value` has an own key "__proto__" (refused: msgpack renames it). */
function hasProtoKey(value: unknown): boolean {
  if (value === null || typeof value !== 'object' || ArrayBuffer.isView(value) || value instanceof Date)
    return false;
  if (value instanceof Map) return [...value.keys(), ...value.values()].some(hasProtoKey);
  if (value instanceof Set) return [...value].some(hasProtoKey);
  return Object.hasOwn(value, '__proto__') || Object.values(value).some(hasProtoKey);
}

/** The documented rules of a schedule context (README, "Scheduling"): true when it must be accepted. */
function valid(ctx: unknown): boolean {
  if (ctx === undefined || ctx === null) return true; // no context: the defaults
  if (typeof ctx !== 'object' || Array.isArray(ctx)) return false;
  const c = ctx as Record<string, unknown>;
  if (Object.keys(c).some((k) => !KEYS.includes(k))) return false;
  const key = (v: unknown, mayBeEmpty: boolean) =>
    typeof v === 'string' &&
    (mayBeEmpty || v.length > 0) &&
    !v.includes('\0') &&
    Buffer.byteLength(v) <= maxAffinityBytes;
  if (
    c.delayMs !== undefined &&
    !(typeof c.delayMs === 'number' && c.delayMs >= 0 && c.delayMs <= maxDelayMs)
  )
    return false;
  if (c.runAt !== undefined) {
    const t = c.runAt instanceof Date ? c.runAt.getTime() : Number.NaN;
    if (!(t >= minRunAt && t <= maxRunAt)) return false;
  }
  if (c.delayMs !== undefined && c.runAt !== undefined) return false;
  if (c.priority !== undefined && !(Number.isInteger(c.priority) && Math.abs(c.priority as number) <= 1e6))
    return false;
  if (c.workflowId !== undefined && !isUuid(c.workflowId)) return false;
  if (c.affinityGroup !== undefined && c.affinity === undefined) return false;
  if (c.affinity !== undefined && !key(c.affinity, false)) return false;
  if (c.affinityGroup !== undefined && !key(c.affinityGroup, true)) return false;
  if (hasProtoKey(c.message)) return false;
  return encode(c.message).length <= maxMessageBytes;
}

/** A context the rules accept: each key present or not, with a value within the documented bounds. */
const validContext: fc.Arbitrary<ScheduleContext> = fc
  .tuple(
    fc.record(
      {
        message: fc.jsonValue(),
        workflowId: fc.uuid(),
        affinity: fc.oneof(
          fc.string({ minLength: 1, maxLength: 20 }),
          fc.string({ unit: 'grapheme', minLength: 1, maxLength: 300 }),
        ),
        priority: fc.integer({ min: -1e6, max: 1e6 }),
      },
      { requiredKeys: [] },
    ),
    fc.option(fc.string({ maxLength: 20 })),
    fc.oneof(
      fc.constant({}),
      fc.integer({ min: 0, max: maxDelayMs }).map((delayMs) => ({ delayMs })),
      fc
        .date({ min: new Date(minRunAt), max: new Date(maxRunAt), noInvalidDate: true })
        .map((runAt) => ({ runAt })),
    ),
  )
  .map(([ctx, group, time]) => ({
    ...ctx,
    ...(ctx.affinity !== undefined && group !== null ? { affinityGroup: group } : {}),
    ...time,
  }));

/** Values at or past the bounds, or of the wrong type, for one key. */
const wild: Record<string, fc.Arbitrary<unknown>> = {
  message: fc.constantFrom('x'.repeat(maxMessageBytes), 'x'.repeat(maxMessageBytes - 5)),
  workflowId: fc.oneof(fc.string({ maxLength: 40 }), fc.integer()),
  affinity: fc.constantFrom('a'.repeat(maxAffinityBytes), 'a'.repeat(maxAffinityBytes + 1), 'a\0b', '', 7),
  affinityGroup: fc.constantFrom('g'.repeat(maxAffinityBytes + 1), '\0', null, ''),
  priority: fc.oneof(fc.integer({ min: -2e6, max: 2e6 }), fc.double(), fc.constant('5')),
  delayMs: fc.oneof(fc.double(), fc.constantFrom(-1, maxDelayMs, maxDelayMs + 1, null, '5')),
  runAt: fc.oneof(
    fc.date(),
    fc.constantFrom(new Date(minRunAt - 1), new Date(maxRunAt + 1), new Date(minRunAt), new Date(maxRunAt)),
    fc.integer(),
    fc.string({ maxLength: 30 }),
  ),
};
/** A valid context, or one with a key set to a wild value, an unknown key added, or anything at all. */
const context: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: validContext },
  {
    weight: 4,
    arbitrary: fc
      .tuple(validContext, fc.constantFrom(...KEYS))
      .chain(([ctx, key]) => wild[key].map((value) => ({ ...ctx, [key]: value }))),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(validContext, fc.string({ minLength: 1, maxLength: 12 }), fc.anything())
      .map(([ctx, key, value]) => ({ ...ctx, [key]: value })),
  },
  { weight: 1, arbitrary: fc.anything() },
);

describe('schedule(): a valid row or a refusal, nothing else', () => {
  it(`holds for ${RUNS} arbitrary contexts`, async () => {
    const seen = { accepted: 0, refused: 0 };
    await fc.assert(
      fc.asyncProperty(context, async (ctx) => {
        const before = await count(db.pool, `select count(*) from tm_tasks`);
        let id: string | undefined;
        let error: unknown;
        try {
          id = await client.schedule(defs.echo, ctx as ScheduleContext);
        } catch (e) {
          error = e;
        }
        const after = await count(db.pool, `select count(*) from tm_tasks`);
        if (error !== undefined) {
          expect(error).toMatchObject({
            name: 'TaskmillError',
            // A "__proto__" key in the message is refused by the encoder, after the context's checks.
            code: hasProtoKey((ctx as { message?: unknown })?.message)
              ? expect.stringMatching(/^(INVALID_ARGUMENT|ENCODE_FAILED)$/)
              : 'INVALID_ARGUMENT',
          });
          expect(after).toBe(before);
          expect(valid(ctx), `refused: ${(error as Error).message}`).toBe(false);
          seen.refused++;
          return;
        }
        expect(valid(ctx), 'accepted a context the rules refuse').toBe(true);
        expect(after).toBe(before + 1);
        const c = (ctx ?? {}) as ScheduleContext;
        const { rows } = await db.pool.query(
          `select name, workflow_id, affinity_group, affinity, priority, message from tm_tasks where id = $1`,
          [id],
        );
        expect(rows[0]).toMatchObject({
          name: 'echo',
          workflow_id: c.workflowId?.toLowerCase() ?? expect.any(String),
          affinity: c.affinity ?? null,
          affinity_group: c.affinity === undefined ? null : (c.affinityGroup ?? ''),
          priority: c.priority ?? 0,
        });
        // msgpack carries -0 as the integer 0, as JSON does.
        expect(decode(rows[0].message)).toEqual(withoutNegativeZero(c.message));
        seen.accepted++;
        // Keep the table small: the HTTP property digests every row before and after each request.
        await db.pool.query(`delete from tm_tasks where id = $1`, [id]);
      }),
      { numRuns: RUNS, seed: SEED },
    );
    // Both outcomes are exercised, not only one.
    expect(seen.accepted).toBeGreaterThan(RUNS / 20);
    expect(seen.refused).toBeGreaterThan(RUNS / 20);
  });
});

describe('HTTP: never a 5xx, and a 4xx writes nothing', () => {
  const validTask = fc
    .tuple(fc.constantFrom('echo', 'noop'), validContext, fc.array(fc.uuid(), { maxLength: 2 }))
    .map(([name, ctx, dependsOn]) => ({
      name,
      ...ctx,
      ...(ctx.runAt ? { runAt: ctx.runAt.getTime() } : {}),
      ...(dependsOn.length > 0 ? { dependsOn } : {}),
    }));
  const httpKeys = [...KEYS, 'name', 'dependsOn', 'mesage'];
  const task = fc.oneof(
    validTask,
    fc
      .tuple(validTask, fc.constantFrom(...httpKeys), fc.jsonValue())
      .map(([body, key, value]) => ({ ...body, [key]: value })),
    fc
      .tuple(
        validTask,
        fc.oneof(
          fc.integer({ min: -9e15, max: 9e15 }),
          fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
        ),
      )
      .map(([body, runAt]) => ({ ...body, delayMs: undefined, runAt })),
    fc
      .tuple(validTask, fc.string({ unit: 'grapheme', minLength: 300, maxLength: 1100 }))
      .map(([body, affinity]) => ({ ...body, affinity })),
  );
  const request = fc.oneof(
    {
      weight: 6,
      arbitrary: fc
        .oneof(task, fc.array(task, { minLength: 0, maxLength: 4 }), fc.jsonValue())
        .map((body) => ({ method: 'POST' as const, url: '/api/tasks', body })),
    },
    {
      weight: 2,
      arbitrary: fc
        .tuple(fc.constantFrom('/api/dead-letters/purge', '/api/dead-letters/requeue'), fc.jsonValue())
        .map(([url, body]) => ({ method: 'POST' as const, url, body })),
    },
    {
      weight: 2,
      arbitrary: fc
        .tuple(
          fc.constantFrom('/api/tasks', '/api/dead-letters', '/api/stats'),
          fc.dictionary(
            fc.constantFrom('name', 'limit', 'state', 'workflow', 'cursor', 'after', 'windowMinutes', 'x'),
            fc.oneof(fc.string({ maxLength: 12 }), fc.integer().map(String), fc.constant('%00')),
            { maxKeys: 3 },
          ),
        )
        .map(([path, query]) => ({
          method: 'GET' as const,
          url: `${path}?${Object.entries(query)
            .map(([k, v]) => `${k}=${v === '%00' ? v : encodeURIComponent(v)}`)
            .join('&')}`,
          body: undefined,
        })),
    },
  );

  it(`holds for ${RUNS} arbitrary requests`, async () => {
    const statuses: number[] = [];
    await fc.assert(
      fc.asyncProperty(request, async ({ method, url, body }) => {
        const before = await databaseDigest(db.pool);
        const response = await app.inject({
          method,
          url,
          ...(body === undefined
            ? {}
            : { payload: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
        });
        statuses.push(response.statusCode);
        expect(response.statusCode, response.body).toBeLessThan(500);
        if (response.statusCode >= 400) {
          expect(response.json().message, response.body).toEqual(expect.any(String));
          expect(await databaseDigest(db.pool)).toEqual(before);
        }
      }),
      { numRuns: RUNS, seed: SEED },
    );
    expect(statuses.filter((s) => s < 300).length).toBeGreaterThan(RUNS / 20);
    expect(statuses.filter((s) => s >= 400).length).toBeGreaterThan(RUNS / 20);
  });
});
