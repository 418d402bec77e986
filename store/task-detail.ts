/**
 * One task as its page shows it (the dashboard's task page, `GET /api/tasks/:id/details`): the row
 * wherever it is (tm_any_task), its message and result bytes (the caller decodes them), its keys, its
 * attempts, the tasks it waits for and those waiting on it, and its children. Read-only, one statement.
 *
 * What the database keeps of attempts: each failed attempt that was retried, with its node, start, end
 * and error (tm_task_attempts, migrations/011); the node and start of the attempt under way
 * (tm_tasks.node_id, assigned_at); the end and error of the last one once the task ended (history,
 * dead letters). Not recorded: the node and start of an attempt that ended the task.
 */
import { readQuery, type Queryable } from './queryable.ts';
import { isUuid } from '../task/schedule-context.ts';
import { TaskmillError } from '../task/errors.ts';
import { visibleStateSql, type TaskStatus } from '../task/task-states.ts';

export const TASK_DETAIL_LIMITS = {
  /** Children, waits and attempts listed at most (the totals are counted beyond). */
  listed: 200,
};

export interface TaskLink {
  id: string;
  name: string;
  state: TaskStatus;
}

export interface WaitLink extends TaskLink {
  /** `join`: ends when the other task ended in any way; `dependency`: needs its success. */
  kind: 'join' | 'dependency';
}

export interface AttemptInfo {
  /** 1 for the first attempt. */
  number: number;
  /** `assigned` / `running`: under way; `failed`: a failed attempt (retried, or the last); else the end. */
  outcome: TaskStatus;
  /** null when not recorded (see the module comment). */
  nodeId: string | null;
  nodeName: string | null;
  startedAt: Date | null;
  endedAt: Date | null;
  error: string | null;
  /** The last value reported with ctx.progress() (only the latest attempt's is kept). */
  progress: unknown;
}

export interface TaskDetail {
  id: string;
  name: string;
  state: TaskStatus;
  /** Where the row is: the hot table, history or the dead-letter table. */
  storedIn: 'tasks' | 'history' | 'dead_letters';
  workflowId: string;
  parentId: string | null;
  affinityGroup: string | null;
  affinity: string | null;
  concurrencyKey: string | null;
  priority: number | null;
  isJoin: boolean | null;
  attemptCount: number;
  nodeId: string | null;
  nodeName: string | null;
  notBefore: Date | null;
  createdAt: Date;
  finishedAt: Date | null;
  error: string | null;
  cancelRequested: boolean;
  /** msgpack bytes; kept while pending and in the dead letters, not in history. */
  message: Buffer | null;
  /** msgpack bytes of a completed task's result. */
  result: Buffer | null;
  progress: unknown;
  attempts: AttemptInfo[];
  waitsFor: WaitLink[];
  waitedBy: WaitLink[];
  children: TaskLink[];
  childCount: number;
}

// Waits (tm_task_waits) exist only while the waited-for task is pending, so both ends are in tm_tasks.
// Children share the parent's workflow: found through each table's workflow index.
const TASK_DETAIL = `
  select a.stored_in, a.id, a.name, ${visibleStateSql('a.', 'attempts')} as state, a.workflow_id, a.parent_id,
    nullif(a.affinity_group, '') as affinity_group, a.affinity, nullif(t.concurrency_key, '') as concurrency_key,
    a.priority, t.is_join, a.attempts, a.node_id, n.name as node_name, a.not_before, a.created_at, a.finished_at,
    a.error, coalesce(t.cancel_requested, false) as cancel_requested, t.assigned_at,
    coalesce(t.message, d.message) as message, a.result,
    (select p.value from tm_task_progress p where p.task_id = a.id) as progress,
    (select coalesce(json_agg(x order by x.id), '[]') from (
       select o.id, o.name, ${visibleStateSql('o.')} as state, w.kind
       from tm_task_waits w join tm_tasks o on o.id = w.waits_for
       where w.task_id = a.id and w.direct order by o.id limit $2) x) as waits_for,
    (select coalesce(json_agg(x order by x.id), '[]') from (
       select o.id, o.name, ${visibleStateSql('o.')} as state, w.kind
       from tm_task_waits w join tm_tasks o on o.id = w.task_id
       where w.waits_for = a.id order by o.id limit $2) x) as waited_by,
    (select coalesce(json_agg(x order by x.id), '[]') from (
       select c.id, c.name, ${visibleStateSql('c.', 'attempts')} as state
       from tm_any_task c where c.workflow_id = a.workflow_id and c.parent_id = a.id order by c.id limit $2) x)
      as children,
    (select count(*)::int from tm_any_task c where c.workflow_id = a.workflow_id and c.parent_id = a.id)
      as child_count,
    (select coalesce(json_agg(x order by x.ended_at), '[]') from (
       select r.attempt, r.node_id, rn.name as node_name, r.started_at, r.ended_at, r.error
       from tm_task_attempts r left join tm_nodes rn on rn.id = r.node_id
       where r.task_id = a.id order by r.ended_at desc limit $2) x) as recorded
  from tm_any_task a
  left join tm_tasks t on a.stored_in = 'tasks' and t.id = a.id
  left join tm_dead_letters d on a.stored_in = 'dead_letters' and d.id = a.id
  left join tm_nodes n on n.id = a.node_id
  where a.id = $1`;

interface RawDetail {
  stored_in: TaskDetail['storedIn'];
  id: string;
  name: string;
  state: TaskStatus;
  workflow_id: string;
  parent_id: string | null;
  affinity_group: string | null;
  affinity: string | null;
  concurrency_key: string | null;
  priority: number | null;
  is_join: boolean | null;
  attempts: number;
  node_id: string | null;
  node_name: string | null;
  not_before: Date | null;
  created_at: Date;
  finished_at: Date | null;
  error: string | null;
  cancel_requested: boolean;
  assigned_at: Date | null;
  message: Buffer | null;
  result: Buffer | null;
  progress: unknown;
  waits_for: { id: string; name: string; state: TaskStatus; kind: 'j' | 'd' }[];
  waited_by: { id: string; name: string; state: TaskStatus; kind: 'j' | 'd' }[];
  children: TaskLink[];
  child_count: number;
  /** Oldest first; after a dead letter was requeued, numbers start from 1 again. */
  recorded: {
    attempt: number;
    node_id: string | null;
    node_name: string | null;
    started_at: string | null;
    ended_at: string;
    error: string | null;
  }[];
}

/** The task with everything its page shows; undefined when no table holds it. */
export async function taskDetail(db: Queryable, id: string): Promise<TaskDetail | undefined> {
  if (!isUuid(id)) {
    throw new TaskmillError('INVALID_ARGUMENT', `Task id must be a UUID, got ${JSON.stringify(id)}.`);
  }
  const { rows } = await readQuery<RawDetail>(db, TASK_DETAIL, [id, TASK_DETAIL_LIMITS.listed]);
  const r = rows[0];
  if (!r) return undefined;
  const waitLink = (w: RawDetail['waits_for'][number]): WaitLink => ({
    id: w.id,
    name: w.name,
    state: w.state,
    kind: w.kind === 'j' ? 'join' : 'dependency',
  });
  return {
    id: r.id,
    name: r.name,
    state: r.state,
    storedIn: r.stored_in,
    workflowId: r.workflow_id,
    parentId: r.parent_id,
    affinityGroup: r.affinity_group,
    affinity: r.affinity,
    concurrencyKey: r.concurrency_key,
    priority: r.priority,
    isJoin: r.is_join,
    attemptCount: attemptCount(r),
    nodeId: r.node_id,
    nodeName: r.node_name,
    notBefore: r.not_before,
    createdAt: r.created_at,
    finishedAt: r.finished_at,
    error: r.error,
    cancelRequested: r.cancel_requested,
    message: r.message,
    result: r.result,
    progress: r.progress,
    attempts: attemptsOf(r),
    waitsFor: r.waits_for.map(waitLink),
    waitedBy: r.waited_by.map(waitLink),
    children: r.children,
    childCount: r.child_count,
  };
}

const UNDER_WAY: readonly TaskStatus[] = ['assigned', 'running'];

/** Attempts made or under way: a pending row counts failed ones, an ended row every one. */
function attemptCount(r: RawDetail): number {
  return r.attempts + (r.stored_in === 'tasks' && UNDER_WAY.includes(r.state) ? 1 : 0);
}

/** The attempts, newest last, from what the row records (the module comment says what that is). */
function attemptsOf(r: RawDetail): AttemptInfo[] {
  const count = attemptCount(r);
  // By number, the latest wins: that of the task's present life when a dead letter was requeued.
  const recorded = new Map(r.recorded.map((a) => [a.attempt, a]));
  const first = Math.max(1, count - TASK_DETAIL_LIMITS.listed + 1);
  const attempts: AttemptInfo[] = [];
  for (let number = first; number <= count; number++) {
    const last = number === count;
    const attempt: AttemptInfo = {
      number,
      outcome: 'failed',
      nodeId: null,
      nodeName: null,
      startedAt: null,
      endedAt: null,
      error: null,
      progress: null,
    };
    if (r.stored_in === 'tasks') {
      if (last && UNDER_WAY.includes(r.state)) {
        Object.assign(attempt, {
          outcome: r.state,
          nodeId: r.node_id,
          nodeName: r.node_name,
          startedAt: r.assigned_at,
          progress: r.progress,
        });
      } else if (number === r.attempts) {
        attempt.error = r.error;
      }
    } else if (last) {
      Object.assign(attempt, {
        outcome: r.state,
        endedAt: r.finished_at,
        error: r.error,
        progress: r.progress,
      });
    }
    const known = recorded.get(number);
    if (attempt.outcome === 'failed' && !(last && r.stored_in !== 'tasks') && known) {
      Object.assign(attempt, {
        nodeId: known.node_id,
        nodeName: known.node_name,
        startedAt: known.started_at === null ? null : new Date(known.started_at),
        endedAt: new Date(known.ended_at),
        error: known.error,
      });
    }
    attempts.push(attempt);
  }
  return attempts;
}
