/**
 * Scheduling tasks that carry an idempotency or debounce key (tm_task_keys, migrations/008): one call
 * of tm_schedule_keyed, which decides every key on its committed row (a primary key, not a
 * check-then-insert) and inserts the tasks that get to exist through tm_insert_tasks.
 */
import type { NewTask } from '../task/schedule-context.ts';
import { concurrencyKeys, INSERT_TASKS_ARGS, insertParams } from './tasks.ts';
import type { Queryable } from './queryable.ts';

/** What became of one scheduled task: a new task, or the existing task its key stands for. */
export interface KeyedOutcome {
  /** The id of the task that stands for the schedule (its own id when inserted). */
  taskId: string;
  outcome: 'inserted' | 'duplicate' | 'debounced';
}

const SCHEDULE_KEYED_SQL = `select task_id as "taskId", outcome
  from tm_schedule_keyed(${INSERT_TASKS_ARGS}, $15::text[], $16::text[], $17::float8[], $18::text[])`;

/** Schedules tasks of which some carry a key; outcomes in the order of `tasks`. Wakes the planner. */
export async function insertKeyedTasks(db: Queryable, tasks: NewTask[]): Promise<KeyedOutcome[]> {
  const { rows } = await db.query<KeyedOutcome>(SCHEDULE_KEYED_SQL, [
    ...insertParams(tasks),
    tasks.map((t) => t.key?.kind ?? null),
    tasks.map((t) => t.key?.key ?? null),
    tasks.map((t) => t.key?.retentionMs ?? null),
    concurrencyKeys(tasks),
  ]);
  return rows;
}
