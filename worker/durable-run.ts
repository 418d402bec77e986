/**
 * Durable steps and waits of one task run, in its worker thread (ctx.step, ctx.sleep,
 * ctx.waitForEvent; docs/durable-waits.md). The task's recorded steps (store/steps.ts) are read once,
 * at the first durable call of the run; a finished step returns its recorded value instead of running.
 * A new step's value is written at once in one short statement fenced by the task's node and
 * assignment, so a crash after it never redoes it and a stale run (its task reassigned) records nothing.
 *
 * A wait that is not over ends the run: its thread commits the task's suspension (tm_suspend, fenced)
 * and resolves `suspended` with the outcome to report; the handler's promise is left pending forever
 * (its code after the wait runs in the next attempt, replayed from the top). Waits are named by their
 * order in the run (`#1 sleep`, `#2 event`), so a handler must make them in the same order every run.
 *
 * States: fresh -> loaded (steps read) -> suspended (a wait ended the run; later durable calls never
 * settle). Written and read by the task's worker thread only.
 */
import { decode, encode } from '../task/codec.ts';
import { checkEventName, MAX_EVENT_NAME_LENGTH } from '../task/events.ts';
import { TaskmillError } from '../task/errors.ts';
import type { TaskOutcome } from '../task/outcome.ts';
import type { Queryable } from '../store/queryable.ts';
import {
  readSteps,
  saveStep,
  suspendTask,
  type StepFence,
  type StepRecord,
  type Wait,
} from '../store/steps.ts';
import { serializeError } from './protocol.ts';

/** What ctx.waitForEvent() resolves with: the event's payload, or that its timeout passed first. */
export type EventWaitResult<T = unknown> = { timedOut: false; payload: T } | { timedOut: true };

export interface EventWaitOptions {
  /** Which occurrence of the event this task waits for (an order id, a user id...): sendEvent's key. */
  key: string;
  /** Continue with `{ timedOut: true }` after this many ms without the event; absent: wait until it comes. */
  timeoutMs?: number;
}

export interface DurableRunOptions {
  db: () => Queryable;
  fence: StepFence;
  exactlyOnce: boolean;
  /** Longest sleep or event timeout, ms. */
  maxWaitMs: number;
  /** Largest encoded step value, bytes. */
  maxResultBytes: number;
}

/** Longest step name, characters. */
export const MAX_STEP_NAME_LENGTH = MAX_EVENT_NAME_LENGTH;

const never = <T>() => new Promise<T>(() => {});

export class DurableRun {
  /** Resolves when a wait ended the run, with the outcome to report instead of the handler's. */
  readonly suspended: Promise<TaskOutcome>;
  private resolveSuspended!: (outcome: TaskOutcome) => void;
  private loaded: Promise<{ steps: Map<string, StepRecord>; offsetMs: number }> | undefined;
  private readonly used = new Set<string>();
  private waits = 0;
  private ended = false;

  constructor(private readonly options: DurableRunOptions) {
    this.suspended = new Promise((resolve) => (this.resolveSuspended = resolve));
  }

  async step<T>(name: string, fn: () => T | Promise<T>): Promise<T> {
    this.assertAllowed('step');
    if (
      typeof name !== 'string' ||
      name === '' ||
      name.startsWith('#') ||
      name.length > MAX_STEP_NAME_LENGTH
    ) {
      throw new TaskmillError(
        'INVALID_ARGUMENT',
        `ctx.step() needs a name of 1 to ${MAX_STEP_NAME_LENGTH} characters not starting with '#', got ${JSON.stringify(name)}.`,
      );
    }
    if (typeof fn !== 'function') {
      throw new TaskmillError(
        'INVALID_ARGUMENT',
        `ctx.step(${JSON.stringify(name)}) needs a function to run.`,
      );
    }
    this.claimName(name);
    const { steps } = await this.load();
    const recorded = steps.get(name);
    if (recorded?.kind === 'done') return (recorded.result ? decode(recorded.result) : undefined) as T;
    const value = await fn();
    const bytes = value === undefined ? null : encode(value, 'result', this.options.maxResultBytes);
    if (this.ended) return never();
    if (!(await saveStep(this.options.db(), this.options.fence, name, bytes))) {
      throw new TaskmillError(
        'NOT_ALLOWED',
        `Step ${name} of task ${this.options.fence.taskId} was not recorded: the task was taken from this run (reassigned or ended).`,
      );
    }
    steps.set(name, { kind: 'done', result: bytes && Buffer.from(bytes), wakeAt: null });
    return (bytes ? decode(bytes) : undefined) as T;
  }

  async sleep(ms: number): Promise<void> {
    this.assertAllowed('sleep');
    this.checkDuration('ctx.sleep()', 'ms', ms);
    const step = `#${++this.waits} sleep`;
    this.claimName(step);
    const { steps, offsetMs } = await this.load();
    const recorded = steps.get(step);
    if (ms === 0 || (recorded?.kind === 'sleep' && recorded.wakeAt!.getTime() <= Date.now() + offsetMs))
      return;
    return this.suspend({ step, sleepMs: ms });
  }

  async waitForEvent<T = unknown>(name: string, options: EventWaitOptions): Promise<EventWaitResult<T>> {
    this.assertAllowed('waitForEvent');
    checkEventName('ctx.waitForEvent()', name, options?.key);
    const { timeoutMs } = options;
    if (timeoutMs !== undefined) this.checkDuration('ctx.waitForEvent()', 'timeoutMs', timeoutMs);
    const step = `#${++this.waits} event`;
    this.claimName(step);
    const { steps } = await this.load();
    const recorded = steps.get(step);
    if (recorded?.kind === 'event') {
      return { timedOut: false, payload: (recorded.result ? decode(recorded.result) : undefined) as T };
    }
    if (recorded?.kind === 'timeout' || timeoutMs === 0) return { timedOut: true };
    return this.suspend({ step, event: name, key: options.key, timeoutMs: timeoutMs ?? null });
  }

  private suspend<T>(wait: Wait): Promise<T> {
    if (this.ended) return never();
    this.ended = true;
    suspendTask(this.options.db(), this.options.fence, wait).then(
      (suspension) =>
        this.resolveSuspended({
          kind: 'committed',
          outcome: suspension === 'sleeping' || suspension === 'ready' ? 'suspended' : suspension,
        }),
      (error: unknown) =>
        this.resolveSuspended({ kind: 'failed', error: serializeError(error), stopRetry: false }),
    );
    return never();
  }

  private load() {
    this.loaded ??= readSteps(this.options.db(), this.options.fence.taskId).then(({ steps, now }) => ({
      steps,
      offsetMs: now.getTime() - Date.now(),
    }));
    return this.loaded;
  }

  private claimName(name: string): void {
    if (this.used.has(name)) {
      throw new TaskmillError(
        'INVALID_ARGUMENT',
        `Step ${JSON.stringify(name)} ran twice in one run of task ${this.options.fence.taskId}: give every step a distinct name (add the loop index, say).`,
      );
    }
    this.used.add(name);
  }

  private assertAllowed(call: string): void {
    if (this.options.exactlyOnce) {
      throw new TaskmillError(
        'NOT_ALLOWED',
        `ctx.${call}() is for at-least-once tasks: an exactly-once task commits all its work in one transaction when it ends, so it has nothing to checkpoint.`,
      );
    }
  }

  private checkDuration(call: string, what: string, ms: unknown): asserts ms is number {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) {
      throw new TaskmillError(
        'INVALID_ARGUMENT',
        `${call} needs ${what} >= 0 (milliseconds), got ${String(ms)}.`,
      );
    }
    if (ms > this.options.maxWaitMs) {
      throw new TaskmillError(
        'INVALID_ARGUMENT',
        `${call}: ${what} ${ms} is longer than this node's history retention (${this.options.maxWaitMs} ms); ` +
          'raise historyRetentionMs to wait longer.',
      );
    }
  }
}
