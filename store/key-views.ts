/**
 * Who holds a key and who waits on it (the dashboard's key pages, `GET /api/keys/...`), for affinity
 * keys (group, affinity) and concurrency keys. Both live only in the hot table: a task holds its key
 * from the moment the planner hands it to a node (it has a node: assigned or running) until it ends.
 * Read-only; each view is one statement over the indexes the planner's own checks use.
 */
import { readQuery, type Queryable } from './queryable.ts';
import { TaskmillError } from '../task/errors.ts';
import { visibleStateSql, type TaskStatus } from '../task/task-states.ts';

export const KEY_VIEW_DEFAULTS = { limit: 100, maxLimit: 1000 };

export interface KeyTask {
  id: string;
  name: string;
  state: TaskStatus;
  workflowId: string;
  priority: number;
  nodeId: string | null;
  nodeName: string | null;
  /** When the planner handed it to its node (holders only). */
  assignedAt: Date | null;
  notBefore: Date;
  createdAt: Date;
}

export interface KeyView {
  /** Tasks holding the key (assigned or running), oldest assignment first, at most `limit`. */
  holders: KeyTask[];
  /** Pending tasks of the key without a node, in the order the planner considers them, at most `limit`. */
  waiting: KeyTask[];
  heldCount: number;
  waitingCount: number;
}

export interface AffinityKeyView extends KeyView {
  group: string;
  affinity: string;
  /**
   * The workflow the key belongs to now: the oldest pending workflow of the key (affinity lets one
   * workflow at a time run its tasks); null when nothing of the key is pending.
   */
  activeWorkflowId: string | null;
}

export interface ConcurrencyKeyView extends KeyView {
  key: string;
}

export interface BusyKey {
  /** Affinity group ('' for the default one); absent for concurrency keys. */
  group?: string;
  key: string;
  held: number;
  waiting: number;
}

const TASK_COLUMNS = `t.id, t.name, ${visibleStateSql('t.')} as state, t.workflow_id as "workflowId", t.priority,
  t.node_id as "nodeId", n.name as "nodeName", t.assigned_at as "assignedAt", t.not_before as "notBefore",
  t.created_at as "createdAt"`;

/**
 * The holders (a node: assigned or running, oldest assignment first) and the waiting tasks (no node,
 * in `waitingOrder`) of the rows `key` selects, at most `limit` each, with both counts.
 */
function keyViewSql(key: string, waitingOrder: string, limit: string): string {
  const tasks = (nodeIs: string, order: string) => `(select coalesce(json_agg(x), '[]') from (
       select ${TASK_COLUMNS} from tm_tasks t left join tm_nodes n on n.id = t.node_id
       where ${key} and t.node_id ${nodeIs} order by ${order} limit ${limit}) x)`;
  const count = (nodeIs: string) =>
    `(select count(*)::int from tm_tasks t where ${key} and t.node_id ${nodeIs})`;
  return `select ${tasks('is not null', 't.assigned_at, t.id')} as holders,
    ${tasks('is null', waitingOrder)} as waiting,
    ${count('is not null')} as held_count, ${count('is null')} as waiting_count`;
}

// $1 group, $2 affinity, $3 limit: the holders through tm_tasks_affinity_held, the others through
// tm_tasks_affinity in the order of the planner's affinity rule (oldest workflow first).
const AFFINITY_KEY_VIEW = `${keyViewSql(
  't.affinity_group = $1 and t.affinity = $2',
  't.workflow_created_at, t.workflow_id, t.seq',
  '$3',
)},
    (select t.workflow_id from tm_tasks t where t.affinity_group = $1 and t.affinity = $2
     order by t.workflow_created_at, t.workflow_id limit 1) as active_workflow_id`;

// $1 key, $2 limit: the holders through tm_tasks_group_held, the ready ones in the claim's order
// (priority, then age).
const CONCURRENCY_KEY_VIEW = keyViewSql('t.concurrency_key = $1', 't.priority desc, t.seq', '$2');

interface RawView {
  holders: RawKeyTask[];
  waiting: RawKeyTask[];
  held_count: number;
  waiting_count: number;
  active_workflow_id?: string | null;
}

type RawKeyTask = Omit<KeyTask, 'assignedAt' | 'notBefore' | 'createdAt'> & {
  assignedAt: string | null;
  notBefore: string;
  createdAt: string;
};

/** What holds the affinity key (group, affinity) and what waits on it ('' is the default group). */
export async function affinityKeyView(
  db: Queryable,
  group: string,
  affinity: string,
  limit = KEY_VIEW_DEFAULTS.limit,
): Promise<AffinityKeyView> {
  checkText(group, 'affinity group', true);
  checkText(affinity, 'affinity', false);
  checkLimit(limit);
  const row = await one(db, AFFINITY_KEY_VIEW, [group, affinity, limit]);
  return { group, affinity, activeWorkflowId: row.active_workflow_id ?? null, ...view(row) };
}

/** What holds the concurrency key and what waits on it. */
export async function concurrencyKeyView(
  db: Queryable,
  key: string,
  limit = KEY_VIEW_DEFAULTS.limit,
): Promise<ConcurrencyKeyView> {
  checkText(key, 'concurrency key', false);
  checkLimit(limit);
  return { key, ...view(await one(db, CONCURRENCY_KEY_VIEW, [key, limit])) };
}

/** The keys with the most pending tasks (held or waiting), most first. */
export async function busiestKeys(
  db: Queryable,
  kind: 'affinity' | 'concurrency',
  limit = KEY_VIEW_DEFAULTS.limit,
): Promise<BusyKey[]> {
  checkLimit(limit);
  const sql =
    kind === 'affinity'
      ? `select affinity_group as "group", affinity as key,
           count(*) filter (where node_id is not null)::int as held, count(*) filter (where node_id is null)::int as waiting
         from tm_tasks where affinity is not null group by 1, 2 order by count(*) desc, 1, 2 limit $1`
      : `select concurrency_key as key,
           count(*) filter (where node_id is not null)::int as held, count(*) filter (where node_id is null)::int as waiting
         from tm_tasks where concurrency_key <> '' group by 1 order by count(*) desc, 1 limit $1`;
  return (await readQuery<BusyKey>(db, sql, [limit])).rows;
}

async function one(db: Queryable, sql: string, params: unknown[]): Promise<RawView> {
  return (await readQuery<RawView>(db, sql, params)).rows[0];
}

function view(row: RawView): KeyView {
  const task = (t: RawKeyTask): KeyTask => ({
    ...t,
    assignedAt: t.assignedAt === null ? null : new Date(t.assignedAt),
    notBefore: new Date(t.notBefore),
    createdAt: new Date(t.createdAt),
  });
  return {
    holders: row.holders.map(task),
    waiting: row.waiting.map(task),
    heldCount: row.held_count,
    waitingCount: row.waiting_count,
  };
}

function checkText(value: unknown, what: string, emptyAllowed: boolean): void {
  if (typeof value !== 'string' || (!emptyAllowed && value === '') || value.length > 1000) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `Invalid query: ${what} must be a ${emptyAllowed ? '' : 'non-empty '}string of at most 1,000 characters, got ${JSON.stringify(value)?.slice(0, 60)}.`,
    );
  }
}

function checkLimit(limit: number): void {
  if (!(Number.isInteger(limit) && limit >= 1 && limit <= KEY_VIEW_DEFAULTS.maxLimit)) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `Invalid query: limit must be an integer between 1 and ${KEY_VIEW_DEFAULTS.maxLimit}, got ${limit}.`,
    );
  }
}
