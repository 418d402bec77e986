/** settle(): what becomes of a task after an attempt, one row per case. Pure: no database. */
import { describe, expect, it } from 'vitest';
import { DEFAULT_RETRY_POLICY, retryPolicySchema } from '../task/retry-policy.ts';
import { settle, type AttemptEnd, type SettleDefinition, type Settlement } from '../task/settle.ts';

const NOW = Date.parse('2026-01-01T00:00:00Z');
const fixed = (maxRetries: number): SettleDefinition => ({
  retry: retryPolicySchema.parse({ mode: 'FIXED', delayMs: 1_000, maxRetries, maxIntervalMs: 60_000 }),
  deadLetter: true,
});
const FIXED_3 = fixed(3);
const NO_DLT: SettleDefinition = { ...FIXED_3, deadLetter: false };
const OFF: SettleDefinition = { retry: retryPolicySchema.parse({ mode: 'OFF' }), deadLetter: true };

const error = { name: 'Error', message: 'boom' };
const DONE: AttemptEnd = { kind: 'done', result: null, children: [], joinMessages: [] };
const failed = (over: Partial<Extract<AttemptEnd, { kind: 'failed' }>> = {}): AttemptEnd => ({
  kind: 'failed',
  error,
  stopRetry: false,
  ...over,
});
const first = { attempt: 0, createdAt: new Date(NOW - 10) };
const last = { attempt: 3, createdAt: new Date(NOW - 10) };
const old = { attempt: 0, createdAt: new Date(NOW - 60_000) };

const retry = (ms: number): Settlement => ({
  action: 'fail',
  retryDelayMs: ms,
  deadLetter: true,
  cancelled: false,
});
const dead: Settlement = { action: 'fail', retryDelayMs: null, deadLetter: true, cancelled: false };

const cases: [string, AttemptEnd, SettleDefinition | undefined, typeof first, Settlement][] = [
  // Successes are committed; what a refused commit becomes follows the retry policy.
  [
    'done, first attempt',
    DONE,
    FIXED_3,
    first,
    { action: 'complete', ifRejected: { retryDelayMs: 1_000, deadLetter: true, cancelled: false } },
  ],
  [
    'done, last attempt',
    DONE,
    FIXED_3,
    last,
    { action: 'complete', ifRejected: { retryDelayMs: null, deadLetter: true, cancelled: false } },
  ],
  [
    'done, unknown definition',
    DONE,
    undefined,
    first,
    { action: 'complete', ifRejected: { retryDelayMs: null, deadLetter: true, cancelled: false } },
  ],
  // Exactly-once: committed or fenced out in the worker thread.
  [
    'committed completed',
    { kind: 'committed', outcome: 'completed' },
    FIXED_3,
    first,
    { action: 'committed' },
  ],
  [
    'committed cancelled',
    { kind: 'committed', outcome: 'cancelled' },
    FIXED_3,
    first,
    { action: 'committed' },
  ],
  ['fenced out (stale)', { kind: 'committed', outcome: 'stale' }, FIXED_3, first, { action: 'committed' }],
  // Failures: retried by the policy, then dead letter (or failed history).
  ['failed, retries left', failed(), FIXED_3, first, retry(1_000)],
  ['failed, no retry left', failed(), FIXED_3, last, dead],
  ['failed, policy window over', failed(), FIXED_3, old, dead],
  ['failed, retries OFF', failed(), OFF, first, dead],
  ['failed, no dead letters', failed(), NO_DLT, last, { ...dead, deadLetter: false }],
  ['failed, unknown definition', failed(), undefined, first, dead],
  ['failed, onFailure stopped retries', failed({ stopRetry: true }), FIXED_3, first, dead],
  [
    'failed, handler threw TASK_CANCELLED',
    failed({ error: { name: 'TaskmillError', code: 'TASK_CANCELLED', message: 'cancelled' } }),
    FIXED_3,
    first,
    dead,
  ],
  [
    'failed, other code keeps retrying',
    failed({ error: { name: 'TaskmillError', code: 'TASK_TIMEOUT', message: 'timed out' } }),
    FIXED_3,
    first,
    retry(1_000),
  ],
  ['timed out', failed({ reason: 'timeout' }), FIXED_3, first, retry(1_000)],
  // Aborts from outside the handler.
  ['cancelled while running', failed({ reason: 'cancel' }), FIXED_3, first, { ...dead, cancelled: true }],
  [
    'cancelled, no dead letters',
    failed({ reason: 'cancel' }),
    NO_DLT,
    first,
    { action: 'fail', retryDelayMs: null, deadLetter: false, cancelled: true },
  ],
  ['node stopping', failed({ reason: 'shutdown' }), FIXED_3, first, { action: 'hand-back' }],
  ['node stopping, last attempt', failed({ reason: 'shutdown' }), FIXED_3, last, { action: 'hand-back' }],
  // Its node was declared dead meanwhile and the task taken back: nothing to write, nothing charged.
  ['lost by its node', failed({ reason: 'lost' }), FIXED_3, last, { action: 'hand-back' }],
  // Dead-node recovery: another attempt at once when the policy allows one.
  ['node died, retries left', failed({ reason: 'node-died' }), FIXED_3, first, retry(0)],
  [
    'node died, default policy',
    failed({ reason: 'node-died' }),
    { retry: DEFAULT_RETRY_POLICY, deadLetter: true },
    first,
    retry(0),
  ],
  ['node died, no retry left', failed({ reason: 'node-died' }), FIXED_3, last, dead],
];

describe('settle', () => {
  it.each(cases)('%s', (_name, end, definition, task, expected) => {
    expect(settle(end, definition, task, NOW)).toEqual(expected);
  });
});
