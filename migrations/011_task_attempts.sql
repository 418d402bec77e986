-- Failed attempts that were retried, for the dashboard's task page (store/task-detail.ts): one row per
-- failed attempt that the retry policy rescheduled, with the node it ran on, when it started (the
-- assignment time) and ended, and its error. The row of the task keeps only its last error, and the
-- node and start of the attempt under way; history keeps the end and error of the last attempt.
--
-- Written by a trigger on the one statement that reschedules a failed attempt (tm_fail's retried
-- rows: `attempt` goes up, `node_id` is cleared), so no code path has to remember it and the success
-- path is untouched: a trigger with a column list fires only for UPDATEs that set `attempt`, which the
-- planner's assignments, a node's start and a completion never do. A requeued dead letter counts its
-- attempts from 1 again: rows are listed by their end time, not keyed by number. History retention
-- deletes the rows of tasks gone (store/history.ts purgeKeysAndProgress).
create table tm_task_attempts (
  task_id uuid not null,
  attempt integer not null,
  node_id uuid,
  started_at timestamptz,
  ended_at timestamptz not null default now(),
  error text
);
create index tm_task_attempts_task on tm_task_attempts (task_id, ended_at);
create index tm_task_attempts_ended on tm_task_attempts (ended_at);

create function tm_record_failed_attempt() returns trigger language plpgsql as $$
begin
  insert into tm_task_attempts (task_id, attempt, node_id, started_at, error)
  values (new.id, new.attempt, old.node_id, old.assigned_at, new.last_error);
  return null;
end $$;

create trigger tm_tasks_attempt_failed after update of attempt on tm_tasks
  for each row when (new.attempt > old.attempt) execute function tm_record_failed_attempt();
