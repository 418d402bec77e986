/**
 * Statements of dead-node recovery (planner/maintenance.ts recoverDeadNodes), run in one transaction:
 * the tasks held by nodes that are no longer alive, locked, and the hand-back of those never fetched.
 * Running ones are charged an attempt through failTasks (store/tasks.ts, tm_fail).
 */
import type { Queryable } from './queryable.ts';

/** A task a dead node held, with what its retry decision needs. */
export interface HeldTask {
  id: string;
  nodeId: string;
  state: 'assigned' | 'running';
  assignment: number;
  attempt: number;
  /** How long ago the task was created (its retry policy's maxDurationMs counts from then). */
  failingMs: number;
  options: { retry?: unknown; deadLetter?: unknown } | null;
}

/**
 * Locks the tasks held by the given (just removed) nodes or by any node without a row, with their
 * definition's options (null for a definition unknown to the database). A row locked elsewhere is
 * skipped, not waited for: an exactly-once task's own transaction holds its row until it commits or
 * rolls back, and from a node cut off mid-task that takes until the server ends the session
 * (network.exactlyOnceIdleTimeoutMs); recovery of everything else goes on, and a later pass takes the
 * task back (its node has no row by then) unless that transaction committed it.
 */
export async function lockTasksOfDeadNodes(client: Queryable, deadNodeIds: string[]): Promise<HeldTask[]> {
  const { rows } = await client.query<HeldTask>(
    `select t.id, t.node_id as "nodeId", t.state, t.assignment, t.attempt,
       (extract(epoch from now() - t.created_at) * 1000)::float8 as "failingMs", d.options
     from tm_tasks t left join tm_task_defs d on d.name = t.name
     where t.node_id is not null
       and (t.node_id = any($1) or not exists (select 1 from tm_nodes n where n.id = t.node_id))
     order by t.id
     for update of t skip locked`,
    [deadNodeIds],
  );
  return rows;
}

/** Back to ready, uncharged: tasks assigned to a node that never fetched them. */
export async function handBackTasks(client: Queryable, ids: string[]): Promise<void> {
  await client.query(`update tm_tasks set state = 'ready', node_id = null where id = any($1)`, [ids]);
}
