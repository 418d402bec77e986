/**
 * Level-triggered safety net for joins and dependencies. Every path that ends a task calls
 * tm_after_end in the same transaction, so a wait on an ended task should never outlive it; this
 * finds any that did (a task row removed by hand, an operator's SQL) and settles them the same way:
 * joins are released, dependents of a task that did not complete are failed. Run by maintenance.
 */
import type pg from 'pg';

export async function releaseDanglingWaits(db: Pick<pg.Pool, 'query'>, limit = 1_000): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `with dangling as (
       select distinct w.waits_for as id from tm_task_waits w
       where not exists (select 1 from tm_tasks t where t.id = w.waits_for)
       limit $1),
     settled as (
       select tm_after_end(
         array(select id from dangling),
         array(select d.id from dangling d join tm_history h on h.id = d.id and h.state = 'completed')))
     select (select count(*) from dangling)::int as n from settled`,
    [limit],
  );
  return rows[0]?.n ?? 0;
}
