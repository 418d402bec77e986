-- Connection budgets and transaction-mode poolers (docs/connections.md).

-- Each node reports, with its heartbeat, the connections it has open and its budget (maxConnections).
-- Null: a node of an earlier release, which does not report them.
alter table tm_nodes add column connections integer, add column max_connections integer;

-- Named leases of cluster-wide chores that must never run twice at once, for the chores that span
-- several transactions (history partition management). A session advisory lock would do on a direct
-- connection, but through a pooler in transaction mode (PgBouncer) a session lock stays on whichever
-- server connection took it, and the unlock may run on another: a row with an expiry (database time)
-- works on any connection, and a holder that died frees it when it expires.
create table tm_locks (
  name text primary key,
  holder uuid not null,
  expires_at timestamptz not null
);

-- One task wherever it is (store/tasks.ts findTask). Planning this statement over every history
-- partition costs more than running it; it was a named (prepared) statement, which a pooler in
-- transaction mode cannot carry (PgBouncer before 1.21 has no prepared statements there). A plpgsql
-- function caches its plan in the server session instead, whatever connection the client came through.
create function tm_find_task(p_id uuid) returns table (
  id uuid, name text, state text, workflow_id uuid, parent_id uuid, attempts integer, node_id uuid,
  not_before timestamptz, created_at timestamptz, finished_at timestamptz, result bytea, error text,
  progress jsonb
) language plpgsql stable as $$
#variable_conflict use_column
begin
  return query
    select a.id, a.name, a.state, a.workflow_id, a.parent_id, a.attempts, a.node_id, a.not_before,
      a.created_at, a.finished_at, a.result, a.error,
      (select p.value from tm_task_progress p where p.task_id = p_id)
    from tm_any_task a where a.id = p_id;
end $$;
