-- Flow control decided by the planner's claim from rows (planner/flow.ts, store/flow.ts): concurrency
-- groups, rate limits and fairness across keys.
--
-- A task's concurrency key (the schedule's `concurrencyKey`, e.g. a tenant) is a column of the hot
-- table; '' means none (a schedule refuses an empty key). Limits come from two places, both rows:
--   * the task definitions' options in tm_task_defs (`concurrency: { limit }`, `rateLimit: { limit,
--     windowMs }`): per task name and key, tasks without a key sharing one group;
--   * tm_flow_limits, set by client.setConcurrencyLimit() / setRateLimit(): per key across task
--     names, for every key a pattern matches (`*` matches any run of characters; the most specific
--     pattern applies: the key itself, else the longest pattern). Tasks without a key are never matched.
-- Running tasks are the rows with a node (assigned or running); starts are logged in tm_flow_starts
-- in the transaction that assigns them, so a planner after a failover counts what its predecessor
-- started, and the passes, serialized by the planner's advisory lock, never start more than allowed.
alter table tm_tasks add column concurrency_key text not null default '';

-- The claim's loose index scan over the (key, task name) groups of ready tasks, and each group's
-- tasks in priority order.
create index tm_tasks_ready_group on tm_tasks (concurrency_key, name, priority desc, seq) where state = 'ready';
-- Running tasks per key (and per key and name) for the concurrency limits.
create index tm_tasks_group_held on tm_tasks (concurrency_key, name) where node_id is not null;

create table tm_flow_limits (
  pattern text primary key check (pattern <> ''),
  -- The pattern as a LIKE pattern: `*` -> `%`, the LIKE wildcards and escape of the pattern escaped.
  like_pattern text not null,
  concurrency integer check (concurrency >= 1),
  rate integer check (rate >= 1),
  rate_window_ms integer check (rate_window_ms >= 1),
  updated_at timestamptz not null default now(),
  check ((rate is null) = (rate_window_ms is null))
);

-- The sliding log of starts of rate-limited groups: one row per start, kept for the longest window.
create table tm_flow_starts (
  concurrency_key text not null,
  name text not null,
  started_at timestamptz not null
);
create index tm_flow_starts_group on tm_flow_starts (concurrency_key, name, started_at);
create index tm_flow_starts_at on tm_flow_starts (started_at);

-- tm_insert_tasks (005) with one more, last, parameter: the concurrency keys of the new tasks
-- (c_concurrency_key, parallel to c_id; null or a null entry: no key). The body is 005's with the
-- column added. The old signature is dropped first: a second overload with a defaulted parameter would
-- make every existing call ambiguous. tm_complete and tm_schedule_waiting call it positionally with
-- 16 arguments and keep working (their tasks get no key).
drop function tm_insert_tasks(uuid[], text[], uuid[], timestamptz[], boolean[], uuid[], text[], text[], boolean[],
  bytea[], integer[], float8[], timestamptz[], text[], uuid[], uuid[]);
create function tm_insert_tasks(
  c_id uuid[], c_name text[], c_workflow_id uuid[], c_wca timestamptz[], c_lookup boolean[], c_parent_id uuid[],
  c_affinity_group text[], c_affinity text[], c_strict boolean[], c_message bytea[], c_priority integer[],
  c_delay_ms float8[], c_run_at timestamptz[], c_state text[], p_joins uuid[] default '{}', p_parents uuid[] default null,
  c_concurrency_key text[] default null
) returns setof uuid
language plpgsql set plan_cache_mode = force_custom_plan as $$
begin
  return query
    insert into tm_tasks (id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
      strict_affinity, message, priority, not_before, state, is_join, concurrency_key)
    select u.id, u.name, u.workflow_id,
      coalesce(u.wca, case when u.lookup then (select min(w.workflow_created_at) from tm_tasks w
        where w.workflow_id = u.workflow_id) end, now()),
      u.parent_id, u.affinity_group, u.affinity, u.strict, u.message, u.priority,
      coalesce(u.run_at, now() + u.delay_ms * interval '1 millisecond'), u.state, u.id = any(p_joins),
      coalesce(u.concurrency_key, '')
    from unnest(c_id, c_name, c_workflow_id, c_wca, c_lookup, c_parent_id, c_affinity_group, c_affinity,
      c_strict, c_message, c_priority, c_delay_ms, c_run_at, c_state, c_concurrency_key)
      as u(id, name, workflow_id, wca, lookup, parent_id, affinity_group, affinity, strict, message, priority,
        delay_ms, run_at, state, concurrency_key)
    where p_parents is null or u.parent_id = any(p_parents)
    returning tm_tasks.id;
end $$;
