-- The cluster state a planner pass reads first is planned once per session.
--
-- Every pass opened with one multi-statement round trip whose last statement read the live nodes with
-- the tasks each holds, the cluster limits, and whether flow control is in play. Sent as a simple query
-- it was planned on every pass: EXPLAIN (ANALYZE, SUMMARY) on the embedded PostgreSQL 18 gave 0.25-0.45
-- ms of planning against 0.15 ms of execution, once per pass (and a pass runs after nearly every
-- completion commit). As a PL/pgSQL function its statement is prepared once per session, with a generic
-- plan, sequential scans priced out (as in migrations 016 and 017: a plan made while tm_tasks was small
-- must not go on reading it whole) and JIT off (a disabled sequential scan on a table with no index to
-- use instead would add PostgreSQL 15's disable_cost to the plan and set off JIT compilation every
-- time).
--
-- Semantics unchanged (store/assignments.ts beginPass): the pass's advisory lock (p_lock_key) and the
-- lease check by database time come first; when either fails, no row, and the caller's statement
-- promotes and wakes nothing. Held tasks are counted once (the `held` CTE): with tm_nodes and
-- tm_task_defs not yet analyzed, subqueries per node and per definition were costed past
-- jit_above_cost.
create function tm_pass_state(p_lock_key bigint, p_lease_holder uuid, p_node_timeout_ms double precision)
returns table (nodes json, limits json, flow_limited boolean, keyed_ready boolean)
language plpgsql
set plan_cache_mode = force_generic_plan set enable_seqscan = off set jit = off as $$
begin
  if not pg_try_advisory_xact_lock(p_lock_key) then return; end if;
  if p_lease_holder is not null
     and not exists (select 1 from tm_leader l where l.node_id = p_lease_holder and l.expires_at > now()) then
    return;
  end if;
  return query
  with held as (
    select t.node_id, t.name, count(*)::int as n from tm_tasks t where t.node_id is not null group by 1, 2)
  select
    (select coalesce(json_agg(json_build_object('id', n.id, 'capacity', n.capacity, 'task_names', n.task_names,
        'cpu', n.cpu, 'held', coalesce((select sum(h.n) from held h where h.node_id = n.id), 0))), '[]')
      from tm_nodes n where n.heartbeat_at > now() - p_node_timeout_ms * interval '1 millisecond'),
    (select coalesce(json_agg(json_build_object('name', d.name, 'max', d.max_parallel_in_cluster,
        'held', coalesce((select sum(h.n) from held h where h.name = d.name), 0))), '[]')
      from tm_task_defs d where d.max_parallel_in_cluster is not null),
    exists (select 1 from tm_flow_limits)
      or exists (select 1 from tm_task_defs d
        where d.options->'concurrency' is not null or d.options->'rateLimit' is not null),
    exists (select 1 from tm_tasks t where t.state = 'ready' and t.concurrency_key > '');
end $$;
