/**
 * Inserts rows in any state, so tests can write the situation they need (a crashed node's tasks, an
 * older workflow holding a key, a strict key with its head in flight) and call a component's
 * `runOnce()` on it. Times are relative to database time (`now()`), never to the local clock.
 */
import type pg from 'pg';
import { v4 as uuidv4, v7 as uuidv7 } from 'uuid';
import { encode } from '../../task/codec.ts';
import { Planner, type PlannerOptions } from '../../planner/planner.ts';

type Db = Pick<pg.Pool, 'query'>;

export type TaskRowState = 'ready' | 'assigned' | 'running' | 'waiting' | 'sleeping';

export interface TaskRow {
  id?: string;
  name?: string;
  state?: TaskRowState;
  /** Node holding the task; defaults to none for ready/waiting rows. */
  nodeId?: string | null;
  /** Assignment number (fencing token). */
  assignment?: number;
  attempt?: number;
  workflowId?: string;
  /**
   * Milliseconds before database now() at which the workflow was created (default 0: now()). Ignored
   * when rows of the workflow exist: a workflow has one creation time, taken from them.
   */
  workflowCreatedAgoMs?: number;
  /** Exact workflow creation time; wins over workflowCreatedAgoMs. */
  workflowCreatedAt?: Date;
  parentId?: string | null;
  affinityGroup?: string | null;
  affinity?: string | null;
  strict?: boolean;
  message?: unknown;
  priority?: number;
  /** Milliseconds from database now() before which the task must not run (negative: in the past). */
  notBeforeInMs?: number;
  /** Exact not-before time; wins over notBeforeInMs. */
  notBefore?: Date;
  /** How long ago (database time) it was assigned; only for rows held by a node. */
  assignedAgoMs?: number;
}

export interface InsertedTask {
  id: string;
  workflowId: string;
  seq: number;
}

/** Inserts one tm_tasks row; the defaults describe a ready, keyless `noop` task. */
export async function insertTask(db: Db, row: TaskRow = {}): Promise<InsertedTask> {
  const [task] = await insertTasks(db, [row]);
  return task;
}

/** Inserts rows in the order given (their `seq`, the creation order, follows it). */
export async function insertTasks(db: Db, rows: TaskRow[]): Promise<InsertedTask[]> {
  const out: InsertedTask[] = [];
  for (const row of rows) {
    const state = row.state ?? 'ready';
    const held = state === 'assigned' || state === 'running';
    if (held && !row.nodeId) throw new Error(`insertTask: a ${state} row needs a nodeId`);
    const affinity = row.affinity ?? null;
    const id = row.id ?? uuidv7();
    const workflowId = row.workflowId ?? uuidv7();
    const { rows: inserted } = await db.query<{ seq: string }>(
      `insert into tm_tasks (id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
         strict_affinity, message, priority, not_before, state, node_id, assignment, attempt, assigned_at)
       values ($1, $2, $3, coalesce($4::timestamptz,
           (select min(w.workflow_created_at) from tm_tasks w where w.workflow_id = $3),
           now() - $5 * interval '1 millisecond'), $6, $7, $8, $9, $10,
         $11, coalesce($12::timestamptz, now() + $13 * interval '1 millisecond'), $14, $15, $16, $17,
         case when $15::uuid is null then null else now() - $18 * interval '1 millisecond' end)
       returning seq`,
      [
        id,
        row.name ?? 'noop',
        workflowId,
        row.workflowCreatedAt ?? null,
        row.workflowCreatedAgoMs ?? 0,
        row.parentId ?? null,
        affinity === null ? null : (row.affinityGroup ?? ''),
        affinity,
        row.strict ?? false,
        encode(row.message),
        row.priority ?? 0,
        row.notBefore ?? null,
        row.notBeforeInMs ?? 0,
        state,
        row.nodeId ?? null,
        row.assignment ?? (held ? 1 : 0),
        row.attempt ?? 0,
        row.assignedAgoMs ?? 0,
      ],
    );
    out.push({ id, workflowId, seq: Number(inserted[0].seq) });
  }
  return out;
}

export interface NodeRow {
  id?: string;
  name?: string;
  /** How long ago (database time) the last heartbeat was (default 0: alive). */
  heartbeatAgoMs?: number;
  capacity?: number;
  taskNames?: string[];
  /** Reported CPU use, 0..1 of the machine. */
  cpu?: number;
}

/** Inserts one tm_nodes row; returns its id. */
export async function insertNode(db: Db, row: NodeRow = {}): Promise<string> {
  const id = row.id ?? uuidv4();
  await db.query(
    `insert into tm_nodes (id, name, capacity, task_names, cpu, heartbeat_at)
     values ($1, $2, $3, $4, $5, now() - $6 * interval '1 millisecond')`,
    [
      id,
      row.name ?? `node-${id.slice(0, 8)}`,
      row.capacity ?? 10,
      row.taskNames ?? ['noop'],
      row.cpu ?? 0,
      row.heartbeatAgoMs ?? 0,
    ],
  );
  return id;
}

/** Registers a task definition row (what a node does at start), e.g. with a cluster limit. */
export async function insertTaskDef(
  db: Db,
  name: string,
  options: { maxParallelInCluster?: number } = {},
): Promise<void> {
  await db.query(
    `insert into tm_task_defs (name, max_parallel_in_cluster, options) values ($1, $2, '{}'::jsonb)
     on conflict (name) do update set max_parallel_in_cluster = excluded.max_parallel_in_cluster`,
    [name, options.maxParallelInCluster ?? null],
  );
}

export interface TaskState {
  id: string;
  state: TaskRowState;
  nodeId: string | null;
  assignment: number;
  attempt: number;
}

/** The hot-table state of some tasks, by id (absent ids have left tm_tasks). */
export async function taskStates(db: Db, ids?: string[]): Promise<Map<string, TaskState>> {
  const { rows } = await db.query<TaskState>(
    `select id, state, node_id as "nodeId", assignment, attempt from tm_tasks
     where $1::uuid[] is null or id = any($1) order by seq`,
    [ids ?? null],
  );
  return new Map(rows.map((r) => [r.id, r]));
}

/** Ids of the tasks currently held by a node (assigned or running), in creation order. */
export async function heldIds(db: Db, nodeId?: string): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `select id from tm_tasks where state in ('assigned', 'running')
       and ($1::uuid is null or node_id = $1) order by seq`,
    [nodeId ?? null],
  );
  return rows.map((r) => r.id);
}

/** Ends tasks as a completion would (the row leaves the hot table). */
export async function removeTasks(db: Db, ids: string[]): Promise<void> {
  await db.query(`delete from tm_tasks where id = any($1)`, [ids]);
}

/** A planner on `db` that always leads and throws what it fails on, for tests that call runOnce(). */
export function leadingPlanner(db: pg.Pool, options: Partial<PlannerOptions> = {}): Planner {
  return new Planner({
    db,
    isLeader: () => true,
    onError: (error) => {
      throw error;
    },
    ...options,
  });
}
