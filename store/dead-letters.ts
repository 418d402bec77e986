/**
 * Operations on the dead-letter table (tm_dead_letters): list, inspect, requeue (redrive) and purge.
 * A task lands there when it failed every attempt its retry policy allowed (or its handler stopped
 * the retries) and its definition keeps dead letters (the default).
 *
 * Every operation is one transaction. One that names ids checks them all first and changes nothing
 * (NOT_FOUND) when one is missing. Requeue moves rows back into tm_tasks under the same id, as ready,
 * attempt 0, created now (so the retry policy's window starts again), and wakes the planner.
 */
import type pg from 'pg';
import { inTransaction } from './checkout.ts';
import { decode } from '../task/codec.ts';
import { TaskmillError, isUndefinedTable, notMigratedError } from '../task/errors.ts';
import { isUuid } from '../task/schedule-context.ts';
import { TASK_NAME_PATTERN } from '../task/task-definition.ts';
import { wakePlanner } from './channels.ts';

type Db = Pick<pg.Pool, 'query' | 'connect'>;

export const DEAD_LETTER_LIMITS = {
  defaultPage: 100,
  maxPage: 10_000,
  maxIds: 10_000,
  /** purge olderThanMs: 1,000 years (the cut-off time must stay within PostgreSQL's timestamps). */
  maxOlderThanMs: 1_000 * 365 * 86_400_000,
};

export interface DeadLetterSummary {
  id: string;
  name: string;
  workflowId: string;
  parentId: string | null;
  affinityGroup: string | null;
  affinity: string | null;
  priority: number;
  /** Attempts made before it was dead-lettered. */
  attempts: number;
  /** The last attempt's error. */
  error: string | null;
  createdAt: Date;
  failedAt: Date;
}

export interface DeadLetter<M = unknown> extends DeadLetterSummary {
  /** The task's message, decoded. */
  message: M;
  strictAffinity: boolean;
  workflowCreatedAt: Date;
}

export interface ListDeadLettersOptions {
  name?: string;
  /** Page size (default 100, at most 10000). */
  limit?: number;
  /** Id of the last dead letter of the previous page. */
  after?: string;
}

/** Selects dead letters to requeue: exactly one of these. */
export type RequeueSelector = { ids: string[] } | { name: string } | { all: true };

/** Selects dead letters to purge: ids alone, or name and/or age. */
export type PurgeSelector = { ids: string[] } | { name?: string; olderThanMs?: number };

const SUMMARY_COLUMNS = `id, name, workflow_id as "workflowId", parent_id as "parentId",
  affinity_group as "affinityGroup", affinity, priority, attempts, error, created_at as "createdAt",
  failed_at as "failedAt"`;

/** Dead letters in id order (task creation order), a page at a time; without the messages. */
export async function listDeadLetters(
  db: Db,
  options: ListDeadLettersOptions = {},
): Promise<DeadLetterSummary[]> {
  const limit = options.limit ?? DEAD_LETTER_LIMITS.defaultPage;
  if (!Number.isInteger(limit) || limit < 1 || limit > DEAD_LETTER_LIMITS.maxPage) {
    throw invalid(
      `limit must be an integer between 1 and ${DEAD_LETTER_LIMITS.maxPage}, got ${String(limit)}`,
    );
  }
  if (options.name !== undefined) checkName(options.name);
  if (options.after !== undefined && !isUuid(options.after)) {
    throw invalid(`after must be the id (UUID) of a dead letter, got ${JSON.stringify(options.after)}`);
  }
  const { rows } = await run(() =>
    db.query<DeadLetterSummary>(
      `select ${SUMMARY_COLUMNS} from tm_dead_letters
       where ($1::text is null or name = $1) and ($2::uuid is null or id > $2)
       order by id limit $3`,
      [options.name ?? null, options.after ?? null, limit],
    ),
  );
  return rows;
}

/** One dead letter with its decoded message; NOT_FOUND when there is none with this id. */
export async function getDeadLetter<M = unknown>(db: Db, id: string): Promise<DeadLetter<M>> {
  checkIds([id]);
  const { rows } = await run(() =>
    db.query<
      DeadLetterSummary & { message: Buffer | null; strictAffinity: boolean; workflowCreatedAt: Date }
    >(
      `select ${SUMMARY_COLUMNS}, message, strict_affinity as "strictAffinity",
         workflow_created_at as "workflowCreatedAt"
       from tm_dead_letters where id = $1`,
      [id],
    ),
  );
  if (rows.length === 0) throw new TaskmillError('NOT_FOUND', `No dead letter ${id}.`);
  return { ...rows[0], message: decode<M>(rows[0].message) };
}

/**
 * Moves dead letters back into tm_tasks as ready tasks (same id, attempt 0), atomically, and wakes
 * the planner. A task whose workflow still has pending tasks rejoins the workflow's place in its
 * affinity key's queue; otherwise its workflow queues behind those already waiting on the key (so a
 * requeue never makes two workflows active on one key). It keeps its concurrency key. Returns the ids
 * requeued.
 */
export async function requeueDeadLetters(db: Db, selector: RequeueSelector): Promise<{ requeued: string[] }> {
  const where = requeueWhere(selector);
  const requeued = await transaction(db, async (client) => {
    if ('ids' in selector) await lockAll(client, selector.ids);
    const { rows } = await client.query<{ id: string }>(
      `with moved as (delete from tm_dead_letters d where ${where.sql} returning d.*),
       a as (select array_agg(m.id order by m.id) as id, array_agg(m.name order by m.id) as name,
         array_agg(m.workflow_id order by m.id) as workflow_id, array_agg(m.parent_id order by m.id) as parent_id,
         array_agg(m.affinity_group order by m.id) as affinity_group, array_agg(m.affinity order by m.id) as affinity,
         array_agg(m.strict_affinity order by m.id) as strict, array_agg(m.message order by m.id) as message,
         array_agg(m.priority order by m.id) as priority,
         array_agg(m.concurrency_key order by m.id) as concurrency_key, count(*)::int as n
         from moved m)
       select k.id from a, tm_insert_tasks(a.id, a.name, a.workflow_id, array_fill(null::timestamptz, array[a.n]),
         array_fill(true, array[a.n]), a.parent_id, a.affinity_group, a.affinity, a.strict, a.message, a.priority,
         array_fill(0::float8, array[a.n]), array_fill(null::timestamptz, array[a.n]),
         array_fill('ready'::text, array[a.n]), c_concurrency_key => a.concurrency_key) as k(id)`,
      where.params,
    );
    if (rows.length > 0) await wakePlanner(client);
    return rows.map((r) => r.id);
  });
  return { requeued };
}

/** Deletes dead letters for good. Returns how many. */
export async function purgeDeadLetters(db: Db, selector: PurgeSelector): Promise<{ purged: number }> {
  const where = purgeWhere(selector);
  const purged = await transaction(db, async (client) => {
    if ('ids' in selector) await lockAll(client, selector.ids);
    const { rowCount } = await client.query(`delete from tm_dead_letters d where ${where.sql}`, where.params);
    return rowCount ?? 0;
  });
  return { purged };
}

interface Where {
  sql: string;
  params: unknown[];
}

function requeueWhere(selector: RequeueSelector): Where {
  const keys = selectorKeys(selector);
  if (keys.length !== 1 || !['ids', 'name', 'all'].includes(keys[0])) {
    throw invalid('requeue takes exactly one of { ids: [...] }, { name: "task" } or { all: true }');
  }
  if ('ids' in selector) return { sql: 'd.id = any($1::uuid[])', params: [checkIds(selector.ids)] };
  if ('name' in selector) return { sql: 'd.name = $1', params: [checkName(selector.name)] };
  if (selector.all !== true) throw invalid('requeue { all } must be { all: true }');
  return { sql: 'true', params: [] };
}

function purgeWhere(selector: PurgeSelector): Where {
  const keys = selectorKeys(selector);
  const unknown = keys.filter((k) => !['ids', 'name', 'olderThanMs'].includes(k));
  if (unknown.length > 0) throw invalid(`purge does not know ${unknown.join(', ')}`);
  if ('ids' in selector) {
    if (keys.length !== 1) throw invalid('purge by ids takes no other criterion');
    return { sql: 'd.id = any($1::uuid[])', params: [checkIds(selector.ids)] };
  }
  const { name, olderThanMs } = selector;
  if (name === undefined && olderThanMs === undefined) {
    throw invalid('purge needs ids, name or olderThanMs (olderThanMs: 0 purges every dead letter)');
  }
  if (name !== undefined) checkName(name);
  if (
    olderThanMs !== undefined &&
    !(Number.isInteger(olderThanMs) && olderThanMs >= 0 && olderThanMs <= DEAD_LETTER_LIMITS.maxOlderThanMs)
  ) {
    throw invalid(
      `olderThanMs must be an integer between 0 and ${DEAD_LETTER_LIMITS.maxOlderThanMs}, got ${String(olderThanMs)}`,
    );
  }
  return {
    sql: `($1::text is null or d.name = $1)
      and ($2::float8 is null or d.failed_at <= now() - $2 * interval '1 millisecond')`,
    params: [name ?? null, olderThanMs ?? null],
  };
}

/** Locks the named rows; NOT_FOUND (and the transaction is rolled back) when one does not exist. */
async function lockAll(client: pg.PoolClient, ids: string[]): Promise<void> {
  const wanted = [...new Set(ids)];
  const { rows } = await client.query<{ id: string }>(
    `select id from tm_dead_letters where id = any($1::uuid[]) for update`,
    [wanted],
  );
  const found = new Set(rows.map((r) => r.id));
  const missing = wanted.filter((id) => !found.has(id.toLowerCase()));
  if (missing.length > 0) {
    throw new TaskmillError(
      'NOT_FOUND',
      `No dead letter ${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ` (and ${missing.length - 10} more)` : ''}; nothing was changed.`,
    );
  }
}

function selectorKeys(selector: unknown): string[] {
  if (typeof selector !== 'object' || selector === null) throw invalid('the selector must be an object');
  return Object.keys(selector).filter((k) => (selector as Record<string, unknown>)[k] !== undefined);
}

function checkIds(ids: unknown): string[] {
  if (!Array.isArray(ids) || ids.length === 0 || ids.length > DEAD_LETTER_LIMITS.maxIds) {
    throw invalid(`ids must be a non-empty array of at most ${DEAD_LETTER_LIMITS.maxIds} task ids`);
  }
  const bad = ids.find((id) => !isUuid(id));
  if (bad !== undefined) throw invalid(`task ids are UUIDs, got ${JSON.stringify(bad)}`);
  return ids as string[];
}

function checkName(name: unknown): string {
  if (typeof name !== 'string' || !TASK_NAME_PATTERN.test(name)) {
    throw invalid(`name must be a task name, got ${JSON.stringify(name)}`);
  }
  return name;
}

async function transaction<T>(db: Db, body: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  try {
    return await inTransaction(db, body);
  } catch (error) {
    throw isUndefinedTable(error) ? notMigratedError(error) : error;
  }
}

function run<T>(query: () => Promise<T>): Promise<T> {
  return query().catch((error: unknown) => {
    throw isUndefinedTable(error) ? notMigratedError(error) : error;
  });
}

function invalid(message: string): TaskmillError {
  return new TaskmillError('INVALID_ARGUMENT', `Invalid dead-letter operation: ${message}.`);
}
