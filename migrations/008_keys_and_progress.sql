-- Deduplication, debounce and progress (docs/awaiting-and-dedup.md). Two side tables, so the hot
-- table, its indexes and the completion path are unchanged for tasks that use neither.

-- Keys of scheduled tasks, per task name: kind 'i' an idempotency key, 'd' a debounce key. The
-- primary key makes a key exact under concurrent schedulers: the insert of a key that exists waits
-- for the transaction that holds it and then decides on its committed row (tm_schedule_keyed).
-- A row points at the task that holds the key; once that task has ended (and, for an idempotency
-- key, its retention_ms has passed), the next schedule with the key takes the row over.
create table tm_task_keys (
  name text not null,
  kind text not null check (kind in ('i', 'd')),
  key text not null,
  task_id uuid not null,
  retention_ms float8 not null default 0,
  created_at timestamptz not null default now(),
  primary key (name, kind, key)
);
-- History retention deletes the rows of tasks that are gone (store/history.ts purgeKeysAndProgress).
create index tm_task_keys_created on tm_task_keys (created_at);

-- The last progress value a task's handler reported (ctx.progress), kept after the task ended, until
-- history retention removes it with the task.
create table tm_task_progress (
  task_id uuid primary key,
  value jsonb not null,
  updated_at timestamptz not null default now()
);
create index tm_task_progress_updated on tm_task_progress (updated_at);

-- Whether the task holding a key has let it go. Idempotency: the task is neither pending nor ended
-- within the last p_retention_ms (a task gone from history lets it go too). Debounce: the task is not
-- pending unstarted (ready, never attempted). VOLATILE plpgsql on purpose: each query takes a fresh
-- snapshot, so when called from ON CONFLICT after waiting for a concurrent scheduler's commit, it sees
-- the task that scheduler inserted.
create function tm_task_key_free(p_kind text, p_task uuid, p_retention_ms float8) returns boolean
language plpgsql volatile as $$
begin
  if p_kind = 'd' then
    return not exists (select 1 from tm_tasks t where t.id = p_task and t.state = 'ready' and t.attempt = 0);
  end if;
  return not exists (select 1 from tm_tasks t where t.id = p_task)
    and not exists (select 1 from tm_history h where h.id = p_task
      and h.finished_at > now() - p_retention_ms * interval '1 millisecond')
    and not exists (select 1 from tm_dead_letters d where d.id = p_task
      and d.failed_at > now() - p_retention_ms * interval '1 millisecond');
end $$;

-- Schedules tasks of which some carry a key (k_kind 'i' or 'd', k_key; null for a task without one),
-- in one statement: the columns are tm_insert_tasks's (the concurrency keys of migration 007 last),
-- which inserts the tasks that get to exist.
-- Returns, for every given id in order, the id of the task that stands for it and what happened:
--   inserted   a new task (its own id)
--   duplicate  an idempotency key held by a pending task, or one ended within its retention: that
--              task's id, nothing written
--   debounced  a debounce key held by a pending unstarted task: that task's id, its message replaced
--              and its start pushed to now + c_delay_ms
-- Within one call, tasks with the same key are one task: an idempotency key keeps the first, a debounce
-- key the first's id with the last's message and delay.
create function tm_schedule_keyed(
  c_id uuid[], c_name text[], c_workflow_id uuid[], c_wca timestamptz[], c_lookup boolean[], c_parent_id uuid[],
  c_affinity_group text[], c_affinity text[], c_strict boolean[], c_message bytea[], c_priority integer[],
  c_delay_ms float8[], c_run_at timestamptz[], c_state text[],
  k_kind text[], k_key text[], k_retention_ms float8[], c_concurrency_key text[] default null
) returns table (id uuid, task_id uuid, outcome text)
language plpgsql set plan_cache_mode = force_custom_plan as $$
#variable_conflict use_column
declare
  v_left uuid[];
  v_insert integer[];
  v_round integer := 0;
begin
  create temp table if not exists tm_keyed_rows (
    n integer, id uuid, name text, kind text, key text, rep uuid, message bytea, delay_ms float8,
    retention_ms float8, task_id uuid, outcome text
  ) on commit drop;
  truncate tm_keyed_rows;
  -- rep: the first row of its key in this call; the last row of a debounce key gives the message.
  insert into tm_keyed_rows
  select u.n, u.id, u.name, u.kind, u.key,
    case when u.kind is null then u.id else first_value(u.id) over k end,
    case when u.kind = 'd' then last_value(u.message) over k else u.message end,
    case when u.kind = 'd' then last_value(u.delay_ms) over k else u.delay_ms end,
    u.retention_ms, null, null
  from unnest(c_id, c_name, c_message, c_delay_ms, k_kind, k_key, k_retention_ms)
    with ordinality as u(id, name, message, delay_ms, kind, key, retention_ms, n)
  window k as (partition by u.name, u.kind, u.key order by u.n rows between unbounded preceding and unbounded following);

  update tm_keyed_rows r set task_id = r.id, outcome = 'inserted' where r.kind is null;
  select coalesce(array_agg(r.id), '{}') into v_left from tm_keyed_rows r where r.kind is not null and r.id = r.rep;

  -- A key's row is decided by one of: debounce into the pending task it points at, take the key over
  -- (new task), or find it held. A concurrent scheduler can move a key between two of these steps; the
  -- loop then tries again, each step on fresh snapshots.
  while cardinality(v_left) > 0 loop
    v_round := v_round + 1;
    if v_round > 10 then
      raise exception 'tm_schedule_keyed: keys still contended after 10 rounds';
    end if;

    -- Debounce into a pending unstarted task. The row lock orders this against the planner's claim: a
    -- task claimed meanwhile fails the state check and is left alone.
    with d as (
      update tm_tasks t set message = r.message,
        not_before = now() + r.delay_ms * interval '1 millisecond'
      from tm_keyed_rows r join tm_task_keys k on k.name = r.name and k.kind = 'd' and k.key = r.key
      where r.id = any(v_left) and r.kind = 'd' and t.id = k.task_id and t.state = 'ready' and t.attempt = 0
      returning r.id as rep, t.id as task)
    update tm_keyed_rows r set task_id = d.task, outcome = 'debounced' from d where r.id = d.rep;

    -- Take over free keys (or insert new ones), in key order so concurrent callers lock alike.
    with taken as (
      insert into tm_task_keys as k (name, kind, key, task_id, retention_ms)
      select r.name, r.kind, r.key, r.id, coalesce(r.retention_ms, 0)
      from tm_keyed_rows r where r.id = any(v_left) and r.outcome is null
      order by r.name, r.kind, r.key
      on conflict (name, kind, key) do update set task_id = excluded.task_id,
        retention_ms = excluded.retention_ms, created_at = now()
      where tm_task_key_free(k.kind, k.task_id, k.retention_ms)
      returning k.task_id)
    update tm_keyed_rows r set task_id = r.id, outcome = 'inserted' from taken where r.id = taken.task_id;

    -- Keys held: an idempotency key answers with its task; a debounce key goes round again (its task
    -- was claimed, or another scheduler just inserted one).
    update tm_keyed_rows r set task_id = k.task_id, outcome = 'duplicate'
    from tm_task_keys k
    where r.id = any(v_left) and r.outcome is null and r.kind = 'i'
      and k.name = r.name and k.kind = 'i' and k.key = r.key;

    select coalesce(array_agg(r.id), '{}') into v_left
    from tm_keyed_rows r where r.id = any(v_left) and r.outcome is null;
  end loop;

  update tm_keyed_rows r set task_id = p.task_id, outcome = p.outcome
  from tm_keyed_rows p where r.rep = p.id and r.id <> r.rep;

  -- Positions (in the given order) of the tasks to insert: those without a key and the keys' new tasks.
  select coalesce(array_agg(r.n::integer order by r.n), '{}') into v_insert
  from tm_keyed_rows r where r.outcome = 'inserted' and r.task_id = r.id;
  perform 1 from tm_insert_tasks(
    array(select c_id[i] from unnest(v_insert) i), array(select c_name[i] from unnest(v_insert) i),
    array(select c_workflow_id[i] from unnest(v_insert) i), array(select c_wca[i] from unnest(v_insert) i),
    array(select c_lookup[i] from unnest(v_insert) i), array(select c_parent_id[i] from unnest(v_insert) i),
    array(select c_affinity_group[i] from unnest(v_insert) i), array(select c_affinity[i] from unnest(v_insert) i),
    array(select c_strict[i] from unnest(v_insert) i),
    array(select r.message from unnest(v_insert) i join tm_keyed_rows r on r.n = i order by i),
    array(select c_priority[i] from unnest(v_insert) i),
    array(select r.delay_ms from unnest(v_insert) i join tm_keyed_rows r on r.n = i order by i),
    array(select c_run_at[i] from unnest(v_insert) i), array(select c_state[i] from unnest(v_insert) i),
    c_concurrency_key => array(select c_concurrency_key[i] from unnest(v_insert) i));
  if cardinality(v_insert) > 0 then
    perform tm_wake_planner();
  end if;
  return query select r.id, r.task_id, r.outcome from tm_keyed_rows r order by r.n;
end $$;
