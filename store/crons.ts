/**
 * The tm_cron table seen by operators: list the crons the leader runs, with the state of the last
 * instance each created and how many live nodes run its task, and remove one whose definition is gone.
 * Used by the client (`listCrons()`, `removeCron()`), the CLI (`taskmill cron`) and the HTTP API
 * (`/api/crons`).
 */
import { Cron as CronPattern } from 'croner';
import type pg from 'pg';
import { TaskmillError, isUndefinedTable, notMigratedError } from '../runtime/errors.ts';
import { TASK_NAME_PATTERN } from '../runtime/task-definition.ts';
import type { CronMissedPolicy } from './cron.ts';
import { PLANNER_DEFAULTS } from './planner.ts';

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
    .query<{
      name: string;
      expression: string;
      timezone: string;
      missed: CronMissedPolicy;
      last_slot: Date;
      last_task_id: string | null;
      last_task_state: CronInfo['lastTaskState'];
      nodes: number;
      db_now: Date;
    }>(
      `select c.name, c.expression, c.timezone, c.missed, c.last_slot, c.last_task_id,
         case when c.last_task_id is null then null
              when t.id is null then 'ended'
              when t.state = 'ready' and t.attempt = 0 then 'waiting'
              else 'started' end as last_task_state,
         (select count(*) from tm_nodes n where c.name = any(n.task_names)
            and n.heartbeat_at > now() - make_interval(secs => $1::float8 / 1000))::int as nodes,
         clock_timestamp() as db_now
       from tm_cron c left join tm_tasks t on t.id = c.last_task_id
       order by c.name`,
      [options.nodeTimeoutMs ?? PLANNER_DEFAULTS.nodeTimeoutMs],
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
         case when g.last_task_id is null then null
              when t.id is null then 'ended'
              when t.state = 'ready' and t.attempt = 0 then 'waiting'
              else 'started' end as last_task_state
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
