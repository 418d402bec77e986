/**
 * Every statement the runtime runs on tm_tasks and the ends of a task (history, dead letters through
 * tm_fail), named by what it does. Many rows travel as parallel arrays through `unnest`, so a batch is
 * one statement and one round trip whatever its size. The insert of new tasks is tm_insert_tasks and
 * the fence check tm_fenced (migrations/005), each used here and by the plpgsql functions alike.
 * Completions are fenced: a row is changed only while it is still assigned to the completing node
 * under the same assignment number.
 */
import { errorText, type DoneOutcome, type FailedOutcome, type OutcomeTask } from '../task/outcome.ts';
import type { NewTask } from '../task/schedule-context.ts';
import type { FailedAttempt } from '../task/settle.ts';
import { CANCEL_CHANNEL, wakePlanner } from './channels.ts';
import type { Queryable } from './queryable.ts';

export type { Queryable } from './queryable.ts';

/** The 14 array parameters of tm_insert_tasks, as a statement's $1..$14. */
export const INSERT_TASKS_ARGS = `$1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::boolean[],
  $6::uuid[], $7::text[], $8::text[], $9::boolean[], $10::bytea[], $11::integer[], $12::float8[],
  $13::timestamptz[], $14::text[]`;

/** Multi-row insert of new tasks (tm_insert_tasks); wakes the planner (delivered at commit). */
export async function insertTasks(db: Queryable, tasks: NewTask[], notify = true): Promise<void> {
  if (tasks.length === 0) return;
  await db.query(
    notify ? INSERT_TASKS_AND_WAKE_PLANNER : `select count(*)::int as inserted from ${INSERT_KEYED_TASKS}`,
    [...insertParams(tasks), concurrencyKeys(tasks), traceparents(tasks)],
  );
}

/** tm_insert_tasks with the concurrency keys (migrations/007) as $15 and the trace context (010) as $16. */
const INSERT_KEYED_TASKS = `tm_insert_tasks(${INSERT_TASKS_ARGS}, c_concurrency_key => $15::text[],
  c_traceparent => $16::text[])`;

const INSERT_TASKS_AND_WAKE_PLANNER = `select count(*)::int as inserted, tm_notify_planner()
  from ${INSERT_KEYED_TASKS}`;

/** The concurrency keys of new tasks (null: none), or null when none has one. */
export function concurrencyKeys(tasks: NewTask[]): (string | null)[] | null {
  return tasks.some((t) => t.concurrencyKey) ? tasks.map((t) => t.concurrencyKey ?? null) : null;
}

export interface Wait {
  task: string;
  waitsFor: string;
  /** 'j': join (any end, descendants included); 'd': dependency (success only). */
  kind: 'j' | 'd';
}

/**
 * The trace context (W3C traceparent) of new tasks, or null when none has one: tracing off costs one
 * scan and no array.
 */
export function traceparents(tasks: NewTask[]): (string | null)[] | null {
  return tasks.some((t) => t.traceparent) ? tasks.map((t) => t.traceparent ?? null) : null;
}

/** Inserts tasks that wait for others, checking the targets (tm_schedule_waiting); wakes the planner. */
export async function insertWaitingTasks(db: Queryable, tasks: NewTask[], waits: Wait[]): Promise<void> {
  await db.query(
    `select tm_schedule_waiting($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)`,
    [
      ...insertParams(tasks),
      waits.map((w) => w.task),
      waits.map((w) => w.waitsFor),
      waits.map((w) => w.kind),
      concurrencyKeys(tasks),
      traceparents(tasks),
    ],
  );
}

/** tm_insert_tasks's arrays for new tasks, in its parameter order. */
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

/** A task a node runs, as fetched: converted once from its row (toFetchedTask), camelCase from here on. */
export interface FetchedTask {
  id: string;
  name: string;
  message: Buffer | null;
  attempt: number;
  assignment: number;
  workflowId: string;
  workflowCreatedAt: Date;
  affinityGroup: string | null;
  affinity: string | null;
  strictAffinity: boolean;
  parentId: string | null;
  createdAt: Date;
  cancelRequested: boolean;
  /** For join tasks: what the joined branch delivered (kind 'r' result, 'm' message), in order. */
  joinInputs: { kind: 'r' | 'm'; from: string; payload: Buffer | null }[];
  /** W3C traceparent of the span it was scheduled under (migrations/010); null: scheduled untraced. */
  traceparent: string | null;
  /**
   * Schedule-to-start: ms from when it was due (its not-before time: creation, or the end of its delay,
   * retry backoff or wait) to when its node took it, both database time.
   */
  waitedMs: number;
}

/** A row of FETCH_COLUMNS. */
export interface FetchedRow {
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
  cancel_requested: boolean;
  join_kinds: string[] | null;
  join_from: string[] | null;
  join_payloads: (Buffer | null)[] | null;
  traceparent: string | null;
  waited_ms: number;
}

export function toFetchedTask(r: FetchedRow): FetchedTask {
  return {
    id: r.id,
    name: r.name,
    message: r.message,
    attempt: r.attempt,
    assignment: r.assignment,
    workflowId: r.workflow_id,
    workflowCreatedAt: r.workflow_created_at,
    affinityGroup: r.affinity_group,
    affinity: r.affinity,
    strictAffinity: r.strict_affinity,
    parentId: r.parent_id,
    createdAt: r.created_at,
    cancelRequested: r.cancel_requested,
    joinInputs: (r.join_kinds ?? []).map((kind, i) => ({
      kind: kind as 'r' | 'm',
      from: r.join_from![i],
      payload: r.join_payloads![i],
    })),
    traceparent: r.traceparent,
    waitedMs: r.waited_ms,
  };
}

const joinAgg = (column: string, as: string) =>
  `case when t.is_join then (select array_agg(j.${column} order by j.created_at) from tm_join_messages j
    where j.join_id = t.id) end as ${as}`;

/** What a node needs of a task it runs (RETURNING list over tm_tasks t). */
export const FETCH_COLUMNS = `t.id, t.name, t.message, t.attempt, t.assignment, t.workflow_id, t.workflow_created_at,
  t.affinity_group, t.affinity, t.strict_affinity, t.parent_id, t.created_at, t.cancel_requested, t.traceparent,
  extract(epoch from now() - t.not_before)::float8 * 1000 as waited_ms, ${joinAgg('kind', 'join_kinds')}, ${joinAgg('from_task', 'join_from')}, ${joinAgg('payload', 'join_payloads')}`;

/** Takes every task assigned to the node (assigned -> running), with what joins received. */
export async function fetchAssignedTasks(db: Queryable, nodeId: string): Promise<FetchedTask[]> {
  const { rows } = await db.query<FetchedRow>(
    `update tm_tasks t set state = 'running' where t.node_id = $1 and t.state = 'assigned' returning ${FETCH_COLUMNS}`,
    [nodeId],
  );
  return rows.map(toFetchedTask);
}

/** Which task an outcome ends, under which assignment: what a completion is fenced by. */
export type Fence = Pick<OutcomeTask, 'id' | 'assignment'>;

/** A success to commit: the handler's outcome (task/outcome.ts) and its task. */
export type Completion = DoneOutcome & { task: Fence };

/** A failed attempt to commit: the failure's outcome, its task and what settle() decided of it. */
export type FailedAttemptOutcome = FailedOutcome & { task: Fence; settlement: FailedAttempt };

export interface Accepted {
  id: string;
  name: string;
  outcome: 'completed' | 'retried' | 'dead' | 'failed' | 'cancelled' | 'suspended';
}

const bytes = (b: Uint8Array | null) => (b ? Buffer.from(b.buffer, b.byteOffset, b.byteLength) : null);

/** Bytes a row costs in a statement besides its payloads (ids, names, numbers), roughly. */
const ROW_OVERHEAD_BYTES = 128;

/**
 * Payload bytes one success adds to tm_complete's parameters: its result, its children (message and
 * strings) and its join messages. The completer bounds a batch by the sum of these.
 */
export function successBytes(s: Completion): number {
  let n = ROW_OVERHEAD_BYTES + (s.result?.byteLength ?? 0);
  for (const c of s.children) {
    n += ROW_OVERHEAD_BYTES + c.message.byteLength + c.name.length;
    n += (c.affinityGroup?.length ?? 0) + (c.affinity?.length ?? 0) + (c.joinOf?.length ?? 0) * 80;
  }
  for (const m of s.joinMessages) n += ROW_OVERHEAD_BYTES + m.payload.byteLength + m.joinName.length;
  return n;
}

/** Payload bytes one failure adds to tm_fail's parameters (its error text, at most 3 bytes a character). */
export function failureBytes(f: FailedAttemptOutcome): number {
  const { name, code, message, stack } = f.error;
  return ROW_OVERHEAD_BYTES + (name.length + (code?.length ?? 0) + message.length + (stack?.length ?? 0)) * 3;
}

/**
 * An error text PostgreSQL can store and within `maxBytes` UTF-8 bytes: NUL characters (which text
 * columns refuse) are replaced by U+FFFD, and a longer text is cut with a marker saying how much was
 * kept.
 */
export function storableError(text: string, maxBytes: number): string {
  const clean = text.includes('\0') ? text.replaceAll('\0', '\uFFFD') : text;
  if (clean.length <= maxBytes / 3) return clean;
  const bytes = Buffer.from(clean, 'utf8');
  if (bytes.length <= maxBytes) return clean;
  const marker = (kept: number) => `\n[truncated: ${kept} of ${bytes.length} bytes kept]`;
  const room = Math.max(0, maxBytes - Buffer.byteLength(marker(maxBytes)));
  // Cut on a character boundary: drop continuation bytes (10xxxxxx) the cut would split.
  let end = room;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end).toString('utf8') + marker(end);
}

/**
 * Parameters of tm_complete (migrations/002_workflows.sql) for a batch of successes. Results and
 * messages travel as bytea arrays, which node-postgres sends as hex text: the completer keeps a batch
 * within its byte budget so these strings stay far below V8's longest string.
 */
export function completeParams(nodeId: string, done: Completion[]): unknown[] {
  const children = done.flatMap((d) => d.children);
  const waits = children.flatMap((c) => (c.joinOf ?? []).map((waitsFor) => [c.id, waitsFor]));
  const messages = done.flatMap((d) => d.joinMessages.map((m) => [d.task.id, m.joinName, bytes(m.payload)]));
  return [
    nodeId,
    done.map((d) => d.task.id),
    done.map((d) => d.task.assignment),
    done.map((d) => bytes(d.result)),
    ...insertParams(children),
    waits.map((w) => w[0]),
    waits.map((w) => w[1]),
    messages.map((m) => m[0]),
    messages.map((m) => m[1]),
    messages.map((m) => m[2]),
    concurrencyKeys(children),
    traceparents(children),
  ];
}

const COMPLETE_SQL = `select id, name, outcome from tm_complete($1, $2, $3, $4,
  $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)`;

/**
 * Completes tasks: fenced delete from the hot table, outcome into history, children inserted only for
 * parents whose completion was accepted, joins and dependents released. Returns the accepted tasks.
 */
export async function completeTasks(db: Queryable, nodeId: string, done: Completion[]): Promise<Accepted[]> {
  const { rows } = await db.query<Accepted>(COMPLETE_SQL, completeParams(nodeId, done));
  return rows;
}

/**
 * Fenced: reschedules retryable failures and ends the others (dead-letter table or history), as settle()
 * decided. Each error is stored as its errorText (task/outcome.ts), NUL characters replaced.
 */
export async function failTasks(
  db: Queryable,
  nodeId: string,
  failed: FailedAttemptOutcome[],
): Promise<Accepted[]> {
  const { rows } = await db.query<Accepted>(
    `select id, name, outcome from tm_fail($1, $2, $3, $4, $5, $6, $7)`,
    [
      nodeId,
      failed.map((f) => f.task.id),
      failed.map((f) => f.task.assignment),
      failed.map((f) => storableError(errorText(f.error), Infinity)),
      failed.map((f) => f.settlement.retryDelayMs),
      failed.map((f) => f.settlement.deadLetter),
      failed.map((f) => f.settlement.cancelled),
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
  if (rowCount) await wakePlanner(db);
  return rowCount ?? 0;
}

export type TaskState =
  'ready' | 'assigned' | 'running' | 'waiting' | 'sleeping' | 'completed' | 'failed' | 'cancelled' | 'dead';

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
  /** The last value its handler reported with ctx.progress() (tm_task_progress); null: none. */
  progress: unknown;
}

/** One task wherever it is: hot table, history or dead letters (the view tm_any_task). */
export async function findTask(db: Queryable, id: string): Promise<TaskRecord | undefined> {
  // A plpgsql function (migration 014): planning over every history partition cost more than running it
  // (1.45 ms -> 0.43 ms p50 with 13 partitions, measured as a prepared statement). The function's cached
  // plan keeps most of that (p50 with 11 partitions, loaded 2-core machine: plain statement 0.9-1.1 ms,
  // prepared 0.20-0.24 ms, function 0.28 ms) and also works through a pooler in transaction mode, where
  // prepared statements do not.
  const { rows } = await db.query<TaskRecord>(
    `select id, name, state, workflow_id as "workflowId", parent_id as "parentId", attempts,
       node_id as "nodeId", not_before as "notBefore", created_at as "createdAt", finished_at as "finishedAt",
       result, error, progress
     from tm_find_task($1)`,
    [id],
  );
  return rows[0];
}

export interface CancelResult {
  id: string;
  /** cancelled: it had not started and is now ended; requested: its node was asked to abort it. */
  outcome: 'cancelled' | 'requested';
  /** The node asked to abort it (requested), else null. */
  nodeId: string | null;
}

/** Cancels tasks: ends those not started, flags and notifies the nodes of assigned/running ones. */
export async function cancelTasks(db: Queryable, ids: string[]): Promise<CancelResult[]> {
  const { rows } = await db.query<CancelResult>(
    `with c as (select * from tm_cancel($1::uuid[]))
     select c.id, c.outcome, c.node_id as "nodeId",
       case when c.node_id is not null then pg_notify('${CANCEL_CHANNEL}', c.node_id || ':' || c.id) end
     from c`,
    [ids],
  );
  return rows;
}

/** Ids of tasks held by the node whose cancellation was requested. */
export async function cancelRequested(db: Queryable, nodeId: string): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `select id from tm_tasks where node_id = $1 and cancel_requested`,
    [nodeId],
  );
  return rows.map((r) => r.id);
}

/**
 * Of the tasks a node holds (queued or running, each under its assignment), those it no longer holds
 * under that assignment in the database (tm_fenced fails): taken back after the node was declared
 * dead (and maybe given to it again, under a newer assignment), or ended meanwhile.
 */
export async function tasksNoLongerHeld(
  db: Queryable,
  nodeId: string,
  tasks: { id: string; assignment: number }[],
): Promise<{ id: string; assignment: number }[]> {
  const { rows } = await db.query<{ id: string; assignment: number }>(
    `select h.id, h.assignment from unnest($2::uuid[], $3::int[]) h(id, assignment)
     where not exists (select 1 from tm_tasks t where t.id = h.id and tm_fenced(t, $1, h.assignment))`,
    [nodeId, tasks.map((t) => t.id), tasks.map((t) => t.assignment)],
  );
  return rows;
}

/**
 * Exactly-once: locks the task for the caller's transaction if it is still running on the node under
 * this assignment (tm_lock_held, migrations/017: tm_fenced, FOR KEY SHARE, planned once per session),
 * and says whether it is. KEY SHARE does not block cancellation requests or dead-node recovery (plain
 * updates); a task taken back meanwhile fails tm_complete's fence at commit.
 */
export async function lockHeldTask(
  client: Queryable,
  nodeId: string,
  id: string,
  assignment: number,
): Promise<boolean> {
  const { rows } = await client.query<{ held: boolean }>(`select tm_lock_held($1, $2, $3) as held`, [
    id,
    nodeId,
    assignment,
  ]);
  return rows[0].held;
}

/** Tasks of a workflow by stored state ('dead' for dead letters), wherever they are. */
export async function countWorkflowTasks(
  db: Queryable,
  workflowId: string,
): Promise<{ state: string; n: number }[]> {
  const { rows } = await db.query<{ state: string; n: number }>(
    `select state, count(*)::int as n from tm_any_task where workflow_id = $1 group by state`,
    [workflowId],
  );
  return rows;
}

/** Pending tasks of a workflow not yet asked to cancel. */
export async function uncancelledWorkflowTasks(db: Queryable, workflowId: string): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `select id from tm_tasks where workflow_id = $1 and not cancel_requested`,
    [workflowId],
  );
  return rows.map((r) => r.id);
}

/** Task rows inserted since the schema was created (the identity sequence of tm_tasks). */
export async function tasksCreated(db: Queryable): Promise<number> {
  const { rows } = await db.query<{ created: string | null }>(
    `select pg_sequence_last_value(pg_get_serial_sequence('tm_tasks', 'seq')::regclass) as created`,
  );
  return Number(rows[0]?.created ?? 0);
}
