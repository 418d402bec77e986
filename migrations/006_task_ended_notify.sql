-- A task that ends (its row reaches tm_history as completed, failed or cancelled, or tm_dead_letters)
-- is announced on the channel `taskmill_task_ended` (TASK_ENDED_CHANNEL in store/channels.ts),
-- which TaskmillClient.waitForTask() listens on. Every path that ends a task (tm_complete, tm_fail,
-- tm_cancel, tm_after_end, the planner's dependency failures) inserts into one of these two tables, so
-- a trigger on each covers them all, whichever statement wrote the row.
--
-- Statement-level with a transition table: a completer batch of N tasks costs one trigger call and
-- ceil(N / 200) notifications, not N. A payload holds up to 200 comma-separated ids (37 bytes each,
-- under the 8,000-byte payload limit). Notifications are sent at commit, so a listener that hears an
-- id can read the ended row.
create function tm_notify_task_ended() returns trigger language plpgsql as $$
begin
  perform pg_notify('taskmill_task_ended', string_agg(id::text, ','))
  from (select id, (row_number() over () - 1) / 200 as chunk from ended) numbered
  group by chunk;
  return null;
end $$;

create trigger tm_history_task_ended after insert on tm_history
  referencing new table as ended for each statement execute function tm_notify_task_ended();

create trigger tm_dead_letters_task_ended after insert on tm_dead_letters
  referencing new table as ended for each statement execute function tm_notify_task_ended();
