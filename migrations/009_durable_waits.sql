-- Durable waits and steps (docs/durable-waits.md, store/steps.ts, worker/durable-run.ts).
--
-- A handler's checkpoints are rows of tm_task_steps, one per (task, step name):
--   done     ctx.step(name, fn) finished; `result` is its msgpack value (null: undefined)
--   sleep    ctx.sleep(ms) began; `wake_at` is when it ends (fixed by the first attempt that slept)
--   wait     ctx.waitForEvent(name, { key, timeoutMs }) waits for (event_name, event_key) until
--            `wake_at` (null without a timeout)
--   event    that wait received an event; `result` is its msgpack payload
--   timeout  that wait's timeout passed first
-- A task waiting (sleep or event) is a hot-table row in the new stored state 'sleeping', with no node
-- and `not_before` = when its wait ends (9999-12-31 for a wait without a timeout: a date every reader
-- of not_before can show, unlike 'infinity'). It holds no worker thread, no connection and no concurrency
-- slot. Everything is decided from rows, under the task row's lock, which every function here takes
-- first (so they serialize per task):
--   tm_suspend        the worker thread ends an attempt on a wait: fenced, records the wait, and puts
--                     the task to sleep (or straight back to ready if the wait is already over);
--   tm_send_event     records the payload into every wait on (name, key) and makes their tasks ready;
--   tm_wake_sleeping  run by every planner pass: tasks whose wait ended by time become ready, their
--                     pending event waits recorded as timed out.
-- The next attempt runs the handler from the top; its finished steps return their recorded values.

alter table tm_tasks drop constraint tm_tasks_state_check;
alter table tm_tasks add constraint tm_tasks_state_check
  check (state in ('ready', 'assigned', 'running', 'waiting', 'sleeping'));

-- Sleeping tasks by the end of their wait, for tm_wake_sleeping's index probe on every planner pass.
create index tm_tasks_sleeping on tm_tasks (not_before) where state = 'sleeping';

create table tm_task_steps (
  task_id uuid not null,
  name text not null,
  kind text not null check (kind in ('done', 'sleep', 'wait', 'event', 'timeout')),
  result bytea,
  event_name text,
  event_key text,
  wake_at timestamptz,
  created_at timestamptz not null default now(),
  primary key (task_id, name),
  check ((kind in ('wait', 'event', 'timeout')) = (event_name is not null and event_key is not null))
);
-- tm_send_event finds the waits on an event through this.
create index tm_task_steps_waiting on tm_task_steps (event_name, event_key) where kind = 'wait';
-- History retention deletes the steps of tasks that are gone (store/history.ts purgeKeysAndProgress).
create index tm_task_steps_created on tm_task_steps (created_at);

-- Records a finished step of a task still running on p_node under p_assignment (tm_fenced). FOR SHARE
-- holds off a reassignment (dead-node recovery's update) until this commits, so a step is recorded only
-- by an attempt that holds the task when it commits. A step already recorded is kept. False: fenced out.
create function tm_step_save(p_task uuid, p_node uuid, p_assignment integer, p_name text, p_result bytea)
returns boolean
language plpgsql as $$
begin
  perform 1 from tm_tasks t where t.id = p_task and tm_fenced(t, p_node, p_assignment) for share;
  if not found then
    return false;
  end if;
  insert into tm_task_steps (task_id, name, kind, result) values (p_task, p_name, 'done', p_result)
  on conflict (task_id, name) do nothing;
  return true;
end $$;

-- Ends the attempt of a task running on p_node under p_assignment on a wait: a sleep of p_sleep_ms
-- (p_event null) or a wait for (p_event, p_key) with p_timeout_ms (null: none). The step p_step records
-- it; a step already there keeps its wake time (a rerun does not extend a wait). Returns:
--   sleeping   the task sleeps until the wait ends (not_before), off its node
--   ready      the wait is already over (an event or a timeout recorded, a sleep past): next attempt now
--   cancelled  its cancellation was requested: it ends cancelled, as tm_complete would end it
--   stale      fenced out (reassigned): nothing changed
create function tm_suspend(
  p_task uuid, p_node uuid, p_assignment integer, p_step text, p_sleep_ms float8, p_event text, p_key text,
  p_timeout_ms float8
) returns text
language plpgsql as $$
declare
  v_cancel boolean;
  v_kind text;
  v_wake timestamptz;
begin
  select t.cancel_requested into v_cancel from tm_tasks t
  where t.id = p_task and tm_fenced(t, p_node, p_assignment) for update;
  if not found then
    return 'stale';
  end if;
  if v_cancel then
    perform 1 from tm_move_to_history(array[p_task], array['cancelled'], null, array['cancelled while running'], 1);
    perform tm_after_end(array[p_task], '{}');
    perform tm_wake_planner();
    return 'cancelled';
  end if;

  insert into tm_task_steps (task_id, name, kind, event_name, event_key, wake_at)
  values (p_task, p_step, case when p_event is null then 'sleep' else 'wait' end, p_event, p_key,
    case when p_event is null then now() + p_sleep_ms * interval '1 millisecond'
      when p_timeout_ms is not null then now() + p_timeout_ms * interval '1 millisecond' end)
  on conflict (task_id, name) do nothing;
  select s.kind, s.wake_at into v_kind, v_wake from tm_task_steps s where s.task_id = p_task and s.name = p_step;

  if v_kind in ('event', 'timeout', 'done') or v_wake <= now() then
    update tm_tasks set state = 'ready', node_id = null, not_before = now() where id = p_task;
    perform tm_wake_planner();
    return 'ready';
  end if;
  update tm_tasks set state = 'sleeping', node_id = null,
    not_before = coalesce(v_wake, timestamptz '9999-12-31 00:00:00+00') where id = p_task;
  perform tm_wake_planner();
  return 'sleeping';
end $$;

-- Sends an event: every task sleeping on a wait for (p_name, p_key) gets p_payload recorded as that
-- wait's result and becomes ready, in this transaction. Returns how many tasks it woke (0: nobody was
-- waiting; an event reaches only tasks already waiting for it).
create function tm_send_event(p_name text, p_key text, p_payload bytea) returns integer
language plpgsql as $$
declare
  v_ids uuid[];
begin
  -- The task rows first, in id order, like tm_suspend and tm_wake_sleeping: a wait being recorded or
  -- timed out meanwhile is decided before or after this, never half-way.
  select coalesce(array_agg(l.id), '{}') into v_ids from (
    select t.id from tm_tasks t join tm_task_steps s on s.task_id = t.id
    where s.kind = 'wait' and s.event_name = p_name and s.event_key = p_key and t.state = 'sleeping'
    order by t.id for update of t) l;
  if cardinality(v_ids) = 0 then
    return 0;
  end if;
  with got as (
    update tm_task_steps s set kind = 'event', result = p_payload
    from tm_tasks t
    where t.id = any(v_ids) and t.state = 'sleeping' and s.task_id = t.id and s.kind = 'wait'
      and s.event_name = p_name and s.event_key = p_key
    returning s.task_id),
  woke as (
    update tm_tasks t set state = 'ready', not_before = now()
    where t.id in (select task_id from got)
    returning t.id)
  select coalesce(array_agg(id), '{}') into v_ids from woke;
  if cardinality(v_ids) > 0 then
    perform tm_wake_planner();
  end if;
  return cardinality(v_ids);
end $$;

-- Wakes up to p_limit sleeping tasks whose wait has ended by time (a sleep's end, an event wait's
-- timeout), oldest first; their pending event waits are recorded as timed out. Tasks another
-- transaction holds (an event being sent to them) are left to the next pass. Returns how many woke.
create function tm_wake_sleeping(p_limit integer) returns integer
language sql as $$
  with due as (
    select t.id from tm_tasks t where t.state = 'sleeping' and t.not_before <= now()
    order by t.not_before limit p_limit for update skip locked),
  timed_out as (
    update tm_task_steps s set kind = 'timeout' from due where s.task_id = due.id and s.kind = 'wait'),
  woke as (update tm_tasks t set state = 'ready' from due where t.id = due.id returning t.id)
  select count(*)::int from woke
$$;

-- As in 005, with sleeping tasks cancelled at once like the other tasks that are not running.
create or replace function tm_cancel(p_ids uuid[]) returns table (id uuid, outcome text, node_id uuid)
language plpgsql set plan_cache_mode = force_custom_plan as $$
#variable_conflict use_column
declare
  v_pending uuid[];
  v_ended uuid[];
begin
  select coalesce(array_agg(t.id), '{}') into v_pending
  from (select t.id from tm_tasks t where t.id = any(p_ids) and t.state in ('ready', 'waiting', 'sleeping')
    for update) t;

  select coalesce(array_agg(h.id), '{}') into v_ended
  from tm_move_to_history(v_pending, array_fill('cancelled'::text, array[cardinality(v_pending)]), null,
    array_fill('cancelled'::text, array[cardinality(v_pending)]), 0) h;

  perform tm_after_end(v_ended, '{}');
  return query
    with f as (
      update tm_tasks t set cancel_requested = true
      where t.id = any(p_ids) and t.state in ('assigned', 'running')
      returning t.id, t.node_id)
    select e.id, 'cancelled'::text, null::uuid from unnest(v_ended) as e(id)
    union all
    select f.id, 'requested'::text, f.node_id from f;
end $$;

-- A dead letter keeps its task's concurrency key (migration 007), and a requeue gives it back
-- (store/dead-letters.ts requeueDeadLetters): tm_fail is 005's with the column copied.
alter table tm_dead_letters add column concurrency_key text not null default '';

create or replace function tm_fail(
  p_node uuid, p_ids uuid[], p_assignments integer[], p_errors text[], p_retry_ms float8[],
  p_dead_letter boolean[], p_cancelled boolean[]
) returns table (id uuid, name text, outcome text)
language plpgsql set plan_cache_mode = force_custom_plan as $$
#variable_conflict use_column
declare
  v_ids uuid[];
  v_names text[];
  v_outcomes text[];
  v_errors text[];
  v_retry_ms float8[];
  v_ended uuid[];
begin
  -- The rows this node still holds, locked, with what becomes of each: retried (another attempt, not
  -- cancelled), cancelled, dead (to the dead-letter table) or failed (to history).
  with f as (
    select * from unnest(p_ids, p_assignments, p_errors, p_retry_ms, p_dead_letter, p_cancelled)
      as f(id, assignment, error, retry_ms, dead_letter, cancelled)),
  fenced as (
    select f.id, t.name, f.error, f.retry_ms, f.dead_letter, f.cancelled or t.cancel_requested as was_cancelled
    from tm_tasks t join f on t.id = f.id
    where tm_fenced(t, p_node, f.assignment)
    for update of t)
  select coalesce(array_agg(x.id), '{}'), coalesce(array_agg(x.name), '{}'), coalesce(array_agg(x.error), '{}'),
    coalesce(array_agg(x.retry_ms), '{}'),
    coalesce(array_agg(case when x.retry_ms is not null and not x.was_cancelled then 'retried'
      when x.was_cancelled then 'cancelled' when x.dead_letter then 'dead' else 'failed' end), '{}')
  into v_ids, v_names, v_errors, v_retry_ms, v_outcomes from fenced x;

  update tm_tasks t set state = 'ready', node_id = null, attempt = t.attempt + 1, last_error = r.error,
    not_before = now() + r.retry_ms * interval '1 millisecond'
  from unnest(v_ids, v_errors, v_retry_ms, v_outcomes) as r(id, error, retry_ms, outcome)
  where t.id = r.id and r.outcome = 'retried';

  with d as (
    select * from unnest(v_ids, v_errors, v_outcomes) as d(id, error, outcome) where d.outcome = 'dead'),
  gone as (delete from tm_tasks t using d where t.id = d.id returning t.*, d.error as final_error)
  insert into tm_dead_letters (id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
    strict_affinity, message, priority, attempts, error, created_at, concurrency_key)
  select g.id, g.name, g.workflow_id, g.workflow_created_at, g.parent_id, g.affinity_group, g.affinity,
    g.strict_affinity, g.message, g.priority, g.attempt + 1, g.final_error, g.created_at, g.concurrency_key
  from gone g;

  perform 1 from tm_move_to_history(
    array(select o.id from unnest(v_ids, v_outcomes) as o(id, outcome) where o.outcome in ('cancelled', 'failed')),
    array(select o.outcome from unnest(v_outcomes) as o(outcome) where o.outcome in ('cancelled', 'failed')),
    null,
    array(select o.error from unnest(v_errors, v_outcomes) as o(error, outcome)
      where o.outcome in ('cancelled', 'failed')),
    1);

  select coalesce(array_agg(o.id), '{}') into v_ended
  from unnest(v_ids, v_outcomes) as o(id, outcome) where o.outcome <> 'retried';
  perform tm_after_end(v_ended, '{}');
  perform tm_wake_planner();
  return query select * from unnest(v_ids, v_names, v_outcomes);
end $$;
