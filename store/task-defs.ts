/**
 * Statements on tm_task_defs: the definitions nodes register (the planner reads cluster limits from
 * them, callers that schedule by name check the name exists and read the options).
 */
import type { Queryable } from './queryable.ts';

export interface DefinitionRow {
  name: string;
  maxParallelInCluster: number | null;
  /** The options the planner and the registry need (task-definition.ts definitionRecord). */
  options: object;
}

/** Inserts or updates the definitions, in one statement. */
export async function registerDefinitions(db: Queryable, defs: DefinitionRow[]): Promise<void> {
  if (defs.length === 0) return;
  await db.query(
    `insert into tm_task_defs (name, max_parallel_in_cluster, options)
     select * from unnest($1::text[], $2::integer[], $3::jsonb[])
     on conflict (name) do update set max_parallel_in_cluster = excluded.max_parallel_in_cluster,
       options = excluded.options, updated_at = now()`,
    [
      defs.map((d) => d.name),
      defs.map((d) => d.maxParallelInCluster),
      defs.map((d) => JSON.stringify(d.options)),
    ],
  );
}

/** The registered options of a task name; undefined when no node registered it. */
export async function definitionOptions<T>(db: Queryable, name: string): Promise<T | undefined> {
  const { rows } = await db.query<{ options: T }>(`select options from tm_task_defs where name = $1`, [name]);
  return rows[0]?.options;
}

/** Database time and the registered retry policy of a task name (null when none). */
export async function retryOptionsAt(db: Queryable, name: string): Promise<{ now: Date; retry: unknown }> {
  const { rows } = await db.query<{ now: Date; retry: unknown }>(
    `select now() as now, (select options->'retry' from tm_task_defs where name = $1) as retry`,
    [name],
  );
  return rows[0];
}
