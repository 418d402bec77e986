/**
 * What a caller says about one task to schedule (`schedule(def, ctx)`), validated and turned into a
 * row ready for the multi-row insert. Used by the client (main thread) and by handlers scheduling
 * children (worker thread), so it must stay free of database code.
 */
import { v7 as uuidv7 } from 'uuid';
import { encode } from './codec.ts';
import { TaskmillError } from './errors.ts';
import type { TaskDefinition } from './task-definition.ts';

export interface ScheduleContext<M = unknown> {
  message?: M;
  /** Join an existing workflow (its creation time orders it among waiting workflows) or name a new one. */
  workflowId?: string;
  /** Affinity key: group and value. Without a group the key is in the default group ''. */
  affinityGroup?: string;
  affinity?: string;
  /** Higher runs first (default: the definition's priority). */
  priority?: number;
  /** Not before this many milliseconds from now (database time). */
  delayMs?: number;
  /** Not before this time. */
  runAt?: Date;
  /**
   * Concurrency key (e.g. a tenant): the group whose concurrency and rate limits this task counts
   * against, and the unit the planner serves round-robin (docs/flow-control.md).
   */
  concurrencyKey?: string;
  /**
   * Deduplication: while a task of the same name with this key is pending or running (or ended less
   * than `idempotencyRetentionMs` ago), scheduling returns that task's id and writes nothing. Keys are
   * per task name. Not for tasks scheduled inside a handler.
   */
  idempotencyKey?: string;
  /** How long an ended task still holds its idempotency key (default 0: only while pending or running). */
  idempotencyRetentionMs?: number;
  /**
   * Debounce: while a task of the same name with this key has not started, scheduling replaces its
   * message and pushes its start to now + delayMs (and returns its id); once it started, a new task is
   * created. Keys are per task name. Not with delayMs, runAt or idempotencyKey.
   */
  debounce?: { key: string; delayMs: number };
}

/** The key a task is scheduled with (tm_task_keys): 'i' idempotency, 'd' debounce. */
export interface TaskKey {
  kind: 'i' | 'd';
  key: string;
  retentionMs: number;
}

/** A row of tm_tasks before insertion; arrays of these become one multi-row insert. */
export interface NewTask {
  id: string;
  name: string;
  workflowId: string;
  /** ISO time (inherited from the parent); null: database now(), or the workflow's time when looked up. */
  workflowCreatedAt: string | null;
  /** A caller-named workflow: take its creation time from its existing tasks, if any. */
  lookupWorkflow: boolean;
  parentId: string | null;
  affinityGroup: string | null;
  affinity: string | null;
  strict: boolean;
  message: Uint8Array;
  priority: number;
  delayMs: number | null;
  runAt: string | null;
  state: 'ready' | 'waiting';
  /** Join task: ids of the tasks it waits for (set by scheduleJoin). */
  joinOf?: string[];
  /** Idempotency or debounce key (scheduled by tm_schedule_keyed). */
  key?: TaskKey;
  /** The schedule's concurrencyKey; absent or null: none. */
  concurrencyKey?: string | null;
  /**
   * W3C traceparent of the span it is scheduled under (log/tracing.ts): the scheduling client's span, or
   * its parent's attempt span. Absent or null: untraced.
   */
  traceparent?: string | null;
}

/** Task names: 1-200 letters, digits or _ . : - (no spaces, markup or control characters). */
export const TASK_NAME_PATTERN = /^[A-Za-z0-9_.:-]{1,200}$/;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Bounds on what one schedule call may carry; every value outside them is refused with
 * INVALID_ARGUMENT before anything is written (docs/operations.md, "Limits of scheduled tasks").
 */
export const SCHEDULE_LIMITS = {
  /** delayMs: at most ten years. */
  maxDelayMs: 10 * 365 * 86_400_000,
  /** runAt: between 0001-01-01 and 9999-12-31 (UTC), the years PostgreSQL and ISO 8601 share. */
  minRunAt: Date.parse('0001-01-01T00:00:00.000Z'),
  maxRunAt: Date.UTC(9999, 11, 31, 23, 59, 59, 999),
  /** affinity and affinityGroup: UTF-8 bytes each (both go into one index entry). */
  maxAffinityBytes: 1_000,
  /** concurrencyKey: UTF-8 bytes (one index entry with the task name). */
  maxConcurrencyKeyBytes: 1_000,
  /**
   * The message, msgpack-encoded, when scheduled from outside a task (client, HTTP, CLI, cron). A
   * child scheduled inside a handler is held to its node's limits.maxMessageBytes by the worker.
   */
  maxMessageBytes: 1024 * 1024,
  /** idempotencyKey and debounce.key: UTF-8 bytes (they go into one index entry with the task name). */
  maxKeyBytes: 1_000,
  /** idempotencyRetentionMs: at most 30 days (and never longer than the task stays in history). */
  maxKeyRetentionMs: 30 * 86_400_000,
} as const;

const CONTEXT_KEYS: ReadonlySet<string> = new Set([
  'message',
  'workflowId',
  'affinityGroup',
  'affinity',
  'priority',
  'delayMs',
  'runAt',
  'idempotencyKey',
  'idempotencyRetentionMs',
  'debounce',
  'concurrencyKey',
]);

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value);
}

export interface Inherited {
  parentId: string;
  workflowId: string;
  workflowCreatedAt: string;
  affinityGroup: string | null;
  affinity: string | null;
  /** The parent's attempt span (W3C traceparent), which a child is scheduled under; null: untraced. */
  traceparent?: string | null;
}

/** Validates a schedule context and builds the row; throws before anything is written. */
export function newTask(def: TaskDefinition, ctx: ScheduleContext = {}, inherited?: Inherited): NewTask {
  assertSchedulable(def);
  if (typeof ctx !== 'object' || ctx === null || Array.isArray(ctx))
    throw invalid('the schedule context must be an object');
  for (const key of Object.keys(ctx)) {
    if (!CONTEXT_KEYS.has(key)) {
      throw invalid(
        `unknown key ${JSON.stringify(key.slice(0, 100))} in the schedule context; the keys are ${[...CONTEXT_KEYS].join(', ')}`,
      );
    }
  }
  const { delayMs, runAt, priority, workflowId, affinityGroup, affinity, concurrencyKey } = ctx;
  const { maxDelayMs, minRunAt, maxRunAt, maxAffinityBytes, maxMessageBytes } = SCHEDULE_LIMITS;
  if (delayMs !== undefined && !(Number.isFinite(delayMs) && delayMs >= 0 && delayMs <= maxDelayMs)) {
    throw invalid(
      `delayMs must be a number of milliseconds between 0 and ${maxDelayMs}, got ${show(delayMs)}`,
    );
  }
  if (runAt !== undefined) {
    const time = runAt instanceof Date ? runAt.getTime() : Number.NaN;
    if (!Number.isFinite(time)) throw invalid(`runAt must be a valid Date, got ${show(runAt)}`);
    if (time < minRunAt || time > maxRunAt) {
      throw invalid(
        `runAt must be between ${new Date(minRunAt).toISOString()} and ${new Date(maxRunAt).toISOString()}, got ${runAt.toISOString()}`,
      );
    }
  }
  if (delayMs !== undefined && runAt !== undefined) throw invalid('give delayMs or runAt, not both');
  if (priority !== undefined && !(Number.isInteger(priority) && Math.abs(priority) <= 1_000_000)) {
    throw invalid(`priority must be an integer between -1000000 and 1000000, got ${show(priority)}`);
  }
  if (workflowId !== undefined && !isUuid(workflowId))
    throw invalid(`workflowId must be a UUID, got ${show(workflowId)}`);
  if (affinityGroup !== undefined && affinity === undefined) {
    throw invalid('affinityGroup was given without affinity: give both, or affinity alone');
  }
  if (affinity !== undefined) checkKey('affinity', affinity, false, maxAffinityBytes);
  if (affinityGroup !== undefined) checkKey('affinityGroup', affinityGroup, true, maxAffinityBytes);
  const key = taskKey(ctx, inherited !== undefined);
  if (concurrencyKey !== undefined) {
    checkKey('concurrencyKey', concurrencyKey, false, SCHEDULE_LIMITS.maxConcurrencyKeyBytes);
  }
  const message = encode(ctx.message);
  if (!inherited && message.length > maxMessageBytes) {
    throw invalid(
      `the message is ${message.length} bytes once encoded (msgpack), over the limit of ${maxMessageBytes} bytes; store large data elsewhere and pass a reference`,
    );
  }

  const sameWorkflow = inherited && (workflowId === undefined || workflowId === inherited.workflowId);
  const explicitAffinity = affinity !== undefined;
  return {
    id: uuidv7(),
    name: def.name,
    workflowId: workflowId ?? inherited?.workflowId ?? uuidv7(),
    workflowCreatedAt: sameWorkflow ? inherited.workflowCreatedAt : null,
    lookupWorkflow: !sameWorkflow && workflowId !== undefined,
    parentId: inherited?.parentId ?? null,
    affinityGroup: explicitAffinity ? (affinityGroup ?? '') : (inherited?.affinityGroup ?? null),
    affinity: explicitAffinity ? affinity : (inherited?.affinity ?? null),
    strict: def.affinityMode === 'strict',
    message,
    priority: priority ?? def.priority,
    delayMs: key?.kind === 'd' ? ctx.debounce!.delayMs : (delayMs ?? null),
    runAt: runAt ? runAt.toISOString() : null,
    state: 'ready',
    ...(key && { key }),
    ...(concurrencyKey !== undefined && { concurrencyKey }),
    ...(inherited?.traceparent && { traceparent: inherited.traceparent }),
  };
}

/** The idempotency or debounce key of a schedule context, validated; undefined without one. */
function taskKey(ctx: ScheduleContext, inHandler: boolean): TaskKey | undefined {
  const { idempotencyKey, idempotencyRetentionMs, debounce } = ctx;
  const { maxKeyBytes, maxKeyRetentionMs, maxDelayMs } = SCHEDULE_LIMITS;
  if (idempotencyKey === undefined && idempotencyRetentionMs === undefined && debounce === undefined) {
    return undefined;
  }
  if (inHandler) {
    throw invalid(
      'idempotencyKey and debounce are not supported for tasks scheduled inside a handler (its children are committed once with its completion already)',
    );
  }
  if (debounce !== undefined) {
    if (idempotencyKey !== undefined || idempotencyRetentionMs !== undefined)
      throw invalid('give debounce or idempotencyKey, not both');
    if (ctx.delayMs !== undefined || ctx.runAt !== undefined)
      throw invalid('debounce sets the start itself (debounce.delayMs): give no delayMs or runAt with it');
    if (typeof debounce !== 'object' || debounce === null || Array.isArray(debounce))
      throw invalid('debounce must be an object { key, delayMs }');
    const extra = Object.keys(debounce).filter((k) => k !== 'key' && k !== 'delayMs');
    if (extra.length > 0)
      throw invalid(
        `unknown key ${JSON.stringify(extra[0].slice(0, 100))} in debounce; the keys are key, delayMs`,
      );
    checkKey('debounce.key', debounce.key, false, maxKeyBytes);
    const { delayMs } = debounce;
    if (!(typeof delayMs === 'number' && Number.isFinite(delayMs) && delayMs >= 0 && delayMs <= maxDelayMs)) {
      throw invalid(
        `debounce.delayMs must be a number of milliseconds between 0 and ${maxDelayMs}, got ${show(delayMs)}`,
      );
    }
    return { kind: 'd', key: debounce.key, retentionMs: 0 };
  }
  if (idempotencyKey === undefined) throw invalid('idempotencyRetentionMs was given without idempotencyKey');
  checkKey('idempotencyKey', idempotencyKey, false, maxKeyBytes);
  const retentionMs = idempotencyRetentionMs ?? 0;
  if (!(
    typeof retentionMs === 'number' &&
    Number.isFinite(retentionMs) &&
    retentionMs >= 0 &&
    retentionMs <= maxKeyRetentionMs
  )) {
    throw invalid(
      `idempotencyRetentionMs must be a number of milliseconds between 0 and ${maxKeyRetentionMs}, got ${show(idempotencyRetentionMs)}`,
    );
  }
  return { kind: 'i', key: idempotencyKey, retentionMs };
}

/**
 * Checked on every schedule: the fields a task row takes from its definition. A look-alike object
 * (not made by defineTask()) is refused with INVALID_ARGUMENT before anything is written.
 */
export function assertSchedulable(def: unknown): asserts def is TaskDefinition {
  const d = def as Partial<TaskDefinition> | null | undefined;
  const problem =
    typeof d !== 'object' || d === null
      ? 'it is not an object'
      : typeof d.name !== 'string' || !TASK_NAME_PATTERN.test(d.name)
        ? `its name must be 1-200 letters, digits or _ . : -, got ${preview(d.name)}`
        : typeof d.handler !== 'string'
          ? 'it has no handler URL'
          : !(Number.isInteger(d.priority) && Math.abs(d.priority as number) <= 1_000_000)
            ? `its priority must be an integer between -1000000 and 1000000, got ${preview(d.priority)}`
            : d.affinityMode !== 'workflow' && d.affinityMode !== 'strict'
              ? `its affinityMode must be 'workflow' or 'strict', got ${preview(d.affinityMode)}`
              : undefined;
  if (problem !== undefined) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `Invalid schedule: pass a definition made by defineTask() or a registered task name (${problem}).`,
    );
  }
}

function preview(value: unknown): string {
  const text = typeof value === 'string' ? JSON.stringify(value) : String(value);
  return text.length > 60 ? `${text.slice(0, 60)}...` : text;
}

function checkKey(what: string, value: unknown, mayBeEmpty: boolean, maxBytes: number): void {
  if (typeof value !== 'string' || (!mayBeEmpty && value.length === 0) || value.includes('\0')) {
    throw invalid(`${what} must be a ${mayBeEmpty ? '' : 'non-empty '}string without NUL characters`);
  }
  // A UTF-16 unit takes at most 3 UTF-8 bytes: count the bytes only when the limit could be passed.
  if (value.length * 3 > maxBytes && Buffer.byteLength(value, 'utf8') > maxBytes) {
    throw invalid(
      `${what} must be at most ${maxBytes} bytes (UTF-8), got ${Buffer.byteLength(value, 'utf8')}`,
    );
  }
}

/** A value for an error message: short, whatever its type. */
function show(value: unknown): string {
  if (value instanceof Date) return Number.isFinite(value.getTime()) ? value.toISOString() : 'Invalid Date';
  const text = typeof value === 'string' ? JSON.stringify(value) : String(value);
  return text.length > 100 ? `${text.slice(0, 100)}...` : text;
}

function invalid(message: string): TaskmillError {
  return new TaskmillError('INVALID_ARGUMENT', `Invalid schedule: ${message}.`);
}
