-- Core schema: the hot task table, nodes, the leader lease, history and dead letters.

-- Hot table: only tasks that have not ended. Completed rows leave it (their outcome goes to
-- tm_history), so it stays small and its few partial indexes stay cheap to update.
--   state: ready    -> waiting for the planner (not_before may be in the future)
--          assigned -> the planner gave it to node_id, which has not fetched it yet
--          running  -> fetched by node_id (in its mailboxes or executing)
--          waiting  -> blocked on other tasks (join tasks, dependencies)
create table tm_tasks (
  id uuid primary key,
  seq bigint generated always as identity,
  name text not null,
  workflow_id uuid not null,
  workflow_created_at timestamptz not null,
  parent_id uuid,
  affinity_group text,
  affinity text,
  strict_affinity boolean not null default false,
  message bytea,
  priority integer not null default 0,
  not_before timestamptz not null default now(),
  state text not null default 'ready' check (state in ('ready', 'assigned', 'running', 'waiting')),
  node_id uuid,
  assignment integer not null default 0,
  attempt integer not null default 0,
  created_at timestamptz not null default now(),
  assigned_at timestamptz,
  last_error text,
  check ((affinity is null) = (affinity_group is null))
);

-- The planner's claim scans this in priority order; only ready rows are indexed.
create index tm_tasks_ready on tm_tasks (priority desc, seq) where state = 'ready';
-- A node's fetch and dead-node recovery look tasks up by node.
create index tm_tasks_node on tm_tasks (node_id) where node_id is not null;
-- Affinity checks of the claim, one index each so every check stops at its first match instead of
-- reading all rows of a key: an older workflow of the key, an in-flight task of the key, an older
-- strict task of the key.
create index tm_tasks_affinity on tm_tasks (affinity_group, affinity, workflow_created_at, workflow_id)
  where affinity is not null;
create index tm_tasks_affinity_held on tm_tasks (affinity_group, affinity, workflow_id)
  where affinity is not null and node_id is not null;
create index tm_tasks_affinity_strict on tm_tasks (affinity_group, affinity, seq) where strict_affinity;
create index tm_tasks_workflow on tm_tasks (workflow_id);

-- Live nodes. A node upserts its row on every heartbeat (database time); the planner treats a row
-- whose heartbeat is older than the node timeout as dead and takes its tasks back.
create table tm_nodes (
  id uuid primary key,
  name text not null,
  capacity integer not null,
  task_names text[] not null,
  in_flight integer not null default 0,
  cpu real not null default 0,
  started_at timestamptz not null default now(),
  heartbeat_at timestamptz not null default now()
);

-- The planner lease: at most one row, held by the leader until expires_at (database time).
create table tm_leader (
  id integer primary key default 1 check (id = 1),
  node_id uuid not null,
  acquired_at timestamptz not null default now(),
  expires_at timestamptz not null
);

-- Outcomes of ended tasks, kept for the configured retention.
create table tm_history (
  id uuid primary key,
  name text not null,
  workflow_id uuid not null,
  parent_id uuid,
  state text not null check (state in ('completed', 'failed', 'cancelled')),
  result bytea,
  error text,
  attempts integer not null,
  created_at timestamptz not null,
  finished_at timestamptz not null default now()
);
create index tm_history_finished on tm_history (finished_at);
create index tm_history_workflow on tm_history (workflow_id);

-- Tasks that failed every attempt (when the dead-letter table is enabled for their task).
create table tm_dead_letters (
  id uuid primary key,
  name text not null,
  workflow_id uuid not null,
  workflow_created_at timestamptz not null,
  parent_id uuid,
  affinity_group text,
  affinity text,
  strict_affinity boolean not null,
  message bytea,
  priority integer not null,
  attempts integer not null,
  error text,
  created_at timestamptz not null,
  failed_at timestamptz not null default now()
);
create index tm_dead_letters_failed on tm_dead_letters (failed_at);

-- Task definitions registered by the nodes that can run them: lets the planner apply per-task
-- cluster limits and lets callers that schedule by name (CLI, HTTP) check the name exists.
create table tm_task_defs (
  name text primary key,
  max_parallel_in_cluster integer,
  options jsonb not null,
  updated_at timestamptz not null default now()
);
