-- The end of a task does less work when there is nothing to do (measured with pg_stat_statements on
-- bench:workflow --runtime-only, P = 100; results/pg-statements-2026-12-03.md):
--
-- 1. tm_move_to_history returns at once for an empty list. tm_complete moves the cancelled tasks of
--    every batch and tm_after_end the tasks a failed dependency broke, and both lists are nearly always
--    empty: two of every three calls planned and ran the delete/insert statement for no row.
-- 2. tm_after_end deletes the waits on the ended tasks in one statement instead of two (the waits of
--    joins and met dependencies, then the broken dependencies): every wait on an ended task ends either
--    way, and the rows say which kind they were. It moves broken dependents and promotes waiting tasks
--    only when there are some.
-- Semantics are those of migrations 002 and 005, unchanged.
create or replace function tm_move_to_history(
  p_ids uuid[], p_states text[], p_results bytea[], p_errors text[], p_attempted integer
) returns table (id uuid, name text)
language plpgsql set plan_cache_mode = force_custom_plan as $$
#variable_conflict use_column
begin
  if coalesce(cardinality(p_ids), 0) = 0 then
    return;
  end if;
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
    -- A join's wait ends however its task ended; a dependency's is met by success and broken otherwise.
    with gone as (
      delete from tm_task_waits w
      where w.waits_for = any(v_ended)
      returning w.task_id, w.waits_for, w.kind = 'd' and not (w.waits_for = any(v_succeeded)) as broken),
    b as (select distinct on (g.task_id) g.task_id, g.waits_for from gone g where g.broken)
    select coalesce((select array_agg(distinct g.task_id) from gone g where not g.broken), '{}'),
      coalesce(array_agg(b.task_id), '{}'),
      coalesce(array_agg('DependencyFailed: dependency ' || b.waits_for || ' did not complete successfully'), '{}')
    into v_affected, v_broken, v_errors from b;

    v_failed := '{}';
    if cardinality(v_broken) > 0 then
      select coalesce(array_agg(h.id), '{}') into v_failed
      from tm_move_to_history(v_broken, array_fill('failed'::text, array[cardinality(v_broken)]), null, v_errors, 0) h;
    end if;

    if cardinality(v_affected) > 0 then
      update tm_tasks t set state = 'ready', not_before = greatest(t.not_before, now())
      where t.id = any(v_affected) and t.state = 'waiting'
        and not exists (select 1 from tm_task_waits w where w.task_id = t.id);
    end if;

    delete from tm_join_messages where join_id = any(v_ended);
    v_ended := v_failed;
    v_succeeded := '{}';
  end loop;
end $$;
