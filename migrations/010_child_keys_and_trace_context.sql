-- Concurrency keys on children and waiting tasks (docs/flow-control.md), and the trace context
-- (docs/observability.md): the W3C traceparent of the span a task was scheduled under (the scheduling
-- client's span, or the attempt span of the parent task that scheduled it), so its attempts, retries,
-- children and joins join the scheduler's trace across processes. Nullable without a default: adding
-- it rewrites nothing, and a task scheduled without tracing stores only a null bit.
alter table tm_tasks add column traceparent text;

-- The functions that insert tasks take the trace context of the tasks they insert as one more, last,
-- defaulted parameter (null: none), and so do tm_complete (children scheduled inside a handler) and
-- tm_schedule_waiting (tasks with dependsOn, joins), which before it also take the new tasks'
-- concurrency keys (c_concurrency_key, docs/flow-control.md), passed on to tm_insert_tasks (007).
-- Their bodies are those of 007 (tm_insert_tasks) and 005 otherwise. The old signatures are dropped
-- first: an overload with more defaulted parameters would make every existing call ambiguous.
-- tm_schedule_keyed (008) calls tm_insert_tasks with named trailing arguments and keeps working (its
-- tasks get no trace context).
drop function tm_insert_tasks(uuid[], text[], uuid[], timestamptz[], boolean[], uuid[], text[], text[], boolean[],
  bytea[], integer[], float8[], timestamptz[], text[], uuid[], uuid[], text[]);
-- As in 007, with the trace context of the new tasks (c_traceparent, parallel to c_id).
create function tm_insert_tasks(
  c_id uuid[], c_name text[], c_workflow_id uuid[], c_wca timestamptz[], c_lookup boolean[], c_parent_id uuid[],
  c_affinity_group text[], c_affinity text[], c_strict boolean[], c_message bytea[], c_priority integer[],
  c_delay_ms float8[], c_run_at timestamptz[], c_state text[], p_joins uuid[] default '{}', p_parents uuid[] default null,
  c_concurrency_key text[] default null, c_traceparent text[] default null
) returns setof uuid
language plpgsql set plan_cache_mode = force_custom_plan as $$
begin
  return query
    insert into tm_tasks (id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
      strict_affinity, message, priority, not_before, state, is_join, concurrency_key, traceparent)
    select u.id, u.name, u.workflow_id,
      coalesce(u.wca, case when u.lookup then (select min(w.workflow_created_at) from tm_tasks w
        where w.workflow_id = u.workflow_id) end, now()),
      u.parent_id, u.affinity_group, u.affinity, u.strict, u.message, u.priority,
      coalesce(u.run_at, now() + u.delay_ms * interval '1 millisecond'), u.state, u.id = any(p_joins),
      coalesce(u.concurrency_key, ''), u.traceparent
    from unnest(c_id, c_name, c_workflow_id, c_wca, c_lookup, c_parent_id, c_affinity_group, c_affinity,
      c_strict, c_message, c_priority, c_delay_ms, c_run_at, c_state, c_concurrency_key, c_traceparent)
      as u(id, name, workflow_id, wca, lookup, parent_id, affinity_group, affinity, strict, message, priority,
        delay_ms, run_at, state, concurrency_key, traceparent)
    where p_parents is null or u.parent_id = any(p_parents)
    returning tm_tasks.id;
end $$;

drop function tm_complete(uuid, uuid[], integer[], bytea[], uuid[], text[], uuid[], timestamptz[], boolean[], uuid[],
  text[], text[], boolean[], bytea[], integer[], float8[], timestamptz[], text[], uuid[], uuid[], uuid[], text[], bytea[]);
-- As in 005, with the children's concurrency keys and trace context.
create function tm_complete(
  p_node uuid, p_ids uuid[], p_assignments integer[], p_results bytea[],
  -- children (same columns as the schedule insert)
  c_id uuid[], c_name text[], c_workflow_id uuid[], c_wca timestamptz[], c_lookup boolean[], c_parent_id uuid[],
  c_affinity_group text[], c_affinity text[], c_strict boolean[], c_message bytea[], c_priority integer[],
  c_delay_ms float8[], c_run_at timestamptz[], c_state text[],
  -- waits declared by the children (joins over siblings)
  w_task uuid[], w_for uuid[],
  -- join messages: sender, join task name, payload
  m_from uuid[], m_join_name text[], m_payload bytea[],
  -- the children's concurrency keys (parallel to c_id; null: none)
  c_concurrency_key text[] default null,
  -- the children's trace context (W3C traceparent, parallel to c_id; null: none)
  c_traceparent text[] default null
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
      c_strict, c_message, c_priority, c_delay_ms, c_run_at, c_state, w_task, v_ids, c_concurrency_key,
      c_traceparent) k;

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

drop function tm_schedule_waiting(uuid[], text[], uuid[], timestamptz[], boolean[], uuid[], text[], text[], boolean[],
  bytea[], integer[], float8[], timestamptz[], text[], uuid[], uuid[], text[]);
-- As in 005, with the new tasks' concurrency keys and trace context.
create function tm_schedule_waiting(
  c_id uuid[], c_name text[], c_workflow_id uuid[], c_wca timestamptz[], c_lookup boolean[], c_parent_id uuid[],
  c_affinity_group text[], c_affinity text[], c_strict boolean[], c_message bytea[], c_priority integer[],
  c_delay_ms float8[], c_run_at timestamptz[], c_state text[],
  w_task uuid[], w_for uuid[], w_kind text[], c_concurrency_key text[] default null,
  c_traceparent text[] default null
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
    array(select j.task from unnest(w_task, w_kind) as j(task, kind) where j.kind = 'j'), null, c_concurrency_key,
    c_traceparent);

  insert into tm_task_waits (task_id, waits_for, kind, direct)
  select distinct on (w.task, w.waits_for) w.task, w.waits_for, w.kind, true
  from unnest(w_task, w_for, w_kind) as w(task, waits_for, kind)
  where exists (select 1 from tm_tasks t where t.id = w.waits_for);

  update tm_tasks t set state = 'ready'
  where t.id = any(c_id) and not exists (select 1 from tm_task_waits w where w.task_id = t.id);
  perform tm_wake_planner();
end $$;
