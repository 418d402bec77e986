/**
 * Progress values of tasks (tm_task_progress, migrations/008): written by a node in batches (one
 * statement for every task whose progress changed since the last flush), read with the task, and
 * announced on TASK_PROGRESS_CHANNEL so waiters with an onProgress callback read them.
 */
import { TASK_PROGRESS_CHANNEL } from './channels.ts';
import type { Queryable } from './queryable.ts';

/**
 * Stores the last progress value of each task (JSON text) and notifies their ids, up to 200 a
 * notification (delivered at commit). Ids must be distinct.
 */
export async function saveProgress(db: Queryable, ids: string[], values: string[]): Promise<number> {
  if (ids.length === 0) return 0;
  const { rows } = await db.query<{ n: number }>(
    `with saved as (
       insert into tm_task_progress (task_id, value)
       select * from unnest($1::uuid[], $2::jsonb[])
       on conflict (task_id) do update set value = excluded.value, updated_at = now()
       returning task_id),
     chunks as (
       select pg_notify($3, string_agg(task_id::text, ',')) as sent, count(*) as n
       from (select task_id, (row_number() over () - 1) / 200 as chunk from saved) numbered group by chunk)
     select coalesce(sum(n), 0)::int as n from chunks`,
    [ids, values, TASK_PROGRESS_CHANNEL],
  );
  return rows[0].n;
}

/** The last progress value of a task; undefined when it reported none. */
export async function readProgress(db: Queryable, id: string): Promise<unknown> {
  const { rows } = await db.query<{ value: unknown }>(
    `select value from tm_task_progress where task_id = $1`,
    [id],
  );
  return rows[0]?.value;
}
