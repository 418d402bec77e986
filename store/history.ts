/**
 * Statements on tm_history beyond the move into it (tm_move_to_history, migrations/005): its
 * partitions, managed by the leader's history retention (planner/history-retention.ts) through the
 * functions of migrations/004, and the latency of ended tasks the metrics read.
 */
import type { Queryable } from './queryable.ts';

export interface HistoryPartition {
  name: string;
  from: Date;
  to: Date;
}

/** The partitions of tm_history other than the default, oldest first. */
export async function listPartitions(db: Queryable): Promise<HistoryPartition[]> {
  const { rows } = await db.query<HistoryPartition>(
    `select name, from_at as "from", to_at as "to" from tm_history_partitions()`,
  );
  return rows;
}

/** Drops a partition (tm_history_drop_partition); returns its row count. */
export async function dropPartition(client: Queryable, name: string, lockTimeoutMs: number): Promise<number> {
  const { rows } = await client.query<{ rows: string }>(`select tm_history_drop_partition($1, $2) as rows`, [
    name,
    lockTimeoutMs,
  ]);
  return Number(rows[0].rows);
}

/**
 * Adds the partition [from, to) (tm_history_add_partition), failing unless done before `commitBefore`
 * when given; returns how many rows it moved out of the default partition.
 */
export async function addPartition(
  client: Queryable,
  from: Date,
  to: Date,
  lockTimeoutMs: number,
  commitBefore: Date | null,
): Promise<number> {
  const { rows } = await client.query<{ moved: string }>(
    `select tm_history_add_partition($1, $2, $3, $4) as moved`,
    [from, to, lockTimeoutMs, commitBefore],
  );
  return Number(rows[0].moved);
}

/** Deletes the default partition's rows that finished before `before`; returns how many. */
export async function purgeDefaultPartition(client: Queryable, before: Date): Promise<number> {
  const { rowCount } = await client.query(`delete from tm_history_default where finished_at < $1`, [before]);
  return rowCount ?? 0;
}

/** Most key and progress rows one retention pass deletes (the next pass takes the rest). */
const PURGE_SIDE_ROWS_LIMIT = 10_000;

/**
 * Deletes what migrations 008, 009 and 011 keep beside tasks once it is of no use: idempotency and
 * debounce keys taken before `before` that their task has let go (tm_task_key_free), progress values
 * last written before `before` and failed attempts that ended before `before`, of tasks no longer
 * pending; and the steps (tm_task_steps) recorded before `before` of tasks neither pending nor dead
 * letters (a requeued dead letter keeps its finished steps). Returns how many rows went.
 */
export async function purgeKeysAndProgress(client: Queryable, before: Date): Promise<number> {
  const { rows } = await client.query<{ n: number }>(
    `with k as (
       delete from tm_task_keys k where (k.name, k.kind, k.key) in (
         select name, kind, key from tm_task_keys where created_at < $1
           and tm_task_key_free(kind, task_id, retention_ms) limit $2)
       returning 1),
     p as (
       delete from tm_task_progress p where p.task_id in (
         select task_id from tm_task_progress g where g.updated_at < $1
           and not exists (select 1 from tm_tasks t where t.id = g.task_id) limit $2)
       returning 1),
     a as (
       delete from tm_task_attempts a where a.ctid in (
         select g.ctid from tm_task_attempts g where g.ended_at < $1
           and not exists (select 1 from tm_tasks t where t.id = g.task_id) limit $2)
       returning 1),
     s as (
       delete from tm_task_steps s where (s.task_id, s.name) in (
         select task_id, name from tm_task_steps g where g.created_at < $1
           and not exists (select 1 from tm_tasks t where t.id = g.task_id)
           and not exists (select 1 from tm_dead_letters d where d.id = g.task_id) limit $2)
       returning 1)
     select ((select count(*) from k) + (select count(*) from p) + (select count(*) from a)
       + (select count(*) from s))::int as n`,
    [before, PURGE_SIDE_ROWS_LIMIT],
  );
  return rows[0].n;
}

/** The periods of `periodMs` (as finished_at / periodMs) the default partition holds rows for. */
export async function defaultPartitionSlots(client: Queryable, periodMs: number): Promise<number[]> {
  const { rows } = await client.query<{ slot: string }>(
    `select distinct floor(extract(epoch from finished_at) * 1000 / $1)::bigint as slot from tm_history_default`,
    [periodMs],
  );
  return rows.map((r) => Number(r.slot));
}

/** Ended tasks of one name and state whose latency (creation to end) fell in one bucket. */
export interface LatencyRow {
  name: string;
  state: string;
  /** Index of the bucket: the number of bounds below the latency. */
  bucket: number;
  n: number;
  sum: number;
}

/**
 * Latencies of the tasks that ended in (since, now - settleMs], counted per name, state and bucket of
 * `bounds` (seconds), and the new watermark (now - settleMs, database time).
 */
export async function endedLatencies(
  db: Queryable,
  since: Date,
  settleMs: number,
  bounds: number[],
): Promise<{ rows: LatencyRow[]; upto: Date }> {
  const { rows } = await db.query<LatencyRow & { upto: Date }>(
    `with w as (select now() - $2 * interval '1 millisecond' as upto),
     ended as (
       select name, state, extract(epoch from finished_at - created_at)::float8 as secs
       from tm_history, w where finished_at > $1 and finished_at <= w.upto)
     select name, state, (select count(*) from unnest($3::float8[]) b where b < secs)::int as bucket,
       count(*)::int as n, sum(secs)::float8 as sum, (select upto from w) as upto
     from ended group by 1, 2, 3
     union all select null, null, null, null, null, upto from w`,
    [since, settleMs, bounds],
  );
  const mark = rows.find((r) => r.name === null)!;
  return { rows: rows.filter((r) => r.name !== null), upto: mark.upto };
}

/** The first watermark of the latency metrics: now - settleMs, database time. */
export async function latencyWatermark(db: Queryable, settleMs: number): Promise<Date> {
  const { rows } = await db.query<{ upto: Date }>(`select now() - $1 * interval '1 millisecond' as upto`, [
    settleMs,
  ]);
  return rows[0].upto;
}
