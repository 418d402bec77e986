/**
 * What "changes nothing" means in the bad-input tests: a digest of every row a request could write
 * (tasks, history, dead letters, waits, join messages, definitions, cron). Equal digests before and
 * after a refused request show that it wrote nothing.
 */
import type pg from 'pg';
import { definitionRecord, type TaskDefinition } from '../../task/task-definition.ts';

const TABLES = [
  'tm_tasks',
  'tm_history',
  'tm_dead_letters',
  'tm_task_waits',
  'tm_join_messages',
  'tm_task_defs',
  'tm_cron',
];

export async function databaseDigest(pool: pg.Pool): Promise<Record<string, string>> {
  const { rows } = await pool.query<{ t: string; digest: string }>(
    TABLES.map(
      (t) =>
        `select '${t}' as t, count(*) || ':' || coalesce(md5(string_agg(x::text, ',' order by x::text)), '') as digest from ${t} x`,
    ).join(' union all '),
  );
  return Object.fromEntries(rows.map((r) => [r.t, r.digest]));
}

/** Registers definitions as a node would at start, so callers can schedule them by name. */
export async function registerDefinitions(pool: pg.Pool, defs: TaskDefinition[]): Promise<void> {
  await pool.query(
    `insert into tm_task_defs (name, max_parallel_in_cluster, options)
     select * from unnest($1::text[], $2::integer[], $3::jsonb[]) on conflict (name) do nothing`,
    [
      defs.map((d) => d.name),
      defs.map((d) => d.maxParallelInCluster ?? null),
      defs.map((d) => JSON.stringify(definitionRecord(d))),
    ],
  );
}
