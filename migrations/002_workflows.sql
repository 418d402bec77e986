-- Join tasks, DAG dependencies, cancellation of running tasks, exactly-once completion.

-- What a waiting task waits for.
--   kind 'j' (join): ends when the task ended in any way; a task's children inherit the joins waiting
--            on it, so a join waits for everything its tasks spawned. direct: listed by the caller
--            (its result is delivered to the join).
--   kind 'd' (dependency): satisfied only by success; a permanent failure or cancellation of the
--            dependency fails the dependent (and its dependents) with a reason.
create table tm_task_waits (
  task_id uuid not null,
  waits_for uuid not null,
  kind char(1) not null check (kind in ('j', 'd')),
  direct boolean not null default true,
  primary key (task_id, waits_for)
);
create index tm_task_waits_for on tm_task_waits (waits_for);

-- Messages and results delivered to a join, removed when the join ends.
create table tm_join_messages (
  join_id uuid not null,
  from_task uuid not null,
  kind char(1) not null check (kind in ('m', 'r')),
  payload bytea,
  created_at timestamptz not null default clock_timestamp()
);
create index tm_join_messages_join on tm_join_messages (join_id);

-- Cancellation of an assigned or running task is a request the owning node acts on (it is notified,
-- and also finds the flag on its next heartbeat, so a lost notification delays but never loses it).
alter table tm_tasks add column cancel_requested boolean not null default false;

-- Join tasks are marked so a node reads join inputs only for them (three subqueries per fetched row
-- doubled the cost of assigning 1,000 plain tasks: 23 ms -> 46 ms measured).
alter table tm_tasks add column is_join boolean not null default false;
create index tm_tasks_cancel on tm_tasks (node_id) where cancel_requested;

-- Lets a workflow be found in history and dead letters too.
create index tm_dead_letters_workflow on tm_dead_letters (workflow_id);

-- After tasks ended: releases joins waiting on them, satisfies or fails dependents (cascading), and
-- promotes waiting tasks whose waits are all gone. Runs inside the caller's transaction; as a volatile
-- plpgsql function every statement sees rows committed before it started, so a join scheduled
-- concurrently on a task that is ending is never missed. Two transactions ending the last two tasks a
-- join waits for may each still see the other's wait row and leave the join waiting: no lock prevents
-- that here (locking the join rows serialised completions behind exactly-once transactions still open
-- on busy worker threads: 300 RPS in the workflow bench). The planner promotes such joins, level-
-- triggered, with tm_promote_waiting() below.
create function tm_after_end(p_ended uuid[], p_succeeded uuid[]) returns void
language plpgsql as $$
#variable_conflict use_column
declare
  v_ended uuid[] := p_ended;
  v_succeeded uuid[] := p_succeeded;
  v_affected uuid[];
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
    failed as (
      delete from tm_tasks t using (select distinct on (task_id) task_id, waits_for from broken) b
      where t.id = b.task_id
      returning t.*, b.waits_for as failed_dependency),
    hist as (
      insert into tm_history (id, name, workflow_id, parent_id, state, error, attempts, created_at)
      select id, name, workflow_id, parent_id, 'failed',
        'DependencyFailed: dependency ' || failed_dependency || ' did not complete successfully', attempt, created_at
      from failed)
    select coalesce(array_agg(id), '{}') into v_failed from failed;

    update tm_tasks t set state = 'ready', not_before = greatest(t.not_before, now())
    where t.id = any(v_affected) and t.state = 'waiting'
      and not exists (select 1 from tm_task_waits w where w.task_id = t.id);

    delete from tm_join_messages where join_id = any(v_ended);
    v_ended := v_failed;
    v_succeeded := '{}';
  end loop;
end $$;

-- Waiting tasks with nothing left to wait for become ready (the level-triggered half of tm_after_end).
-- A committed 'waiting' row without waits is always ready: every insert of a waiting task writes its
-- waits in the same transaction.
create index tm_tasks_waiting on tm_tasks (id) where state = 'waiting';

create function tm_promote_waiting(p_limit integer) returns integer
language sql as $$
  with promoted as (
    update tm_tasks t set state = 'ready', not_before = greatest(t.not_before, now())
    where t.id in (
      select w.id from tm_tasks w
      where w.state = 'waiting' and not exists (select 1 from tm_task_waits x where x.task_id = w.id)
      limit p_limit
      for update skip locked)
    returning 1)
  select count(*)::int from promoted
$$;

-- Completes a batch of tasks for one node, fenced: only rows still running on p_node under the same
-- assignment number are accepted. In one round trip and one transaction: outcomes to history,
-- children inserted (only for accepted parents) with the joins they declare, joins waiting on an
-- accepted task inherited by its children, results and messages delivered to joins, then tm_after_end.
-- Returns the accepted tasks.
create function tm_complete(
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
language plpgsql as $$
#variable_conflict use_column
declare
  v_ids uuid[];
  v_names text[];
  v_results bytea[];
  v_children uuid[];
  v_cancelled uuid[];
  v_cancelled_names text[];
begin
  -- A task whose cancellation was requested before its completion committed ends as cancelled, and
  -- nothing it scheduled or sent is kept.
  with c as (select * from unnest(p_ids, p_assignments) as c(id, assignment)),
  gone as (
    delete from tm_tasks t using c
    where t.id = c.id and t.assignment = c.assignment and t.node_id = p_node and t.state = 'running'
      and t.cancel_requested
    returning t.*),
  hist as (
    insert into tm_history (id, name, workflow_id, parent_id, state, error, attempts, created_at)
    select g.id, g.name, g.workflow_id, g.parent_id, 'cancelled', 'cancelled while running', g.attempt + 1,
      g.created_at from gone g)
  select coalesce(array_agg(g.id), '{}'), coalesce(array_agg(g.name), '{}') into v_cancelled, v_cancelled_names
  from gone g;

  with c as (select * from unnest(p_ids, p_assignments, p_results) as c(id, assignment, result)),
  done as (
    delete from tm_tasks t using c
    where t.id = c.id and t.assignment = c.assignment and t.node_id = p_node and t.state = 'running'
    returning t.id, t.name, t.workflow_id, t.parent_id, t.attempt, t.created_at, c.result),
  hist as (
    insert into tm_history (id, name, workflow_id, parent_id, state, result, attempts, created_at)
    select d.id, d.name, d.workflow_id, d.parent_id, 'completed', d.result, d.attempt + 1, d.created_at from done d)
  select coalesce(array_agg(d.id), '{}'), coalesce(array_agg(d.name), '{}'), coalesce(array_agg(d.result), '{}')
  into v_ids, v_names, v_results from done d;

  if coalesce(array_length(c_id, 1), 0) > 0 then
    with ins as (
      insert into tm_tasks (id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
        strict_affinity, message, priority, not_before, state, is_join)
      select u.id, u.name, u.workflow_id,
        coalesce(u.wca, case when u.lookup then (select min(w.workflow_created_at) from tm_tasks w
          where w.workflow_id = u.workflow_id) end, now()),
        u.parent_id, u.affinity_group, u.affinity, u.strict, u.message, u.priority,
        coalesce(u.run_at, now() + u.delay_ms * interval '1 millisecond'), u.state, u.id = any(w_task)
      from unnest(c_id, c_name, c_workflow_id, c_wca, c_lookup, c_parent_id, c_affinity_group, c_affinity,
        c_strict, c_message, c_priority, c_delay_ms, c_run_at, c_state)
        as u(id, name, workflow_id, wca, lookup, parent_id, affinity_group, affinity, strict, message, priority,
          delay_ms, run_at, state)
      where u.parent_id = any(v_ids)
      returning tm_tasks.id, tm_tasks.parent_id)
    select coalesce(array_agg(ins.id), '{}') into v_children from ins;

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
  perform pg_notify('taskmill_planner', '');
  return query
    select d.id, d.name, 'completed'::text from unnest(v_ids, v_names) as d(id, name)
    union all
    select x.id, x.name, 'cancelled'::text from unnest(v_cancelled, v_cancelled_names) as x(id, name);
end $$;

-- Ends or reschedules failed attempts for one node, fenced like tm_complete. p_retry_ms null: the task
-- ends (dead-letter table when p_dead_letter, else history 'failed'; history 'cancelled' when
-- p_cancelled). Returns each accepted task with what happened to it.
create function tm_fail(
  p_node uuid, p_ids uuid[], p_assignments integer[], p_errors text[], p_retry_ms float8[],
  p_dead_letter boolean[], p_cancelled boolean[]
) returns table (id uuid, name text, outcome text)
language plpgsql as $$
#variable_conflict use_column
declare
  v_ids uuid[];
  v_names text[];
  v_outcomes text[];
  v_ended uuid[];
begin
  with f as (
    select * from unnest(p_ids, p_assignments, p_errors, p_retry_ms, p_dead_letter, p_cancelled)
      as f(id, assignment, error, retry_ms, dead_letter, cancelled)),
  retried as (
    update tm_tasks t set state = 'ready', node_id = null, attempt = t.attempt + 1, last_error = f.error,
      not_before = now() + f.retry_ms * interval '1 millisecond'
    from f where t.id = f.id and t.assignment = f.assignment and t.node_id = p_node and t.state = 'running'
      and f.retry_ms is not null and not f.cancelled and not t.cancel_requested
    returning t.id, t.name),
  ended as (
    delete from tm_tasks t using f
    where t.id = f.id and t.assignment = f.assignment and t.node_id = p_node and t.state = 'running'
      and (f.retry_ms is null or f.cancelled or t.cancel_requested)
    returning t.*, f.error as final_error, f.dead_letter, (f.cancelled or t.cancel_requested) as was_cancelled),
  dead as (
    insert into tm_dead_letters (id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
      strict_affinity, message, priority, attempts, error, created_at)
    select e.id, e.name, e.workflow_id, e.workflow_created_at, e.parent_id, e.affinity_group, e.affinity,
      e.strict_affinity, e.message, e.priority, e.attempt + 1, e.final_error, e.created_at
    from ended e where e.dead_letter and not e.was_cancelled),
  hist as (
    insert into tm_history (id, name, workflow_id, parent_id, state, error, attempts, created_at)
    select e.id, e.name, e.workflow_id, e.parent_id, case when e.was_cancelled then 'cancelled' else 'failed' end,
      e.final_error, e.attempt + 1, e.created_at
    from ended e where not e.dead_letter or e.was_cancelled),
  outcomes as (
    select r.id, r.name, 'retried' as outcome from retried r
    union all
    select e.id, e.name, case when e.was_cancelled then 'cancelled' when e.dead_letter then 'dead' else 'failed' end
    from ended e)
  select coalesce(array_agg(o.id), '{}'), coalesce(array_agg(o.name), '{}'), coalesce(array_agg(o.outcome), '{}')
  into v_ids, v_names, v_outcomes from outcomes o;

  select coalesce(array_agg(o.id), '{}') into v_ended
  from unnest(v_ids, v_outcomes) as o(id, outcome) where o.outcome <> 'retried';
  perform tm_after_end(v_ended, '{}');
  perform pg_notify('taskmill_planner', '');
  return query select * from unnest(v_ids, v_names, v_outcomes);
end $$;

-- Cancels tasks that have not started (ready or waiting) and flags assigned/running ones for their
-- node. Returns what happened to each id found.
create function tm_cancel(p_ids uuid[]) returns table (id uuid, outcome text, node_id uuid)
language plpgsql as $$
#variable_conflict use_column
declare
  v_ended uuid[];
begin
  with gone as (
    delete from tm_tasks t where t.id = any(p_ids) and t.state in ('ready', 'waiting') returning t.*),
  hist as (
    insert into tm_history (id, name, workflow_id, parent_id, state, error, attempts, created_at)
    select g.id, g.name, g.workflow_id, g.parent_id, 'cancelled', 'cancelled', g.attempt, g.created_at from gone g)
  select coalesce(array_agg(g.id), '{}') into v_ended from gone g;

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

-- Inserts tasks that wait for others (joins, dependencies), checking the targets under lock:
-- a target still pending is locked (so a completion in flight finishes first) and waited for; a
-- dependency that already completed is satisfied; anything else is refused with SQLSTATE TM001 and
-- nothing is written. A task may only wait for existing tasks or tasks earlier in the same call, so
-- no cycle can be built.
create function tm_schedule_waiting(
  c_id uuid[], c_name text[], c_workflow_id uuid[], c_wca timestamptz[], c_lookup boolean[], c_parent_id uuid[],
  c_affinity_group text[], c_affinity text[], c_strict boolean[], c_message bytea[], c_priority integer[],
  c_delay_ms float8[], c_run_at timestamptz[], c_state text[],
  w_task uuid[], w_for uuid[], w_kind text[]
) returns void
language plpgsql as $$
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
    and not exists (select 1 from tm_tasks t where t.id = w.waits_for)
    and not exists (select 1 from tm_history h where h.id = w.waits_for)
    and not exists (select 1 from tm_dead_letters d where d.id = w.waits_for);
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

  insert into tm_tasks (id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
    strict_affinity, message, priority, not_before, state, is_join)
  select u.id, u.name, u.workflow_id,
    coalesce(u.wca, case when u.lookup then (select min(w.workflow_created_at) from tm_tasks w
      where w.workflow_id = u.workflow_id) end, now()),
    u.parent_id, u.affinity_group, u.affinity, u.strict, u.message, u.priority,
    coalesce(u.run_at, now() + u.delay_ms * interval '1 millisecond'), 'waiting',
    exists (select 1 from unnest(w_task, w_kind) as j(task, kind) where j.task = u.id and j.kind = 'j')
  from unnest(c_id, c_name, c_workflow_id, c_wca, c_lookup, c_parent_id, c_affinity_group, c_affinity,
    c_strict, c_message, c_priority, c_delay_ms, c_run_at, c_state)
    as u(id, name, workflow_id, wca, lookup, parent_id, affinity_group, affinity, strict, message, priority,
      delay_ms, run_at, state);

  insert into tm_task_waits (task_id, waits_for, kind, direct)
  select distinct on (w.task, w.waits_for) w.task, w.waits_for, w.kind, true
  from unnest(w_task, w_for, w_kind) as w(task, waits_for, kind)
  where exists (select 1 from tm_tasks t where t.id = w.waits_for);

  update tm_tasks t set state = 'ready'
  where t.id = any(c_id) and not exists (select 1 from tm_task_waits w where w.task_id = t.id);
  perform pg_notify('taskmill_planner', '');
end $$;

-- These functions take arrays whose sizes vary from 1 to thousands: a cached generic plan (chosen
-- after five calls) scans tm_tasks sequentially and made a 500-task completion 10x slower
-- (31 ms -> 320 ms measured); custom plans keep the index scans.
alter function tm_after_end(uuid[], uuid[]) set plan_cache_mode = force_custom_plan;
alter function tm_complete(uuid, uuid[], integer[], bytea[], uuid[], text[], uuid[], timestamptz[], boolean[], uuid[],
  text[], text[], boolean[], bytea[], integer[], float8[], timestamptz[], text[], uuid[], uuid[], uuid[], text[], bytea[])
  set plan_cache_mode = force_custom_plan;
alter function tm_fail(uuid, uuid[], integer[], text[], float8[], boolean[], boolean[])
  set plan_cache_mode = force_custom_plan;
alter function tm_cancel(uuid[]) set plan_cache_mode = force_custom_plan;
alter function tm_schedule_waiting(uuid[], text[], uuid[], timestamptz[], boolean[], uuid[], text[], text[], boolean[],
  bytea[], integer[], float8[], timestamptz[], text[], uuid[], uuid[], text[])
  set plan_cache_mode = force_custom_plan;
