/**
 * The planner's statements on tm_tasks, tm_nodes and tm_task_defs, run inside a planning pass's
 * transaction (planner/planner.ts): the cluster state, the claim of ready tasks and the assignment of
 * tasks to a node. An assignment is one statement per node with `id = any(...)`, an index scan:
 * joining an unnest of ids and nodes made PostgreSQL hash the whole hot table (36 ms of a 107 ms pass
 * for 2,000 tasks, measured). Four assignment statements, one per case, instead of one statement
 * built from flags: the planner's own node gets its tasks as 'running' with everything it needs to run
 * them (no fetch, no second write); another node gets them as 'assigned' and a NOTIFY; and with one
 * node and no cluster limit in play the claim and the assignment are a single statement (the latency
 * path of an idle cluster).
 */
import { NODE_CHANNEL } from './channels.ts';
import type { Queryable } from './queryable.ts';
import { FETCH_COLUMNS, toFetchedTask, type FetchedRow, type FetchedTask } from './tasks.ts';

/** Arbitrary constant shared by every taskmill process: the advisory lock key of a planning pass. */
export const PLANNER_LOCK_KEY = 7_300_416_002;

/**
 * Opens a pass's transaction and takes the planner's advisory lock (two nodes that both believe they
 * lead never plan at once); undefined when another pass holds it or the lease ran out. Begin, lock,
 * lease check and cluster state share one round trip. enable_sort off: the claim must walk the ready
 * index in priority order and stop at its LIMIT. The hot table's statistics lag behind its churn, and
 * with a low row estimate PostgreSQL would instead check the affinity rules of every ready row and
 * sort them (175 ms against 14 ms for 400 of 6,573 ready tasks in the workflow bench).
 *
 * The state (tm_pass_state, migrations/018) is live nodes with the tasks each holds, and the task
 * names with a cluster limit with their held count (one pass over the partial node index: only held
 * rows are read), and whether flow control is in play (a limit configured; a ready task with a
 * concurrency key, through the first entry of tm_tasks_ready_group past ''): two index probes. Only when
 * the lock and the lease hold, the same statement then promotes waiting tasks with nothing left to wait
 * for (when asked: `promote`, every PROMOTE_WAITING_EVERY_MS of planner.ts) and wakes the sleeping tasks
 * whose wait ended by time (tm_wake_sleeping, migrations/009: an index probe when none is due), before
 * the claim, so the claim that follows sees them ready.
 */
export async function beginPass(
  client: Queryable,
  pass: { leaseHolder?: string; nodeTimeoutMs: number; promote: boolean },
): Promise<ClusterState | undefined> {
  // The lease is checked in the pass's own transaction, by database time: a pass whose statements were
  // held up in the network (a black hole) and reach the server after its node's lease ran out plans
  // nothing. One that checked in time holds the lock, so the next leader's passes wait for it to end.
  // The node id (a UUID), the node timeout and the promote flag are inlined (checked here) so that the
  // whole opening stays one simple-protocol round trip.
  const { leaseHolder, nodeTimeoutMs, promote } = pass;
  if (leaseHolder !== undefined && !UUID.test(leaseHolder)) {
    throw new TypeError(`lease holder must be a UUID, got ${JSON.stringify(leaseHolder)}`);
  }
  if (!Number.isFinite(nodeTimeoutMs) || nodeTimeoutMs < 0) {
    throw new TypeError(`node timeout must be a number of milliseconds, got ${nodeTimeoutMs}`);
  }
  const holder = leaseHolder === undefined ? 'null' : `'${leaseHolder}'`;
  const results = (await client.query(
    `begin; set local enable_sort = off;
     select s.nodes, s.limits, s.flow_limited, s.keyed_ready,
       case when ${promote} then tm_promote_waiting(1000) end as promoted,
       tm_wake_sleeping(1000) as woken
     from tm_pass_state(${PLANNER_LOCK_KEY}, ${holder}, ${nodeTimeoutMs}) s`,
  )) as unknown as { rows: ClusterState[] }[];
  return results[2].rows[0];
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A ready task a claim locked, in priority order. */
export interface Candidate {
  id: string;
  name: string;
  affinity_group: string | null;
  affinity: string | null;
  /** '' when the task has none. */
  concurrency_key: string;
}

/** A live node as a pass sees it, with the tasks it holds (assigned or running). */
export interface LiveNode {
  id: string;
  capacity: number;
  task_names: string[];
  cpu: number;
  held: number;
}

/** A task name with a cluster limit, and how many of its tasks nodes hold. */
export interface ClusterLimit {
  name: string;
  max: number;
  held: number;
}

/** What a pass reads first (beginPass). */
export interface ClusterState {
  nodes: LiveNode[];
  limits: ClusterLimit[];
  /** A concurrency or rate limit is configured (tm_flow_limits, or a definition's options). */
  flow_limited: boolean;
  /** A ready task has a concurrency key. */
  keyed_ready: boolean;
}

/** Whether any task is ready (due or not): a pass that found no free slot tells a full cluster from an idle one. */
export async function anyTaskReady(client: Queryable): Promise<boolean> {
  const { rows } = await client.query<{ waiting: boolean }>(
    `select exists (select 1 from tm_tasks where state = 'ready') as waiting`,
  );
  return rows[0].waiting;
}

/** Claims (locks) up to `limit` ready tasks of the given names, skipping the names at their cluster limit. */
export async function claimReadyTasks(
  client: Queryable,
  limit: number,
  names: string[],
  saturated: string[],
): Promise<Candidate[]> {
  const { rows } = await client.query<Candidate>(CLAIM_READY_TASKS, [limit, names, saturated]);
  return rows;
}

/** Assigns the given tasks to another node and wakes it. Returns the ids assigned. */
export async function assignTasksToNode(client: Queryable, nodeId: string, ids: string[]): Promise<number> {
  const { rowCount } = await client.query(ASSIGN_TO_NODE, [ids, nodeId]);
  return rowCount ?? 0;
}

/** Gives the given tasks to the planner's own node, as running; returns them ready to run. */
export async function startTasksOnLocalNode(
  client: Queryable,
  nodeId: string,
  ids: string[],
): Promise<FetchedTask[]> {
  const { rows } = await client.query<FetchedRow>(START_ON_LOCAL_NODE, [ids, nodeId]);
  return rows.map(toFetchedTask);
}

/** Claims up to `limit` ready tasks and assigns them to another node in one statement, waking it. */
export async function claimForNode(
  client: Queryable,
  nodeId: string,
  limit: number,
  names: string[],
  saturated: string[],
): Promise<number> {
  const { rowCount } = await client.query(CLAIM_FOR_NODE, [limit, names, saturated, nodeId]);
  return rowCount ?? 0;
}

/** Claims up to `limit` ready tasks and starts them on the planner's own node in one statement. */
export async function claimForLocalNode(
  client: Queryable,
  nodeId: string,
  limit: number,
  names: string[],
  saturated: string[],
): Promise<FetchedTask[]> {
  const { rows } = await client.query<FetchedRow>(CLAIM_FOR_LOCAL_NODE, [limit, names, saturated, nodeId]);
  return rows.map(toFetchedTask);
}

const ASSIGN_TO_NODE = `
  with a as (
    update tm_tasks t set state = 'assigned', node_id = $2, assignment = t.assignment + 1, assigned_at = now()
    where t.id = any($1::uuid[])
    returning t.id)
  select a.id, pg_notify('${NODE_CHANNEL}', $2::text) from a`;

const START_ON_LOCAL_NODE = `
  update tm_tasks t set state = 'running', node_id = $2, assignment = t.assignment + 1, assigned_at = now()
  where t.id = any($1::uuid[])
  returning ${FETCH_COLUMNS}`;

/**
 * Ready tasks in priority order whose affinity key is free for them. A task with a key may run when
 * (3) no strict task of the key created before it is pending: for a strict task, any such task (strict
 * tasks of a key run in creation order, seq, whatever their workflows: workflow ids a caller chooses
 * need not sort by time, and workflows created in one transaction share their creation time); for a
 * task in workflow mode, one of its own or an older workflow (a newer workflow must not hold back an
 * older workflow's task created after it, e.g. a child, or each would wait for the other forever);
 * (2) no other workflow has a task of the key in flight (a workflow that reaches a key late waits for
 * the active one; for a strict task, no task of the key at all); and (1) no row of the key belongs to an
 * older workflow (for a strict task: no workflow-mode row, the strict ones being ordered by (3)).
 * Each check is its own EXISTS on its own index, so it stops at the first match rather than reading
 * every row of a busy key, and the CASE evaluates them in that order: (3) turns away every strict task
 * but the head of its key at once, so only the head may have to read past the strict rows in (1).
 * Rows locked by a concurrent completion or cancel are skipped, not waited for. AFFINITY_FREE is the
 * affinity rule alone, over a row `t` of tm_tasks, shared with the claim under flow control (store/flow.ts).
 */
export const AFFINITY_FREE = `(t.affinity is null or case
      when exists (
        select 1 from tm_tasks o
        where o.affinity_group = t.affinity_group and o.affinity = t.affinity and o.strict_affinity
          and o.seq < t.seq
          and (t.strict_affinity
            or (o.workflow_created_at, o.workflow_id) <= (t.workflow_created_at, t.workflow_id))) then false
      when exists (
        select 1 from tm_tasks o
        where o.affinity_group = t.affinity_group and o.affinity = t.affinity and o.node_id is not null
          and (t.strict_affinity or o.workflow_id <> t.workflow_id)) then false
      else not exists (
        select 1 from tm_tasks o
        where o.affinity_group = t.affinity_group and o.affinity = t.affinity
          and (o.workflow_created_at, o.workflow_id) < (t.workflow_created_at, t.workflow_id)
          and not (t.strict_affinity and o.strict_affinity))
      end)`;

export const CLAIM_READY_TASKS = `
  select t.id, t.name, t.affinity_group, t.affinity, t.concurrency_key
  from tm_tasks t
  where t.state = 'ready' and t.not_before <= now()
    and t.name = any($2::text[]) and not (t.name = any($3::text[]))
    and ${AFFINITY_FREE}
  order by t.priority desc, t.seq
  limit $1
  for update of t skip locked`;

const CLAIM_FOR_NODE = `
  with a as (
    update tm_tasks t set state = 'assigned', node_id = $4, assignment = t.assignment + 1, assigned_at = now()
    where t.id = any(array(select c.id from (${CLAIM_READY_TASKS}) c))
    returning t.id)
  select a.id, pg_notify('${NODE_CHANNEL}', $4::text) from a`;

const CLAIM_FOR_LOCAL_NODE = `
  update tm_tasks t set state = 'running', node_id = $4, assignment = t.assignment + 1, assigned_at = now()
  where t.id = any(array(select c.id from (${CLAIM_READY_TASKS}) c))
  returning ${FETCH_COLUMNS}`;
