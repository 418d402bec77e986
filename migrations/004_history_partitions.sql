-- History becomes range-partitioned by finished_at, so retention drops whole partitions (no DELETE,
-- no dead tuples, no vacuum debt) instead of deleting rows. planner/history-retention.ts (run by the
-- leader's maintenance) creates the partitions ahead of time and drops the expired ones; docs/history.md
-- explains the period, the lock levels and the safety net.
--
-- Partitions:
--   tm_history_pYYYYMMDDtHHMMSS  [from, to) of finished_at, named after `from` in UTC; created by
--                                tm_history_add_partition, dropped by tm_history_drop_partition.
--   tm_history_default           safety net: takes rows no partition covers (maintenance lagging,
--                                a transaction open since before the covered range), so an insert
--                                never fails. Normally empty; maintenance moves its rows into real
--                                partitions once that is safe, or deletes them once expired.
--   tm_history_legacy            the rows that existed before this migration, kept as they are (no
--                                copy): [the oldest finished_at, the migration time). Dropped like
--                                any other partition once its upper bound is past the retention.
--
-- The functions of 002 (tm_complete, tm_fail, tm_cancel, tm_after_end) insert into tm_history as
-- before: finished_at defaults to now() (the transaction start) and routes the row.

alter table tm_history rename to tm_history_legacy;
alter table tm_history_legacy rename constraint tm_history_pkey to tm_history_legacy_pkey;
alter index tm_history_finished rename to tm_history_legacy_finished;
alter index tm_history_workflow rename to tm_history_legacy_workflow;

create table tm_history (
  id uuid not null,
  name text not null,
  workflow_id uuid not null,
  parent_id uuid,
  -- Named as in 001, so the old table (which has it under this name) can be attached below.
  state text not null constraint tm_history_state_check check (state in ('completed', 'failed', 'cancelled')),
  result bytea,
  error text,
  attempts integer not null,
  created_at timestamptz not null,
  finished_at timestamptz not null default now(),
  -- A partitioned table's primary key must include the partition key. Its index leads with id, so a
  -- lookup by id (findTask, dependency checks) is one index probe per partition.
  primary key (id, finished_at)
) partition by range (finished_at);
create index tm_history_finished on tm_history (finished_at);
create index tm_history_workflow on tm_history (workflow_id);
create table tm_history_default partition of tm_history default;

-- Existing rows stay where they are: the old table becomes the partition [its oldest finished_at, now)
-- (its finished_at and workflow_id indexes are adopted; only the (id, finished_at) key is built).
do $$
declare
  v_from timestamptz;
  v_to timestamptz;
begin
  if exists (select 1 from tm_history_legacy) then
    select date_trunc('second', min(finished_at)),
      date_trunc('second', greatest(max(finished_at), now())) + interval '1 second'
    into v_from, v_to from tm_history_legacy;
    alter table tm_history_legacy drop constraint tm_history_legacy_pkey;
    execute format('alter table tm_history attach partition tm_history_legacy for values from (%L) to (%L)',
      v_from, v_to);
  else
    drop table tm_history_legacy;
  end if;
end $$;

-- The partitions of tm_history other than the default, with their bounds and the planner's row
-- estimate (pg_class.reltuples; -1 when the partition was never vacuumed or analyzed).
create function tm_history_partitions()
returns table (name text, from_at timestamptz, to_at timestamptz, estimated_rows real)
language sql stable as $$
  select c.relname::text, b[1]::timestamptz, b[2]::timestamptz, c.reltuples
  from pg_inherits i
  join pg_class c on c.oid = i.inhrelid,
  lateral regexp_match(pg_get_expr(c.relpartbound, c.oid), '^FOR VALUES FROM \(''(.*)''\) TO \(''(.*)''\)$') b
  where i.inhparent = 'tm_history'::regclass and b is not null
  order by 2
$$;

-- Another transaction that has held a lock on p_rel for longer than p_ms, described for a message
-- (null when there is none). A DDL statement that waits for such a holder would make everything after
-- it queue until the lock timeout, pass after pass; the DDL functions below give up at once instead.
create function tm_history_long_lock_holder(p_rel regclass, p_ms integer) returns text
language sql stable as $$
  select format('%s is held by pid %s (%s, transaction open for %s ms): %s', p_rel, a.pid, a.state,
      round(extract(epoch from clock_timestamp() - a.xact_start) * 1000), left(a.query, 200))
  from pg_locks l join pg_stat_activity a on a.pid = l.pid
  where l.locktype = 'relation' and l.relation = p_rel and l.granted and l.pid <> pg_backend_pid()
    and l.database = (select oid from pg_database where datname = current_database())
    and a.xact_start < clock_timestamp() - p_ms * interval '1 millisecond'
  order by a.xact_start
  limit 1
$$;

-- Adds the partition [p_from, p_to), moving the rows the default partition holds for that range into
-- it, and returns how many rows moved. Lock levels (see docs/history.md): SHARE UPDATE EXCLUSIVE on
-- tm_history, which inserts and reads do not wait for, and ACCESS EXCLUSIVE on tm_history_default,
-- which ATTACH takes anyway to check the default's new constraint; only statements that touch the
-- default partition (inserts routed there, reads of the whole table) wait for it, for the few
-- milliseconds this takes. p_lock_timeout_ms bounds how long this waits for those locks (and so how
-- long others queue behind it): on timeout it fails with lock_not_available and changes nothing.
-- p_commit_before: when set, fails unless the clock is still before it at the end. An insert that was
-- routed to the default partition before this commits fails the default's new constraint once it
-- gets the lock, so a range that may still receive rows must not be attached; the caller passes a
-- time safely before the range starts.
create function tm_history_add_partition(
  p_from timestamptz, p_to timestamptz, p_lock_timeout_ms integer, p_commit_before timestamptz
) returns bigint
language plpgsql as $$
declare
  v_name text := 'tm_history_p' || to_char(p_from at time zone 'UTC', 'YYYYMMDD"t"HH24MISS');
  v_moved bigint;
  v_holder text;
begin
  if not p_from < p_to then
    raise exception using errcode = '22023', message = format('empty partition range [%s, %s)', p_from, p_to);
  end if;
  v_holder := tm_history_long_lock_holder('tm_history_default', p_lock_timeout_ms);
  if v_holder is not null then
    raise exception using errcode = '55P03', message = v_holder;
  end if;
  perform set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
  lock table only tm_history in share update exclusive mode;
  lock table tm_history_default in access exclusive mode;
  execute format('create table %I (like tm_history including all)', v_name);
  execute format(
    'with moved as (delete from tm_history_default where finished_at >= $1 and finished_at < $2 returning *)
     insert into %I select * from moved', v_name) using p_from, p_to;
  get diagnostics v_moved = row_count;
  execute format('alter table tm_history attach partition %I for values from (%L) to (%L)', v_name, p_from, p_to);
  if p_commit_before is not null and clock_timestamp() >= p_commit_before then
    raise exception using errcode = '55P03',
      message = format('too late to attach %s: it starts at %s', v_name, p_from);
  end if;
  return v_moved;
end $$;

-- Drops one partition of tm_history (never the default) and returns its row count: the planner's
-- estimate (pg_class.reltuples, kept by autovacuum) or, for a partition never vacuumed nor analyzed
-- (so a small one), an exact count taken before any lock on tm_history. DROP takes ACCESS EXCLUSIVE
-- on tm_history for the few milliseconds of the catalog change: completions and reads wait that long.
-- p_lock_timeout_ms bounds the wait for the lock (a long query on tm_history holds it off, and
-- completions queue behind a waiting DROP): on timeout it fails with lock_not_available and the next
-- pass tries again.
create function tm_history_drop_partition(p_name text, p_lock_timeout_ms integer) returns bigint
language plpgsql as $$
declare
  v_rows real;
  v_count bigint;
  v_holder text;
begin
  select c.reltuples into v_rows
  from pg_inherits i join pg_class c on c.oid = i.inhrelid
  where i.inhparent = 'tm_history'::regclass and c.relname = p_name and c.relname <> 'tm_history_default';
  if not found then
    raise exception using errcode = '22023', message = format('%s is not a partition of tm_history', p_name);
  end if;
  if v_rows < 0 then
    execute format('select count(*) from %I', p_name) into v_count;
  else
    v_count := v_rows::bigint;
  end if;
  v_holder := tm_history_long_lock_holder('tm_history', p_lock_timeout_ms);
  if v_holder is not null then
    raise exception using errcode = '55P03', message = v_holder;
  end if;
  perform set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
  lock table only tm_history in access exclusive mode;
  execute format('drop table %I', p_name);
  return v_count;
end $$;
