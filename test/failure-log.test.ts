/** FailureLog: one line per failure kind per interval, one when the database is back (settled). */
import { expect, it } from 'vitest';
import { FailureLog, isConnectionError } from '../log/failure-log.ts';
import type { Logger } from '../log/logger.ts';

function setup() {
  const lines: string[] = [];
  const log = {
    error: (_: unknown, msg: string) => lines.push(msg),
    info: (_: unknown, msg: string) => lines.push(msg),
  };
  let now = 0;
  const failures = new FailureLog(log as unknown as Logger, {
    intervalMs: 30_000,
    settleMs: 1_000,
    now: () => now,
  });
  return { lines, failures, tick: (ms: number) => (now += ms) };
}
const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
const terminated = Object.assign(new Error('terminating connection due to administrator command'), {
  code: '57P01',
});

it('classifies connection errors', () => {
  expect(isConnectionError(refused)).toBe(true);
  expect(isConnectionError(terminated)).toBe(true);
  expect(isConnectionError(new Error('Connection terminated unexpectedly'))).toBe(true);
  expect(isConnectionError(Object.assign(new Error('syntax error'), { code: '42601' }))).toBe(false);
});

it('logs a 60 s outage of six loops failing every 200 ms in four lines', () => {
  const { lines, failures, tick } = setup();
  for (let t = 0; t < 60_000; t += 200) {
    for (const source of ['heartbeat', 'planner', 'leader', 'fetcher', 'completer', 'listener'])
      failures.failure(source, t % 400 ? refused : terminated);
    tick(200);
  }
  expect(failures.databaseDown).toBe(true);
  // A session not yet terminated answers once: not back until successes last settleMs.
  expect(failures.recovered('heartbeat')).toBe(false);
  expect(failures.databaseDown).toBe(false);
  failures.failure('fetcher', refused);
  tick(500);
  expect(failures.recovered('heartbeat')).toBe(false);
  tick(1_000);
  expect(failures.recovered('heartbeat')).toBe(true);
  expect(lines).toEqual([
    'database unavailable; retrying with backoff (one line per interval until it is back)',
    'database still unavailable',
    'database still unavailable',
    'database reachable again; resumed',
  ]);
});

it('keeps other failures apart, per source and code, one line per interval', () => {
  const { lines, failures, tick } = setup();
  const bad = Object.assign(new Error('boom'), { code: 'XX000' });
  for (let i = 0; i < 400; i++) {
    failures.failure('completer', bad);
    tick(100);
  }
  failures.failure('planner', bad);
  expect(lines).toEqual(['completer failed', 'completer still failing', 'planner failed']);
});
