-- Cron: one row per task definition that has a cron option, written by the nodes that register it.
--   last_slot: every slot up to and including this time has been handled (an instance created, or
--              skipped as missed). The leader moves it forward with a compare-and-set in the same
--              statement that inserts the instances (`where last_slot < <first slot handled>`), so no
--              slot can ever be handled twice, whatever the number of leaders racing or failovers.
--              Set to the registration time when the cron is first registered.
create table tm_cron (
  name text primary key references tm_task_defs (name) on delete cascade,
  expression text not null,
  timezone text not null,
  missed text not null check (missed in ('run-once', 'skip')),
  last_slot timestamptz not null,
  last_task_id uuid,
  registered_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
