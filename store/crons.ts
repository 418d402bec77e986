/**
 * Statements on tm_cron. For nodes: register the cron options of their definitions. For the leader's
 * cron loop (planner/cron.ts): read the crons, hold slots back, create instances (tm_insert_tasks) with
 * the compare-and-set on last_slot. For operators: list the crons the leader runs, with the state of
 * the last instance each created and how many live nodes run its task, and remove one whose definition
 * is gone; used by the client (`listCrons()`, `removeCron()`), the CLI (`taskmill cron`) and the HTTP
 * API (`/api/crons`).
 */
import { Cron as CronPattern } from 'croner';
import type pg from 'pg';
import { TaskmillError, isUndefinedTable, notMigratedError } from '../task/errors.ts';
import { TASK_NAME_PATTERN } from '../task/task-definition.ts';
import type { CronMissedPolicy } from '../task/cron-option.ts';
import type { NewTask } from '../task/schedule-context.ts';
import { INSERT_TASKS_ARGS, insertParams } from './tasks.ts';
import { DEFAULT_NODE_TIMEOUT_MS } from './nodes.ts';

/** The cron's last instance (tm_tasks t) has not started: still ready, no failed attempt. */
const WAITING = `t.state = 'ready' and t.attempt = 0`;

/** CronInfo.lastTaskState of a row with last_task_id (`alias`) left-joined to its instance (tm_tasks t). */
const lastTaskState = (alias: string) => `case when ${alias}.last_task_id is null then null
  when t.id is null then 'ended' when ${WAITING} then 'waiting' else 'started' end`;

/** One cron as `listCrons()` reports it. */
export interface CronInfo {
  name: string;
  expression: string;
  timezone: string;
  missed: CronMissedPolicy;
  /** Every slot up to this one has been handled (an instance created, or skipped / held back). */
  lastSlot: Date;
  /** The next slot after now (database clock); null when the expression never fires again. */
  nextSlot: Date | null;
  /** The last instance created, if any. */
  lastTaskId: string | null;
  /**
   * Where that instance is: `waiting` (not started yet: new slots create nothing until it starts),
   * `started` (assigned, running, or retrying after a failed attempt), `ended` (left the task table),
   * null when the cron has created none.
   */
  lastTaskState: 'waiting' | 'started' | 'ended' | null;
  /** Live nodes (heartbeat within `nodeTimeoutMs`, default the planner's) that run the task; 0: its instances wait. */
  nodes: number;
}

export async function listCrons(
  db: Pick<pg.Pool, 'query'>,
  options: { nodeTimeoutMs?: number } = {},
): Promise<CronInfo[]> {
  const { rows } = await db
    .query<
      Omit<CronRow, 'last_waiting' | 'options'> & {
        last_task_state: CronInfo['lastTaskState'];
        nodes: number;
      }
    >(
      `select c.name, c.expression, c.timezone, c.missed, c.last_slot, c.last_task_id,
         ${lastTaskState('c')} as last_task_state,
         (select count(*) from tm_nodes n where c.name = any(n.task_names)
            and n.heartbeat_at > now() - make_interval(secs => $1::float8 / 1000))::int as nodes,
         clock_timestamp() as db_now
       from tm_cron c left join tm_tasks t on t.id = c.last_task_id
       order by c.name`,
      [options.nodeTimeoutMs ?? DEFAULT_NODE_TIMEOUT_MS],
    )
    .catch((error: unknown) => {
      throw isUndefinedTable(error) ? notMigratedError(error) : error;
    });
  return rows.map((r) => ({
    name: r.name,
    expression: r.expression,
    timezone: r.timezone,
    missed: r.missed,
    lastSlot: r.last_slot,
    nextSlot: new CronPattern(r.expression, { timezone: r.timezone, paused: true }).nextRun(r.db_now),
    lastTaskId: r.last_task_id,
    lastTaskState: r.last_task_state,
    nodes: r.nodes,
  }));
}

/**
 * Removes a cron: the leader creates no more instances for it. Instances already created are ordinary
 * tasks and stay (cancel the waiting one by its id, `lastTaskId`). A node that starts with the cron in
 * its definition registers it again. Throws NOT_FOUND for a name without a cron.
 */
export async function removeCron(
  db: Pick<pg.Pool, 'query'>,
  name: string,
): Promise<{ name: string; lastTaskId: string | null; lastTaskState: CronInfo['lastTaskState'] }> {
  if (typeof name !== 'string' || !TASK_NAME_PATTERN.test(name)) {
    throw new TaskmillError('INVALID_ARGUMENT', `Not a task name: ${JSON.stringify(name)}.`);
  }
  const { rows } = await db
    .query<{ last_task_id: string | null; last_task_state: CronInfo['lastTaskState'] }>(
      `with gone as (delete from tm_cron where name = $1 returning last_task_id)
       select g.last_task_id,
         ${lastTaskState('g')} as last_task_state
       from gone g left join tm_tasks t on t.id = g.last_task_id`,
      [name],
    )
    .catch((error: unknown) => {
      throw isUndefinedTable(error) ? notMigratedError(error) : error;
    });
  if (rows.length === 0) {
    throw new TaskmillError(
      'NOT_FOUND',
      `No cron ${JSON.stringify(name)}: see listCrons() / taskmill cron list.`,
    );
  }
  return { name, lastTaskId: rows[0].last_task_id, lastTaskState: rows[0].last_task_state };
}

/**
 * Records the cron options of registered definitions, starting a new cron at `at` (default: database
 * now) and keeping `last_slot` of a known one; removes the crons of `plain` (definitions without cron).
 */
export async function registerCrons(
  db: Pick<pg.Pool, 'query'>,
  crons: { name: string; expression: string; timezone: string; missed: CronMissedPolicy }[],
  plain: string[],
  at?: Date,
): Promise<void> {
  if (crons.length > 0) {
    await db.query(
      `insert into tm_cron (name, expression, timezone, missed, last_slot)
       select u.name, u.expression, u.timezone, u.missed, date_trunc('milliseconds', coalesce($5, now()))
       from unnest($1::text[], $2::text[], $3::text[], $4::text[]) as u(name, expression, timezone, missed)
       on conflict (name) do update set expression = excluded.expression, timezone = excluded.timezone,
         missed = excluded.missed, updated_at = now()`,
      [
        crons.map((c) => c.name),
        crons.map((c) => c.expression),
        crons.map((c) => c.timezone),
        crons.map((c) => c.missed),
        at ?? null,
      ],
    );
  }
  if (plain.length > 0) await db.query(`delete from tm_cron where name = any($1::text[])`, [plain]);
}

/** A cron with its definition's options and whether its last instance still waits, as a leader pass reads it. */
export interface CronRow {
  name: string;
  expression: string;
  timezone: string;
  missed: CronMissedPolicy;
  last_slot: Date;
  last_task_id: string | null;
  /** The last instance has not started (still ready, no failed attempt). */
  last_waiting: boolean;
  options: Record<string, unknown>;
  db_now: Date;
}

/** Every cron whose definition is registered, with database time, for a leader pass. */
export async function readCrons(db: Pick<pg.Pool, 'query'>): Promise<CronRow[]> {
  const { rows } = await db.query<CronRow>(
    `select c.name, c.expression, c.timezone, c.missed, c.last_slot, c.last_task_id,
       coalesce(${WAITING}, false) as last_waiting, d.options,
       clock_timestamp() as db_now
     from tm_cron c join tm_task_defs d using (name) left join tm_tasks t on t.id = c.last_task_id
     order by c.name`,
  );
  return rows;
}

/**
 * Moves last_slot to `latest` without an instance while the cron's last instance has not started, in
 * one statement that locks that instance first (a claim by the planner in progress is waited for) and,
 * for `run-once`, makes its message stand for `latest`. 'started': the instance had left the queue
 * (nothing changed); 'lost': last_slot had already moved (another leader).
 */
export async function holdBack(
  db: Pick<pg.Pool, 'query'>,
  name: string,
  waitingId: string,
  firstDue: Date,
  latest: Date,
  stand: NewTask | undefined,
): Promise<'held' | 'started' | 'lost'> {
  const { rows } = await db.query<{ waiting: number; advanced: number }>(
    `with waiting as (
       select id from tm_tasks where id = $1 and state = 'ready' and attempt = 0 for update),
     cas as (
       update tm_cron set last_slot = $3, updated_at = now()
       where name = $2 and last_slot < $4 and exists (select 1 from waiting)
       returning name),
     stand as (
       update tm_tasks set message = $5 where $5::bytea is not null and id in (select id from waiting)
         and exists (select 1 from cas)
       returning 1)
     select (select count(*) from waiting)::int as waiting, (select count(*) from cas)::int as advanced,
       (select count(*) from stand)::int as stood`,
    [waitingId, name, latest, firstDue, stand?.message ?? null],
  );
  if (rows[0].waiting === 0) return 'started';
  return rows[0].advanced === 1 ? 'held' : 'lost';
}

/**
 * Moves last_slot past the plan's slots and inserts their instances, in one statement. Returns the
 * number inserted, or undefined when last_slot had already moved (another leader handled the slots).
 */
export async function createInstances(
  db: Pick<pg.Pool, 'query'>,
  name: string,
  handledUpTo: Date,
  firstDue: Date,
  tasks: NewTask[],
): Promise<number | undefined> {
  const { rows } = await db.query<{ advanced: number; inserted: number }>(
    `with cas as (
       update tm_cron set last_slot = $16, last_task_id = coalesce($18::uuid, last_task_id), updated_at = now()
       where name = $15 and last_slot < $17
       returning name),
     -- In the select list over cas, so nothing is inserted when the compare-and-set matched no row.
     ins as (select tm_insert_tasks(${INSERT_TASKS_ARGS}) as id from cas)
     select (select count(*) from cas)::int as advanced, (select count(*) from ins)::int as inserted,
       case when exists (select 1 from ins) then tm_notify_planner() end`,
    [...insertParams(tasks), name, handledUpTo, firstDue, tasks.at(-1)?.id ?? null],
  );
  return rows[0].advanced === 1 ? rows[0].inserted : undefined;
}
