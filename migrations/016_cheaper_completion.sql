-- A completion costs PostgreSQL less: its tasks end in one statement, its statements are planned once
-- per session, and its fenced lookups go by primary key.
--
-- Measured with `npx tsx bench/completion.ts` (one session completes 20,000 running flat tasks with
-- tm_complete in batches of 10, 100 and 500; the figure is the server process's CPU per task, read from
-- /proc), Debian PostgreSQL 15, before -> after: batches of 10 105 -> 48 µs, of 100 21 -> 17 µs, of
-- 500 30 -> 14 µs. Where it went (pg_stat_statements on bench:workflow and on that bench):
--
-- 1. Planning. These functions ran with plan_cache_mode = force_custom_plan, so every statement of every
--    call was planned again: about 0.3 ms a call, more than executing a batch of 10. A cached generic plan
--    had been ruled out (migration 002) because, cached while tm_tasks was small, it kept scanning it
--    sequentially once it had grown (a 500-task completion 10x slower). The hot functions (tm_complete,
--    tm_move_to_history, tm_after_end, tm_fail, tm_insert_tasks) now use generic plans with
--    enable_seqscan = off: every statement of theirs finds its rows through an index (the primary key,
--    the waits' and join messages' indexes, a partial index by state), and with sequential scans priced
--    out a plan made while a table was small cannot go on scanning it whole. tm_cancel,
--    tm_schedule_waiting and tm_schedule_keyed, rarer and with more varied statements, keep custom plans.
--    One statement was written so that a generic plan drives it from the batch: the waits a join gains
--    on a completed task's children are found from each child (unnest, then an index probe by the
--    parent), not by probing the waits for the whole batch once per child.
-- 2. One move instead of a lock and a move. tm_complete locked the rows its node still held (a fenced
--    select ... for update), then moved them with tm_move_to_history: each row's tuple was written
--    twice, and the cancelled and the completed rows took a call each. tm_move_to_history now takes an
--    optional fence (the node and each row's assignment): its delete keeps only the rows the node holds
--    at that assignment and running (a concurrent change, a cancellation request or a reassignment, is
--    re-checked on the row's newest version as the lock did), and a row whose cancellation was requested
--    ends 'cancelled' with the error 'cancelled while running' and no result. It returns each row's end
--    state. The other callers pass no fence and move as before.
--
-- Semantics of tm_complete, tm_after_end, tm_fail and tm_insert_tasks are those of migrations 010 and
-- 013, unchanged.

-- The fence no longer lets the planner drive a fenced statement by tm_tasks_node. Every fenced
-- statement finds its rows by id, but with the node's held rows under-estimated (statistics taken
-- while the node held few), the planner chose a bitmap scan of every row the node holds and joined the
-- batch in a nested loop: auto_explain showed 305 rows read and 9,728 pairs compared for a batch of
-- 32 (2.5 ms). The node is now compared with IS NOT DISTINCT FROM, the same test for the node given
-- (p_node is never null) but not an index condition, so the ids alone (the primary key) find the rows.
create or replace function tm_fenced(t tm_tasks, p_node uuid, p_assignment integer) returns boolean
language sql immutable as $$
  select p_node is not null and t.node_id is not distinct from p_node and t.assignment = p_assignment
    and t.state = 'running'
$$;

drop function tm_move_to_history(uuid[], text[], bytea[], text[], integer);
create function tm_move_to_history(
  p_ids uuid[], p_states text[], p_results bytea[], p_errors text[], p_attempted integer,
  p_node uuid default null, p_assignments integer[] default null
) returns table (id uuid, name text, state text)
language plpgsql set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
#variable_conflict use_column
begin
  if coalesce(cardinality(p_ids), 0) = 0 then
    return;
  end if;
  return query
    with m as (
      select * from unnest(p_ids, p_states, p_results, p_errors, p_assignments)
        as m(id, state, result, error, assignment)),
    gone as (
      delete from tm_tasks t using m
      where t.id = m.id and (p_node is null or tm_fenced(t, p_node, m.assignment))
      returning t.id, t.name, t.workflow_id, t.parent_id, t.attempt, t.created_at,
        p_node is not null and t.cancel_requested as cancelled, m.state, m.result, m.error),
    ended as (
      select g.id, g.name, g.workflow_id, g.parent_id, g.attempt, g.created_at,
        case when g.cancelled then 'cancelled' else g.state end as state,
        case when g.cancelled then null else g.result end as result,
        case when g.cancelled then 'cancelled while running' else g.error end as error
      from gone g),
    hist as (
      insert into tm_history (id, name, workflow_id, parent_id, state, result, error, attempts, created_at)
      select e.id, e.name, e.workflow_id, e.parent_id, e.state, e.result, e.error, e.attempt + p_attempted,
        e.created_at
      from ended e)
    select e.id, e.name, e.state from ended e;
end $$;

-- As in 010, its tasks ended by one fenced tm_move_to_history.
create or replace function tm_complete(
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
language plpgsql set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
#variable_conflict use_column
declare
  v_ids uuid[];
  v_names text[];
  v_children uuid[];
  v_cancelled uuid[];
  v_cancelled_names text[];
begin
  -- The rows this node still holds end in one fenced move: completed, or cancelled (nothing it
  -- scheduled or sent is kept) when its cancellation was requested before this commit.
  select coalesce(array_agg(h.id) filter (where h.state = 'completed'), '{}'),
    coalesce(array_agg(h.name) filter (where h.state = 'completed'), '{}'),
    coalesce(array_agg(h.id) filter (where h.state = 'cancelled'), '{}'),
    coalesce(array_agg(h.name) filter (where h.state = 'cancelled'), '{}')
  into v_ids, v_names, v_cancelled, v_cancelled_names
  from tm_move_to_history(p_ids, array_fill('completed'::text, array[cardinality(p_ids)]), p_results, null, 1,
    p_node, p_assignments) h;

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
    from unnest(c_id, c_parent_id) as k(id, parent_id)
    join tm_task_waits w on w.waits_for = k.parent_id and w.kind = 'j'
    where k.parent_id = any(v_ids) and k.id = any(v_children)
    on conflict do nothing;
  end if;

  -- Results of tasks a join listed, and messages sent to joins waiting on the sender.
  insert into tm_join_messages (join_id, from_task, kind, payload)
  select w.task_id, r.id, 'r', r.result
  from unnest(p_ids, p_results) as r(id, result)
  join unnest(v_ids) as d(id) on d.id = r.id
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
    select d.id, d.name, 'completed'::text from unnest(v_ids, v_names) as d(id, name)
    union all
    select x.id, x.name, 'cancelled'::text from unnest(v_cancelled, v_cancelled_names) as x(id, name);
end $$;

alter function tm_after_end(uuid[], uuid[]) set plan_cache_mode = force_generic_plan;
alter function tm_after_end(uuid[], uuid[]) set enable_seqscan = off;
alter function tm_fail(uuid, uuid[], integer[], text[], float8[], boolean[], boolean[])
  set plan_cache_mode = force_generic_plan;
alter function tm_fail(uuid, uuid[], integer[], text[], float8[], boolean[], boolean[]) set enable_seqscan = off;
alter function tm_insert_tasks(uuid[], text[], uuid[], timestamptz[], boolean[], uuid[], text[], text[], boolean[],
  bytea[], integer[], float8[], timestamptz[], text[], uuid[], uuid[], text[], text[])
  set plan_cache_mode = force_generic_plan;
alter function tm_insert_tasks(uuid[], text[], uuid[], timestamptz[], boolean[], uuid[], text[], text[], boolean[],
  bytea[], integer[], float8[], timestamptz[], text[], uuid[], uuid[], text[], text[]) set enable_seqscan = off;
