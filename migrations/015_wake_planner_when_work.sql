-- The planner is woken only when there is something to plan.
--
-- Every completion batch (tm_complete), failure, cancel and suspension woke the planner, for the
-- capacity it frees and the tasks it may have made ready. On a node with nothing else queued that pass
-- finds nothing, and a task scheduled meanwhile waited for it to end and then for a pass of its own:
-- on the latency bench (tasks scheduled one at a time on an idle node) four passes in five started
-- from the previous task's completion and were still running when the next task's notification came.
--
-- tm_wake_planner(), which the functions above call after their changes (plain statements before
-- it, so it sees them), now notifies only when some task is ready (freed capacity or a freed affinity
-- key may let it run; a ready task delayed to a later time counts, as the pass decides), waiting (a
-- join or dependent the level-triggered promotion may release) or sleeping (a durable wait ending by
-- time). With none of those, no pass can plan anything: a task scheduled later wakes the planner
-- itself at its commit.
--
-- tm_notify_planner() notifies unconditionally. The runtime's own statements that insert tasks and wake
-- the planner in one statement (schedule, cron) and its wake-ups after a change in a statement of their
-- own (recovery, requeues, handing tasks back, the HTTP API's waker) use it: in one statement a check
-- would race the rows being inserted by that same statement.
create function tm_notify_planner() returns void
language sql as $$ select pg_notify(tm_planner_channel(), '') $$;

create or replace function tm_wake_planner() returns void
language plpgsql as $$
begin
  -- Each probe is one partial-index lookup (tm_tasks_ready, tm_tasks_waiting, tm_tasks_sleeping).
  if exists (select 1 from tm_tasks where state = 'ready')
     or exists (select 1 from tm_tasks where state = 'waiting')
     or exists (select 1 from tm_tasks where state = 'sleeping') then
    perform tm_notify_planner();
  end if;
end $$;
