/**
 * Every statement the runtime runs on tm_tasks, tm_history and tm_dead_letters, named by what it
 * does. Many rows travel as parallel arrays through `unnest`, so a batch is one statement and one
 * round trip whatever its size. Completions are fenced: a row is changed only while it is still
 * assigned to the completing node under the same assignment number.
 */
import type pg from 'pg';
import type { NewTask } from './schedule-context.ts';

export type Queryable = Pick<pg.ClientBase, 'query'>;

/** Channel the planner listens on: new ready tasks or freed capacity. */
export const PLANNER_CHANNEL = 'taskmill_planner';
/** Channel nodes listen on: payload is the id of a node that has new assignments. */
export const NODE_CHANNEL = 'taskmill_node';

/** Multi-row insert of new tasks; wakes the planner (delivered at commit). */
export async function insertTasks(db: Queryable, tasks: NewTask[], notify = true): Promise<void> {
  if (tasks.length === 0) return;
  await db.query(
    INSERT_TASKS_SQL + (notify ? `, pg_notify('${PLANNER_CHANNEL}', '')` : ''),
    insertParams(tasks),
  );
}

export const INSERT_COLUMNS = `id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
  strict_affinity, message, priority, not_before, state`;

/** Selects the rows of unnest($1..$13) as tm_tasks columns; shared by schedule and completion. */
export const UNNEST_NEW_TASKS = `select u.id, u.name, u.workflow_id,
    coalesce(u.wca, case when u.lookup then (select min(w.workflow_created_at) from tm_tasks w
      where w.workflow_id = u.workflow_id) end, now()),
    u.parent_id, u.affinity_group, u.affinity, u.strict, u.message, u.priority,
    coalesce(u.run_at, now() + u.delay_ms * interval '1 millisecond'), u.state
  from unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::boolean[], $6::uuid[], $7::text[],
    $8::text[], $9::boolean[], $10::bytea[], $11::integer[], $12::float8[], $13::timestamptz[], $14::text[])
    as u(id, name, workflow_id, wca, lookup, parent_id, affinity_group, affinity, strict, message, priority,
      delay_ms, run_at, state)`;

const INSERT_TASKS_SQL = `with ins as (insert into tm_tasks (${INSERT_COLUMNS}) ${UNNEST_NEW_TASKS} returning 1)
  select count(*)::int as inserted from ins`;

export function insertParams(tasks: NewTask[]): unknown[] {
  const cols: unknown[][] = Array.from({ length: 14 }, () => new Array(tasks.length));
  tasks.forEach((t, i) => {
    cols[0][i] = t.id;
    cols[1][i] = t.name;
    cols[2][i] = t.workflowId;
    cols[3][i] = t.workflowCreatedAt;
    cols[4][i] = t.lookupWorkflow;
    cols[5][i] = t.parentId;
    cols[6][i] = t.affinityGroup;
    cols[7][i] = t.affinity;
    cols[8][i] = t.strict;
    cols[9][i] = Buffer.from(t.message.buffer, t.message.byteOffset, t.message.byteLength);
    cols[10][i] = t.priority;
    cols[11][i] = t.delayMs ?? 0;
    cols[12][i] = t.runAt;
    cols[13][i] = t.state;
  });
  return cols;
}

export interface FetchedTask {
  id: string;
  name: string;
  message: Buffer | null;
  attempt: number;
  assignment: number;
  workflow_id: string;
  workflow_created_at: Date;
  affinity_group: string | null;
  affinity: string | null;
  strict_affinity: boolean;
  parent_id: string | null;
  created_at: Date;
}

/** Takes every task assigned to the node (assigned -> running). */
export async function fetchAssignedTasks(db: Queryable, nodeId: string): Promise<FetchedTask[]> {
  const { rows } = await db.query<FetchedTask>(
    `update tm_tasks set state = 'running' where node_id = $1 and state = 'assigned'
     returning id, name, message, attempt, assignment, workflow_id, workflow_created_at, affinity_group,
       affinity, strict_affinity, parent_id, created_at`,
    [nodeId],
  );
  return rows;
}

export interface Success {
  id: string;
  assignment: number;
  result: Uint8Array | null;
  children: NewTask[];
}

/**
 * Completes tasks: fenced delete from the hot table, outcome into history, children inserted only for
 * parents whose completion was accepted. Returns the ids accepted.
 */
export interface Accepted {
  id: string;
  name: string;
  outcome: 'completed' | 'retried' | 'dead' | 'failed';
}

export async function completeTasks(db: Queryable, nodeId: string, done: Success[]): Promise<Accepted[]> {
  const children = done.flatMap((d) => d.children);
  const params = [
    ...insertParams(children),
    done.map((d) => d.id),
    done.map((d) => d.assignment),
    done.map((d) =>
      d.result ? Buffer.from(d.result.buffer, d.result.byteOffset, d.result.byteLength) : null,
    ),
    nodeId,
  ];
  const { rows } = await db.query<Accepted>(
    `with c as (select * from unnest($15::uuid[], $16::integer[], $17::bytea[]) as c(id, assignment, result)),
     done as (
       delete from tm_tasks t using c
       where t.id = c.id and t.assignment = c.assignment and t.node_id = $18 and t.state = 'running'
       returning t.id, t.name, t.workflow_id, t.parent_id, t.attempt, t.created_at, c.result),
     hist as (
       insert into tm_history (id, name, workflow_id, parent_id, state, result, attempts, created_at)
       select id, name, workflow_id, parent_id, 'completed', result, attempt + 1, created_at from done),
     kids as (
       insert into tm_tasks (${INSERT_COLUMNS})
       select * from (${UNNEST_NEW_TASKS}) k where k.parent_id in (select id from done))
     select id, name, 'completed' as outcome, pg_notify('${PLANNER_CHANNEL}', '') from done`,
    params,
  );
  return rows;
}

export interface Failure {
  id: string;
  assignment: number;
  error: string;
  /** Milliseconds until the next attempt; null: no retry (dead letter or failed). */
  retryDelayMs: number | null;
  deadLetter: boolean;
}

/** Fenced: reschedules retryable failures and ends the others (dead-letter table or history). */
export async function failTasks(db: Queryable, nodeId: string, failed: Failure[]): Promise<Accepted[]> {
  const { rows } = await db.query<Accepted>(
    `with f as (select * from unnest($1::uuid[], $2::integer[], $3::text[], $4::float8[], $5::boolean[])
       as f(id, assignment, error, retry_delay_ms, dead_letter)),
     retried as (
       update tm_tasks t set state = 'ready', node_id = null, attempt = t.attempt + 1, last_error = f.error,
         not_before = now() + f.retry_delay_ms * interval '1 millisecond'
       from f where t.id = f.id and t.assignment = f.assignment and t.node_id = $6 and t.state = 'running'
         and f.retry_delay_ms is not null
       returning t.id, t.name),
     ended as (
       delete from tm_tasks t using f
       where t.id = f.id and t.assignment = f.assignment and t.node_id = $6 and t.state = 'running'
         and f.retry_delay_ms is null
       returning t.*, f.error as final_error, f.dead_letter),
     dead as (
       insert into tm_dead_letters (id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity,
         strict_affinity, message, priority, attempts, error, created_at)
       select id, name, workflow_id, workflow_created_at, parent_id, affinity_group, affinity, strict_affinity,
         message, priority, attempt + 1, final_error, created_at from ended where dead_letter),
     hist as (
       insert into tm_history (id, name, workflow_id, parent_id, state, error, attempts, created_at)
       select id, name, workflow_id, parent_id, 'failed', final_error, attempt + 1, created_at
       from ended where not dead_letter)
     select id, name, 'retried' as outcome, pg_notify('${PLANNER_CHANNEL}', '') from retried
     union all select id, name, case when dead_letter then 'dead' else 'failed' end, null from ended`,
    [
      failed.map((f) => f.id),
      failed.map((f) => f.assignment),
      failed.map((f) => f.error),
      failed.map((f) => f.retryDelayMs),
      failed.map((f) => f.deadLetter),
      nodeId,
    ],
  );
  return rows;
}

/** Hands tasks a node holds back to the planner (shutdown, or a node that lost its registration). */
export async function releaseTasks(db: Queryable, nodeId: string, ids?: string[]): Promise<number> {
  const { rowCount } = await db.query(
    `update tm_tasks set state = 'ready', node_id = null
     where node_id = $1 and state in ('assigned', 'running') and ($2::uuid[] is null or id = any($2))`,
    [nodeId, ids ?? null],
  );
  if (rowCount) await db.query(`select pg_notify('${PLANNER_CHANNEL}', '')`);
  return rowCount ?? 0;
}

export type TaskState =
  'ready' | 'assigned' | 'running' | 'waiting' | 'completed' | 'failed' | 'cancelled' | 'dead';

export interface TaskRecord {
  id: string;
  name: string;
  state: TaskState;
  workflowId: string;
  parentId: string | null;
  attempts: number;
  nodeId: string | null;
  notBefore: Date | null;
  createdAt: Date;
  finishedAt: Date | null;
  result: Buffer | null;
  error: string | null;
}

/** One task wherever it is: hot table, history or dead letters. */
export async function findTask(db: Queryable, id: string): Promise<TaskRecord | undefined> {
  const { rows } = await db.query<TaskRecord>(
    `select id, name, state, workflow_id as "workflowId", parent_id as "parentId", attempt as attempts,
       node_id as "nodeId", not_before as "notBefore", created_at as "createdAt", null::timestamptz as "finishedAt",
       null::bytea as result, last_error as error
     from tm_tasks where id = $1
     union all
     select id, name, state, workflow_id, parent_id, attempts, null, null, created_at, finished_at, result, error
     from tm_history where id = $1
     union all
     select id, name, 'dead', workflow_id, parent_id, attempts, null, null, created_at, failed_at, null, error
     from tm_dead_letters where id = $1`,
    [id],
  );
  return rows[0];
}

/** Cancels a task that has not started: it leaves the hot table and history records it as cancelled. */
export async function cancelPendingTask(db: Queryable, id: string): Promise<boolean> {
  const { rowCount } = await db.query(
    `with gone as (delete from tm_tasks where id = $1 and state in ('ready', 'waiting') returning *)
     insert into tm_history (id, name, workflow_id, parent_id, state, error, attempts, created_at)
     select id, name, workflow_id, parent_id, 'cancelled', 'cancelled before it started', attempt, created_at
     from gone`,
    [id],
  );
  return rowCount === 1;
}
