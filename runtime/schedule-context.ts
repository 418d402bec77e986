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
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAX_DELAY_MS = 10 * 365 * 86_400_000;

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value);
}

export interface Inherited {
  parentId: string;
  workflowId: string;
  workflowCreatedAt: string;
  affinityGroup: string | null;
  affinity: string | null;
}

/** Validates a schedule context and builds the row; throws before anything is written. */
export function newTask(def: TaskDefinition, ctx: ScheduleContext = {}, inherited?: Inherited): NewTask {
  if (typeof ctx !== 'object' || ctx === null) throw invalid('the schedule context must be an object');
  const { delayMs, runAt, priority, workflowId, affinityGroup, affinity } = ctx;
  if (delayMs !== undefined && !(Number.isFinite(delayMs) && delayMs >= 0 && delayMs <= MAX_DELAY_MS)) {
    throw invalid(
      `delayMs must be a number of milliseconds between 0 and ${MAX_DELAY_MS}, got ${String(delayMs)}`,
    );
  }
  if (runAt !== undefined && !(runAt instanceof Date && Number.isFinite(runAt.getTime()))) {
    throw invalid('runAt must be a valid Date');
  }
  if (delayMs !== undefined && runAt !== undefined) throw invalid('give delayMs or runAt, not both');
  if (priority !== undefined && !(Number.isInteger(priority) && Math.abs(priority) <= 1_000_000)) {
    throw invalid(`priority must be an integer between -1000000 and 1000000, got ${String(priority)}`);
  }
  if (workflowId !== undefined && !isUuid(workflowId))
    throw invalid(`workflowId must be a UUID, got ${String(workflowId)}`);
  if (affinityGroup !== undefined && affinity === undefined) {
    throw invalid('affinityGroup was given without affinity: give both, or affinity alone');
  }
  if (
    affinity !== undefined &&
    (typeof affinity !== 'string' || affinity.length === 0 || affinity.includes('\0'))
  ) {
    throw invalid('affinity must be a non-empty string without NUL characters');
  }
  if (affinityGroup !== undefined && (typeof affinityGroup !== 'string' || affinityGroup.includes('\0')))
    throw invalid('affinityGroup must be a string without NUL characters');

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
    message: encode(ctx.message),
    priority: priority ?? def.priority,
    delayMs: delayMs ?? null,
    runAt: runAt ? runAt.toISOString() : null,
    state: 'ready',
  };
}

function invalid(message: string): TaskmillError {
  return new TaskmillError('INVALID_ARGUMENT', `Invalid schedule: ${message}.`);
}
