/** Pure units: per-affinity mailboxes, assignment of a pass, polling delay map, retry policies. */
import { describe, expect, it } from 'vitest';
import { assignTasks, type Candidate, type NodeSlots } from '../planner/assignment.ts';
import { pollingDelayFor, validatePollingDelay } from '../planner/polling-delay.ts';
import { Mailboxes, type MailboxTask } from '../node/mailboxes.ts';
import { DEFAULT_RETRY_POLICY, nextRetryDelay, retryPolicySchema } from '../task/retry-policy.ts';
import { TaskmillError } from '../task/errors.ts';

let next = 0;
function task(over: Partial<MailboxTask> = {}): MailboxTask {
  next++;
  return {
    id: `t${next}`,
    name: 'noop',
    workflowId: 'w',
    affinityGroup: null,
    affinity: null,
    strictAffinity: false,
    ...over,
  };
}
const ids = (tasks: MailboxTask[]) => tasks.map((t) => t.id);

describe('Mailboxes', () => {
  it('lets a strict key out one task at a time, in arrival order', () => {
    const boxes = new Mailboxes();
    const key = { affinityGroup: 'g', affinity: 'k', strictAffinity: true };
    const tasks = [1, 2, 3].map(() => task({ ...key, workflowId: 'w' }));
    for (const t of tasks) boxes.push(t);
    expect(boxes.size).toBe(3);

    for (const expected of tasks) {
      const out = boxes.take(100);
      expect(ids(out)).toEqual([expected.id]);
      expect(boxes.take(100)).toEqual([]);
      boxes.release(out[0]);
    }
    expect(boxes.size).toBe(0);
  });

  it('never puts two tasks of one strict key in one take, whatever else is queued', () => {
    const boxes = new Mailboxes();
    const a = [1, 2].map(() => task({ affinityGroup: '', affinity: 'a', strictAffinity: true }));
    const b = [1, 2].map(() => task({ affinityGroup: '', affinity: 'b', strictAffinity: true }));
    const free = [1, 2].map(() => task());
    for (const t of [...a, ...b, ...free]) boxes.push(t);
    const out = boxes.take(100);
    expect(ids(out).sort()).toEqual(ids([a[0], b[0], ...free]).sort());
  });

  it('lets one workflow of a key out together, and the next only once it has all been released', () => {
    const boxes = new Mailboxes();
    const key = { affinityGroup: 'g', affinity: 'k' };
    const w1 = [1, 2, 3].map(() => task({ ...key, workflowId: 'w1' }));
    const w2 = [1, 2].map(() => task({ ...key, workflowId: 'w2' }));
    for (const t of [...w1, ...w2]) boxes.push(t);

    const first = boxes.take(100);
    expect(ids(first)).toEqual(ids(w1));
    boxes.release(first[0]);
    boxes.release(first[1]);
    expect(boxes.take(100)).toEqual([]);
    boxes.release(first[2]);
    expect(ids(boxes.take(100))).toEqual(ids(w2));
  });

  it('lets a later task of the running workflow join it, but not one behind another workflow', () => {
    const boxes = new Mailboxes();
    const key = { affinityGroup: 'g', affinity: 'k' };
    const a = task({ ...key, workflowId: 'w1' });
    boxes.push(a);
    expect(ids(boxes.take(10))).toEqual([a.id]);
    const sameWorkflow = task({ ...key, workflowId: 'w1' });
    boxes.push(sameWorkflow);
    expect(ids(boxes.take(10))).toEqual([sameWorkflow.id]);
    const other = task({ ...key, workflowId: 'w2' });
    const behind = task({ ...key, workflowId: 'w1' });
    boxes.push(other);
    boxes.push(behind);
    // FIFO within the key: the w1 task queued behind w2 waits too.
    expect(boxes.take(10)).toEqual([]);
    boxes.release(a);
    boxes.release(sameWorkflow);
    expect(ids(boxes.take(10))).toEqual([other.id]);
  });

  it('respects the per-name limit (maxParallelInNode) for keyed and keyless tasks', () => {
    const boxes = new Mailboxes((name) => (name === 'limited' ? 2 : undefined));
    const free = [1, 2, 3, 4].map(() => task({ name: 'limited' }));
    const keyed = task({ name: 'limited', affinityGroup: '', affinity: 'x' });
    for (const t of [...free, keyed]) boxes.push(t);
    const out = boxes.take(100);
    expect(out).toHaveLength(2);
    expect(boxes.take(100)).toEqual([]);
    boxes.release(out[0]);
    const more = boxes.take(100);
    expect(more).toHaveLength(1);
    boxes.release(out[1]);
    boxes.release(more[0]);
    expect(boxes.take(100)).toHaveLength(2);
  });

  it('takes no more than asked', () => {
    const boxes = new Mailboxes();
    for (let i = 0; i < 10; i++)
      boxes.push(task({ affinityGroup: '', affinity: `k${i % 3}`, workflowId: `w${i % 3}` }));
    for (let i = 0; i < 5; i++) boxes.push(task());
    expect(boxes.take(4)).toHaveLength(4);
    expect(boxes.size).toBe(11);
  });

  it('drain() empties every queue and remove() takes out one waiting task', () => {
    const boxes = new Mailboxes();
    const strict = { affinityGroup: '', affinity: 'k', strictAffinity: true };
    const running = task(strict);
    const queued = task(strict);
    const free = [task(), task()];
    for (const t of [running, queued, ...free]) boxes.push(t);
    const out = boxes.take(1);
    expect(ids(out)).toEqual([running.id]);

    expect(boxes.remove(free[1].id)?.id).toBe(free[1].id);
    expect(boxes.remove(free[1].id)).toBeUndefined();
    expect(boxes.remove(running.id)).toBeUndefined(); // taken, not waiting
    // Only the one `which` accepts (a node drops a task's older assignment, never a newer one).
    expect(boxes.remove(queued.id, () => false)).toBeUndefined();
    expect(boxes.size).toBe(2);

    expect(ids(boxes.drain()).sort()).toEqual(ids([queued, free[0]]).sort());
    expect(boxes.size).toBe(0);
    expect(boxes.take(10)).toEqual([]);
    // The key is still held by the task in flight; once it ends, new tasks of the key flow again.
    const after = task(strict);
    boxes.push(after);
    expect(boxes.take(10)).toEqual([]);
    boxes.release(running);
    expect(ids(boxes.take(10))).toEqual([after.id]);
  });

  it('remove() of a strict head lets the next task of the key out', () => {
    const boxes = new Mailboxes();
    const strict = { affinityGroup: '', affinity: 'k', strictAffinity: true };
    const head = task(strict);
    const second = task(strict);
    boxes.push(head);
    boxes.push(second);
    expect(boxes.remove(head.id)?.id).toBe(head.id);
    expect(ids(boxes.take(10))).toEqual([second.id]);
  });
});

describe('assignTasks', () => {
  const node = (id: string, free: number, names = ['noop', 'other']): NodeSlots => ({
    id,
    free,
    taskNames: new Set(names),
  });
  const cand = (id: string, over: Partial<Candidate> = {}): Candidate => ({
    id,
    name: 'noop',
    affinity_group: null,
    affinity: null,
    concurrency_key: '',
    ...over,
  });

  it('spreads tasks to the node with the most free slots and never over a node free count', () => {
    const plan = assignTasks(
      Array.from({ length: 10 }, (_, i) => cand(`t${i}`)),
      [node('a', 3), node('b', 4)],
      new Map(),
    );
    expect(plan.taskIds).toHaveLength(7);
    expect(plan.perNode.get('a')).toBe(3);
    expect(plan.perNode.get('b')).toBe(4);
    expect(plan.nodeIds[0]).toBe('b');
  });

  it('gives a task only to a node that registered its name', () => {
    const plan = assignTasks(
      [cand('x', { name: 'only-b' }), cand('y', { name: 'nobody' })],
      [node('a', 10), node('b', 1, ['only-b'])],
      new Map(),
    );
    expect(plan.taskIds).toEqual(['x']);
    expect(plan.nodeIds).toEqual(['b']);
  });

  it('keeps the tasks of one key on the node that got the first, while it has room', () => {
    const key = { affinity_group: 'g', affinity: 'k' };
    const plan = assignTasks(
      [cand('k1', key), cand('f1'), cand('k2', key), cand('f2'), cand('k3', key)],
      [node('a', 3), node('b', 3)],
      new Map(),
    );
    const nodeOf = new Map(plan.taskIds.map((id, i) => [id, plan.nodeIds[i]]));
    expect(nodeOf.get('k2')).toBe(nodeOf.get('k1'));
    expect(nodeOf.get('k3')).toBe(nodeOf.get('k1'));
  });

  it('stops at the cluster budget of a task name', () => {
    const plan = assignTasks(
      [
        cand('l1', { name: 'other' }),
        cand('l2', { name: 'other' }),
        cand('l3', { name: 'other' }),
        cand('n1'),
      ],
      [node('a', 10)],
      new Map([['other', 2]]),
    );
    expect(plan.taskIds).toEqual(['l1', 'l2', 'n1']);
    const none = assignTasks([cand('l1', { name: 'other' })], [node('a', 10)], new Map([['other', 0]]));
    expect(none.taskIds).toEqual([]);
  });

  it('assigns nothing without free slots', () => {
    expect(assignTasks([cand('t')], [node('a', 0)], new Map()).taskIds).toEqual([]);
    expect(assignTasks([cand('t')], [], new Map()).taskIds).toEqual([]);
  });
});

describe('polling delay', () => {
  it('picks the delay of the largest threshold not above the count', () => {
    const sorted = validatePollingDelay({ 1000: 0, 0: 1000, 100: 500 });
    expect(sorted).toEqual([
      [0, 1000],
      [100, 500],
      [1000, 0],
    ]);
    expect(pollingDelayFor(sorted, 0)).toBe(1000);
    expect(pollingDelayFor(sorted, 99)).toBe(1000);
    expect(pollingDelayFor(sorted, 100)).toBe(500);
    expect(pollingDelayFor(sorted, 999)).toBe(500);
    expect(pollingDelayFor(sorted, 1000)).toBe(0);
    expect(pollingDelayFor(sorted, 50_000)).toBe(0);
  });

  it('refuses maps without a 0 entry or with bad thresholds or delays', () => {
    for (const map of [{}, { 1: 10 }, { 0: -1 }, { 0: 10, 1.5: 5 }, { 0: Number.NaN }, { 0: 10, [-5]: 1 }]) {
      expect(() => validatePollingDelay(map as Record<number, number>), JSON.stringify(map)).toThrow(
        expect.objectContaining({ code: 'INVALID_CONFIG' }),
      );
    }
    expect(() => validatePollingDelay({ 0: 3_600_001 })).toThrow(TaskmillError);
  });
});

describe('nextRetryDelay', () => {
  it('OFF never retries', () => {
    expect(nextRetryDelay({ mode: 'OFF' }, 1, 0)).toBeUndefined();
  });

  it('FIXED retries after the fixed delay, at most maxRetries times, within maxInterval', () => {
    const policy = retryPolicySchema.parse({
      mode: 'FIXED',
      delayMs: 1_000,
      maxRetries: 3,
      maxIntervalMs: 10_000,
    });
    expect(nextRetryDelay(policy, 1, 0)).toBe(1_000);
    expect(nextRetryDelay(policy, 3, 0)).toBe(1_000);
    expect(nextRetryDelay(policy, 4, 0)).toBeUndefined();
    // The next attempt would start after the task has been failing for longer than maxInterval.
    expect(nextRetryDelay(policy, 2, 9_000)).toBe(1_000);
    expect(nextRetryDelay(policy, 2, 9_001)).toBeUndefined();
  });

  it('FIXED with maxRetries -1 retries without a count limit', () => {
    const policy = retryPolicySchema.parse({ mode: 'FIXED', delayMs: 5, maxRetries: -1 });
    expect(nextRetryDelay(policy, 1_000_000, 0)).toBe(5);
  });

  it('BACKOFF waits initialDelay, then delayPeriod x 2^(n-1), at most maxRetries times, within maxDelay', () => {
    const policy = retryPolicySchema.parse({
      mode: 'BACKOFF',
      initialDelayMs: 700,
      delayPeriodMs: 100,
      maxRetries: 5,
      maxDelayMs: 100_000,
    });
    expect([1, 2, 3, 4, 5].map((n) => nextRetryDelay(policy, n, 0))).toEqual([700, 200, 400, 800, 1_600]);
    expect(nextRetryDelay(policy, 6, 0)).toBeUndefined();
    expect(nextRetryDelay(policy, 3, 99_600)).toBe(400);
    expect(nextRetryDelay(policy, 3, 99_601)).toBeUndefined();
  });

  it('defaults to BACKOFF with the distributed-task-framework values', () => {
    expect(DEFAULT_RETRY_POLICY).toEqual({
      mode: 'BACKOFF',
      initialDelayMs: 10_000,
      delayPeriodMs: 5_000,
      maxRetries: 1000,
      maxDelayMs: 3_600_000,
    });
    expect(nextRetryDelay(DEFAULT_RETRY_POLICY, 1, 0)).toBe(10_000);
    expect(nextRetryDelay(DEFAULT_RETRY_POLICY, 2, 0)).toBe(10_000);
    expect(nextRetryDelay(DEFAULT_RETRY_POLICY, 3, 0)).toBe(20_000);
  });

  it('refuses unknown modes and bad values', () => {
    for (const bad of [
      { mode: 'SOMETIMES' },
      { mode: 'FIXED', delayMs: -1 },
      { mode: 'BACKOFF', maxRetries: -1 },
    ]) {
      expect(retryPolicySchema.safeParse(bad).success, JSON.stringify(bad)).toBe(false);
    }
  });
});
