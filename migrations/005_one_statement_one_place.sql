-- One statement, one place: the task insert, the move to history, the planner wake-up, the fence
-- check and "a task in any of the three tables" each become one SQL object, which the TypeScript
-- store (store/) and the plpgsql functions of 002 call. tm_after_end, tm_complete, tm_fail, tm_cancel
-- and tm_schedule_waiting are redefined here to use them; what they do is unchanged.

-- The channel the planner listens on (store/channels.ts PLANNER_CHANNEL names it for LISTEN; a test
-- checks the two agree).
create function tm_planner_channel() returns text
language sql immutable as $$ select 'taskmill_planner' $$;

-- Wakes the planner: new ready tasks or freed capacity. Delivered at commit; notifications of one
-- transaction with the same payload are folded into one.
create function tm_wake_planner() returns void
language sql as $$ select pg_notify(tm_planner_channel(), '') $$;

-- The fence: the row is still running on p_node under assignment p_assignment. A completion, a
-- failure or an exactly-once transaction of a node that lost the task (reassigned after its node was
-- declared dead) fails it and changes nothing. Inlined into the caller's statement (a plain SQL
-- expression), so the caller's lock and index scan are unchanged.
create function tm_fenced(t tm_tasks, p_node uuid, p_assignment integer) returns boolean
language sql immutable as $$
  select t.node_id = p_node and t.assignment = p_assignment and t.state = 'running'
$$;

-- A task wherever it is: the hot table, history or the dead-letter table (`stored_in`: 'tasks',
-- 'history', 'dead_letters'). `state` is the stored one ('dead' for a dead letter); ended tasks have no
-- node and no not-before time, pending ones no finished time and no result, history keeps no affinity
-- nor priority. A filter on id or workflow_id reaches each table's index, and one on stored_in with a
-- parameter skips a whole table (a one-time filter).
create view tm_any_task as
  select 'tasks'::text as stored_in, id, name, state, workflow_id, parent_id, affinity_group, affinity, priority,
    attempt as attempts, node_id, not_before, created_at, null::timestamptz as finished_at, null::bytea as result,
    last_error as error
  from tm_tasks
  union all
  select 'history', id, name, state, workflow_id, parent_id, null, null, null, attempts, null, null, created_at,
    finished_at, result, error
  from tm_history
  union all
  select 'dead_letters', id, name, 'dead', workflow_id, parent_id, affinity_group, affinity, priority, attempts,
    null, null, created_at, failed_at, null, error
  from tm_dead_letters;

-- The multi-row insert of new tasks, as parallel arrays (store/tasks.ts insertParams builds them).
-- workflow_created_at: the given one, else (c_lookup) the workflow's oldest pending task's, else now.
-- not_before: c_run_at, else now + c_delay_ms. p_joins: the ids among them that are join tasks.
-- p_parents: when given, only the tasks whose parent is one of these are inserted (the children of
-- the completions a fence accepted). Returns the ids inserted. Does not wake the planner.
create function tm_insert_tasks(
  c_id uuid[], c_name text[], c_workflow_id uuid[], c_wca timestamptz[], c_lookup boolean[], c_parent_id uuid[],
  c_affinity_group text[], c_affinity text[], c_strict boolean[], c_message bytea[], c_priority integer[],
  c_delay_ms float8[], c_run_at timestamptz[], c_state text[], p_joins uuid[] default '{}', p_parents uuid[] default null
) returns setof uuid
language plpgsql set plan_cache_mode = force_custom_plan as $$
begin
  return query
    insert into tm_tasks (id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
      strict_affinity, message, priority, not_before, state, is_join)
    select u.id, u.name, u.workflow_id,
      coalesce(u.wca, case when u.lookup then (select min(w.workflow_created_at) from tm_tasks w
        where w.workflow_id = u.workflow_id) end, now()),
      u.parent_id, u.affinity_group, u.affinity, u.strict, u.message, u.priority,
      coalesce(u.run_at, now() + u.delay_ms * interval '1 millisecond'), u.state, u.id = any(p_joins)
    from unnest(c_id, c_name, c_workflow_id, c_wca, c_lookup, c_parent_id, c_affinity_group, c_affinity,
      c_strict, c_message, c_priority, c_delay_ms, c_run_at, c_state)
      as u(id, name, workflow_id, wca, lookup, parent_id, affinity_group, affinity, strict, message, priority,
        delay_ms, run_at, state)
    where p_parents is null or u.parent_id = any(p_parents)
    returning tm_tasks.id;
end $$;

-- The move to history: deletes the tasks p_ids from the hot table and records each in tm_history with
-- its state, result and error (parallel to p_ids; a missing array means null for all), and attempts =
-- its attempt + p_attempted (1 when the ending was an attempt, 0 when it never ran). Rows already gone
-- are skipped. Returns the tasks moved.
create function tm_move_to_history(
  p_ids uuid[], p_states text[], p_results bytea[], p_errors text[], p_attempted integer
) returns table (id uuid, name text)
language plpgsql set plan_cache_mode = force_custom_plan as $$
#variable_conflict use_column
begin
  return query
    with m as (select * from unnest(p_ids, p_states, p_results, p_errors) as m(id, state, result, error)),
    gone as (
      delete from tm_tasks t using m where t.id = m.id
      returning t.id, t.name, t.workflow_id, t.parent_id, t.attempt, t.created_at, m.state, m.result, m.error),
    hist as (
      insert into tm_history (id, name, workflow_id, parent_id, state, result, error, attempts, created_at)
      select g.id, g.name, g.workflow_id, g.parent_id, g.state, g.result, g.error, g.attempt + p_attempted,
        g.created_at
      from gone g)
    select g.id, g.name from gone g;
end $$;

-- As in 002, with the dependents failed by a dependency moved to history by tm_move_to_history.
create or replace function tm_after_end(p_ended uuid[], p_succeeded uuid[]) returns void
language plpgsql set plan_cache_mode = force_custom_plan as $$
#variable_conflict use_column
declare
  v_ended uuid[] := p_ended;
  v_succeeded uuid[] := p_succeeded;
  v_affected uuid[];
  v_broken uuid[];
  v_errors text[];
  v_failed uuid[];
begin
  while coalesce(array_length(v_ended, 1), 0) > 0 loop
    -- The common case, tasks nobody waits for and no join among them, costs two index probes.
    if not exists (select 1 from tm_task_waits w where w.waits_for = any(v_ended))
       and not exists (select 1 from tm_join_messages m where m.join_id = any(v_ended)) then
      exit;
    end if;
    with gone as (
      delete from tm_task_waits w
      where w.waits_for = any(v_ended) and (w.kind = 'j' or w.waits_for = any(v_succeeded))
      returning w.task_id)
    select coalesce(array_agg(distinct task_id), '{}') into v_affected from gone;

    with broken as (
      delete from tm_task_waits w
      where w.waits_for = any(v_ended) and w.kind = 'd' and not (w.waits_for = any(v_succeeded))
      returning w.task_id, w.waits_for),
    b as (select distinct on (task_id) task_id, waits_for from broken)
    select coalesce(array_agg(b.task_id), '{}'),
      coalesce(array_agg('DependencyFailed: dependency ' || b.waits_for || ' did not complete successfully'), '{}')
    into v_broken, v_errors from b;

    select coalesce(array_agg(h.id), '{}') into v_failed
    from tm_move_to_history(v_broken, array_fill('failed'::text, array[cardinality(v_broken)]), null, v_errors, 0) h;

    update tm_tasks t set state = 'ready', not_before = greatest(t.not_before, now())
    where t.id = any(v_affected) and t.state = 'waiting'
      and not exists (select 1 from tm_task_waits w where w.task_id = t.id);

    delete from tm_join_messages where join_id = any(v_ended);
    v_ended := v_failed;
    v_succeeded := '{}';
  end loop;
end $$;

-- As in 002: completes a batch of tasks for one node, fenced (tm_fenced); children inserted by
-- tm_insert_tasks (only for accepted parents), outcomes moved by tm_move_to_history, the planner woken
-- by tm_wake_planner.
create or replace function tm_complete(
  p_node uuid, p_ids uuid[], p_assignments integer[], p_results bytea[],
  -- children (same columns as the schedule insert)
  c_id uuid[], c_name text[], c_workflow_id uuid[], c_wca timestamptz[], c_lookup boolean[], c_parent_id uuid[],
  c_affinity_group text[], c_affinity text[], c_strict boolean[], c_message bytea[], c_priority integer[],
  c_delay_ms float8[], c_run_at timestamptz[], c_state text[],
  -- waits declared by the children (joins over siblings)
  w_task uuid[], w_for uuid[],
  -- join messages: sender, join task name, payload
  m_from uuid[], m_join_name text[], m_payload bytea[]
) returns table (id uuid, name text, outcome text)
language plpgsql set plan_cache_mode = force_custom_plan as $$
#variable_conflict use_column
declare
  v_ids uuid[];
  v_results bytea[];
  v_done uuid[];
  v_names text[];
  v_children uuid[];
  v_cancelled uuid[];
  v_cancelled_names text[];
begin
  -- The rows this node still holds, locked. A task whose cancellation was requested before its
  -- completion committed ends as cancelled, and nothing it scheduled or sent is kept.
  with c as (select * from unnest(p_ids, p_assignments, p_results) as c(id, assignment, result)),
  fenced as (
    select c.id, c.result, t.cancel_requested
    from tm_tasks t join c on t.id = c.id
    where tm_fenced(t, p_node, c.assignment)
    for update of t)
  select coalesce(array_agg(f.id) filter (where not f.cancel_requested), '{}'),
    coalesce(array_agg(f.result) filter (where not f.cancel_requested), '{}'),
    coalesce(array_agg(f.id) filter (where f.cancel_requested), '{}')
  into v_ids, v_results, v_cancelled from fenced f;

  select coalesce(array_agg(h.id), '{}'), coalesce(array_agg(h.name), '{}') into v_cancelled, v_cancelled_names
  from tm_move_to_history(v_cancelled, array_fill('cancelled'::text, array[cardinality(v_cancelled)]), null,
    array_fill('cancelled while running'::text, array[cardinality(v_cancelled)]), 1) h;

  select coalesce(array_agg(h.id), '{}'), coalesce(array_agg(h.name), '{}') into v_done, v_names
  from tm_move_to_history(v_ids, array_fill('completed'::text, array[cardinality(v_ids)]), v_results, null, 1) h;

  if coalesce(array_length(c_id, 1), 0) > 0 then
    select coalesce(array_agg(k), '{}') into v_children
    from tm_insert_tasks(c_id, c_name, c_workflow_id, c_wca, c_lookup, c_parent_id, c_affinity_group, c_affinity,
      c_strict, c_message, c_priority, c_delay_ms, c_run_at, c_state, w_task, v_ids) k;

    insert into tm_task_waits (task_id, waits_for, kind, direct)
    select w.task, w.waits_for, 'j', true from unnest(w_task, w_for) as w(task, waits_for)
    where w.task = any(v_children)
    on conflict do nothing;

    -- Joins waiting on a completed task now also wait on everything it spawned.
    insert into tm_task_waits (task_id, waits_for, kind, direct)
    select w.task_id, k.id, 'j', false
    from tm_task_waits w
    join unnest(c_id, c_parent_id) as k(id, parent_id) on k.parent_id = w.waits_for
    where w.waits_for = any(v_ids) and w.kind = 'j' and k.id = any(v_children)
    on conflict do nothing;
  end if;

  -- Results of tasks a join listed, and messages sent to joins waiting on the sender.
  insert into tm_join_messages (join_id, from_task, kind, payload)
  select w.task_id, r.id, 'r', r.result
  from unnest(v_ids, v_results) as r(id, result)
  join tm_task_waits w on w.waits_for = r.id and w.kind = 'j' and w.direct
  where r.result is not null;

  if coalesce(array_length(m_from, 1), 0) > 0 then
    insert into tm_join_messages (join_id, from_task, kind, payload)
    select w.task_id, m.from_task, 'm', m.payload
    from unnest(m_from, m_join_name, m_payload) as m(from_task, join_name, payload)
    join tm_task_waits w on w.waits_for = m.from_task and w.kind = 'j'
    join tm_tasks j on j.id = w.task_id and j.name = m.join_name
    where m.from_task = any(v_ids);
  end if;

  perform tm_after_end(v_ids || v_cancelled, v_ids);
  perform tm_wake_planner();
  return query
    select d.id, d.name, 'completed'::text from unnest(v_done, v_names) as d(id, name)
    union all
    select x.id, x.name, 'cancelled'::text from unnest(v_cancelled, v_cancelled_names) as x(id, name);
end $$;

-- As in 002: ends or reschedules failed attempts for one node, fenced (tm_fenced); the ended ones go
-- to the dead-letter table or, by tm_move_to_history, to history.
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
    strict_affinity, message, priority, attempts, error, created_at)
  select g.id, g.name, g.workflow_id, g.workflow_created_at, g.parent_id, g.affinity_group, g.affinity,
    g.strict_affinity, g.message, g.priority, g.attempt + 1, g.final_error, g.created_at
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

-- As in 002: cancels tasks that have not started, moved to history by tm_move_to_history, and flags
-- assigned/running ones for their node.
create or replace function tm_cancel(p_ids uuid[]) returns table (id uuid, outcome text, node_id uuid)
language plpgsql set plan_cache_mode = force_custom_plan as $$
#variable_conflict use_column
declare
  v_pending uuid[];
  v_ended uuid[];
begin
  select coalesce(array_agg(t.id), '{}') into v_pending
  from (select t.id from tm_tasks t where t.id = any(p_ids) and t.state in ('ready', 'waiting') for update) t;

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

-- As in 002, with the tasks inserted by tm_insert_tasks, the "task exists" check on tm_any_task and
-- the planner woken by tm_wake_planner.
create or replace function tm_schedule_waiting(
  c_id uuid[], c_name text[], c_workflow_id uuid[], c_wca timestamptz[], c_lookup boolean[], c_parent_id uuid[],
  c_affinity_group text[], c_affinity text[], c_strict boolean[], c_message bytea[], c_priority integer[],
  c_delay_ms float8[], c_run_at timestamptz[], c_state text[],
  w_task uuid[], w_for uuid[], w_kind text[]
) returns void
language plpgsql set plan_cache_mode = force_custom_plan as $$
#variable_conflict use_column
declare
  v_problem text;
begin
  select string_agg(distinct w.task || ' -> ' || w.waits_for, ', ') into v_problem
  from unnest(w_task, w_for) as w(task, waits_for)
  where w.task = w.waits_for
     or array_position(c_id, w.waits_for) >= array_position(c_id, w.task);
  if v_problem is not null then
    raise exception using errcode = 'TM001',
      message = 'a task can only wait for tasks that exist or are scheduled before it in the same call: ' || v_problem;
  end if;

  perform 1 from tm_tasks t where t.id = any(w_for) order by t.id for update;

  select string_agg(distinct w.waits_for::text, ', ') into v_problem
  from unnest(w_for) as w(waits_for)
  where not w.waits_for = any(c_id)
    and not exists (select 1 from tm_any_task a where a.id = w.waits_for);
  if v_problem is not null then
    raise exception using errcode = 'TM001', message = 'unknown task ids: ' || v_problem;
  end if;

  select string_agg(distinct w.waits_for::text, ', ') into v_problem
  from unnest(w_for, w_kind) as w(waits_for, kind)
  where w.kind = 'j' and not w.waits_for = any(c_id)
    and not exists (select 1 from tm_tasks t where t.id = w.waits_for);
  if v_problem is not null then
    raise exception using errcode = 'TM001',
      message = 'these tasks have already ended, so a join can no longer wait for what they spawn: ' || v_problem ||
        '. Schedule the join in the same transaction as the tasks it joins, or from their parent with ctx.scheduleJoin().';
  end if;

  select string_agg(distinct w.waits_for || ' (' || coalesce(h.state, 'dead') || ')', ', ') into v_problem
  from unnest(w_for, w_kind) as w(waits_for, kind)
  left join tm_history h on h.id = w.waits_for
  where w.kind = 'd' and not w.waits_for = any(c_id)
    and not exists (select 1 from tm_tasks t where t.id = w.waits_for)
    and coalesce(h.state, 'dead') <> 'completed';
  if v_problem is not null then
    raise exception using errcode = 'TM001', message = 'dependencies that did not complete successfully: ' || v_problem;
  end if;

  perform 1 from tm_insert_tasks(c_id, c_name, c_workflow_id, c_wca, c_lookup, c_parent_id, c_affinity_group,
    c_affinity, c_strict, c_message, c_priority, c_delay_ms, c_run_at,
    array_fill('waiting'::text, array[cardinality(c_id)]),
    array(select j.task from unnest(w_task, w_kind) as j(task, kind) where j.kind = 'j'));

  insert into tm_task_waits (task_id, waits_for, kind, direct)
  select distinct on (w.task, w.waits_for) w.task, w.waits_for, w.kind, true
  from unnest(w_task, w_for, w_kind) as w(task, waits_for, kind)
  where exists (select 1 from tm_tasks t where t.id = w.waits_for);

  update tm_tasks t set state = 'ready'
  where t.id = any(c_id) and not exists (select 1 from tm_task_waits w where w.task_id = t.id);
  perform tm_wake_planner();
end $$;
