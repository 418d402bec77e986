-- Moving rows out of the default partition must not hide them from a concurrent read.
--
-- tm_history_add_partition (migration 004) took SHARE UPDATE EXCLUSIVE on tm_history, which reads do
-- not wait for. A read of the whole table that started meanwhile took the partition list of tm_history
-- as it was (without the new partition), then waited for the default partition's lock, and once the
-- attach committed it scanned the default with a fresh snapshot: the rows that had moved were in
-- neither place it looked. A finished task could be reported missing for that one read (getTask,
-- waitForTask's final read, a count of tasks), which is wrong even if the next read finds it.
--
-- Now, when the range holds rows in the default partition, the function takes ACCESS EXCLUSIVE on
-- tm_history itself: a read queues before it lists partitions and, once granted, sees the new one. This
-- happens only when rows landed in the default (no partition was ready for them: a first start, a
-- clock jump, a long outage of the leader), for the milliseconds of the move, within the same lock
-- timeout. A range with nothing to move (the usual partition created ahead of time) keeps the light
-- lock. The caller attaches only ranges no transaction can still write into, so the rows counted
-- before the locks are the rows moved.
create or replace function tm_history_add_partition(
  p_from timestamptz, p_to timestamptz, p_lock_timeout_ms integer, p_commit_before timestamptz
) returns bigint
language plpgsql as $$
declare
  v_name text := 'tm_history_p' || to_char(p_from at time zone 'UTC', 'YYYYMMDD"t"HH24MISS');
  v_moved bigint;
  v_holder text;
  v_moves boolean;
begin
  if not p_from < p_to then
    raise exception using errcode = '22023', message = format('empty partition range [%s, %s)', p_from, p_to);
  end if;
  v_moves := exists (select 1 from tm_history_default where finished_at >= p_from and finished_at < p_to);
  v_holder := tm_history_long_lock_holder(
    case when v_moves then 'tm_history' else 'tm_history_default' end, p_lock_timeout_ms);
  if v_holder is not null then
    raise exception using errcode = '55P03', message = v_holder;
  end if;
  perform set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
  if v_moves then
    lock table only tm_history in access exclusive mode;
  else
    lock table only tm_history in share update exclusive mode;
  end if;
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
