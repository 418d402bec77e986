-- Statements the runtime runs on every planner pass or exactly-once attempt are planned once per
-- session instead of on every call.
--
-- pg_stat_statements on bench:workflow (P = 100, 12,201 tasks; results/pg-statements-2026-12-03.md)
-- showed planning as the larger part of these calls: tm_wake_sleeping's claim of due rows 0.75 ms of
-- planning a pass (and 0.02 ms of execution), and the exactly-once fence lock 0.25 ms of planning for
-- 0.08 ms of execution, 1,200 times a run. A SQL function (tm_wake_sleeping) is planned on every call;
-- a statement sent by node-postgres
-- without a name is planned on every execution (the runtime names none, so that it runs through
-- PgBouncer in transaction mode), and inlining tm_fenced into it parses that function again each time.
--
-- tm_wake_sleeping becomes PL/pgSQL, and the fence lock becomes tm_lock_held(): their statements are
-- prepared once per session with generic plans, and with sequential scans priced out (as in migration
-- 016) each finds its rows through its index (tm_tasks_sleeping, the primary key). Semantics unchanged
-- (migration 009, store/tasks.ts lockHeldTask).
--
-- tm_promote_waiting stays as it is: with a generic plan its anti-join to the waits read the whole
-- waits index (5.4 ms a call against 2.3-3.7 ms planned each time).
create or replace function tm_wake_sleeping(p_limit integer) returns integer
language plpgsql set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
declare
  v_woken integer;
begin
  with due as (
    select t.id from tm_tasks t where t.state = 'sleeping' and t.not_before <= now()
    order by t.not_before limit p_limit for update skip locked),
  timed_out as (
    update tm_task_steps s set kind = 'timeout' from due where s.task_id = due.id and s.kind = 'wait'),
  woke as (update tm_tasks t set state = 'ready' from due where t.id = due.id returning t.id)
  select count(*)::int into v_woken from woke;
  return v_woken;
end $$;

-- Exactly-once: locks the task (FOR KEY SHARE) for the caller's transaction if it is still running on
-- p_node under p_assignment (tm_fenced), and says whether it is.
create function tm_lock_held(p_id uuid, p_node uuid, p_assignment integer) returns boolean
language plpgsql set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
begin
  perform 1 from tm_tasks t where t.id = p_id and tm_fenced(t, p_node, p_assignment) for key share;
  return found;
end $$;
