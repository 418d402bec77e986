/**
 * A workflow as a graph (the dashboard's workflow page, `GET /api/workflows/:id/graph`): its tasks
 * wherever they are, with their states, and the edges between them: parent to child (kept for good in
 * every table), and the joins and dependencies still pending (tm_task_waits keeps a wait only until
 * the task waited for ends). Read-only, one statement.
 */
import { readQuery, type Queryable } from './queryable.ts';
import { isUuid } from '../task/schedule-context.ts';
import { TaskmillError } from '../task/errors.ts';
import { visibleStateSql, type TaskStatus } from '../task/task-states.ts';

export const WORKFLOW_GRAPH_DEFAULTS = { limit: 1000, maxLimit: 5000 };

export interface GraphTask {
  id: string;
  name: string;
  state: TaskStatus;
  parentId: string | null;
  /** A join task (known while it is pending; null once it ended). */
  isJoin: boolean | null;
  attempts: number;
}

export interface GraphEdge {
  /** The parent, or the task waited for. */
  from: string;
  /** The child, or the waiting task. */
  to: string;
  kind: 'child' | 'join' | 'dependency';
}

export interface WorkflowGraph {
  id: string;
  /** The workflow's oldest tasks first, at most `limit`. */
  tasks: GraphTask[];
  /** Edges between the tasks listed. */
  edges: GraphEdge[];
  /** Tasks of the workflow in all (more than `tasks.length` when the limit cut the list). */
  total: number;
}

// Tasks through each table's workflow index; waits of the workflow's pending tasks through the hot
// table's workflow index and the waits' primary key. Only direct waits: a join also waits, indirectly,
// for everything its tasks spawn, which the child edges already draw.
const WORKFLOW_GRAPH = `
  select (select count(*)::int from tm_any_task where workflow_id = $1) as total,
    (select coalesce(json_agg(x order by x.id), '[]') from (
       select a.id, a.name, ${visibleStateSql('a.', 'attempts')} as state, a.parent_id as "parentId",
         t.is_join as "isJoin", a.attempts
       from tm_any_task a left join tm_tasks t on a.stored_in = 'tasks' and t.id = a.id
       where a.workflow_id = $1 order by a.id limit $2) x) as tasks,
    (select coalesce(json_agg(json_build_object('from', w.waits_for, 'to', w.task_id,
        'kind', case w.kind when 'j' then 'join' else 'dependency' end)), '[]')
     from tm_tasks t join tm_task_waits w on w.task_id = t.id
     where t.workflow_id = $1 and w.direct) as waits`;

export async function workflowGraph(
  db: Queryable,
  id: string,
  limit = WORKFLOW_GRAPH_DEFAULTS.limit,
): Promise<WorkflowGraph | undefined> {
  if (!isUuid(id)) {
    throw new TaskmillError('INVALID_ARGUMENT', `Workflow id must be a UUID, got ${JSON.stringify(id)}.`);
  }
  if (!(Number.isInteger(limit) && limit >= 1 && limit <= WORKFLOW_GRAPH_DEFAULTS.maxLimit)) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `Invalid query: limit must be an integer between 1 and ${WORKFLOW_GRAPH_DEFAULTS.maxLimit}, got ${limit}.`,
    );
  }
  const {
    rows: [row],
  } = await readQuery<{ total: number; tasks: GraphTask[]; waits: GraphEdge[] }>(db, WORKFLOW_GRAPH, [
    id,
    limit,
  ]);
  if (row.total === 0) return undefined;
  const listed = new Set(row.tasks.map((t) => t.id));
  const children: GraphEdge[] = row.tasks
    .filter((t) => t.parentId !== null && listed.has(t.parentId))
    .map((t) => ({ from: t.parentId as string, to: t.id, kind: 'child' }));
  const waits = row.waits.filter((e) => listed.has(e.from) && listed.has(e.to));
  return { id, tasks: row.tasks, edges: [...children, ...waits], total: row.total };
}
