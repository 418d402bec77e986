/**
 * Read-only queries an operator needs (CLI `status`, HTTP API, dashboard, metrics): tasks wherever
 * they are (hot table, history, dead letters) with filters and keyset pagination, queue depths, nodes,
 * the leader and throughput over the last minutes. Nothing here writes; every query is one statement.
 */
import pg from 'pg';
import { inTransaction } from './checkout.ts';
import { readQuery, type Queryable } from './queryable.ts';
import { TaskmillError } from '../task/errors.ts';
import { isUuid, TASK_NAME_PATTERN } from '../task/schedule-context.ts';
import { DEFAULT_NODE_TIMEOUT_MS } from './nodes.ts';
import {
  DEPTH_STATES,
  ENDED_STATES,
  PENDING_STATES,
  TASK_STATES,
  visibleStateSql,
  type DepthState,
  type TaskStatus,
} from '../task/task-states.ts';

export { TASK_STATES, type TaskStatus } from '../task/task-states.ts';

export const INSPECT_DEFAULTS = {
  listLimit: 100,
  maxListLimit: 1000,
  throughputWindowMinutes: 15,
  throughputBucketSeconds: 30,
  recentFailures: 20,
};

export interface TaskFilter {
  /** Any of TASK_STATES; default all. */
  states?: TaskStatus[];
  name?: string;
  workflowId?: string;
  /**
   * Tasks of this affinity (in any group unless `affinityGroup` is given too). History keeps no
   * affinity: only pending tasks and dead letters match.
   */
  affinity?: string;
  /** With `affinity`: only that group's ('' is the default group). */
  affinityGroup?: string;
  /** Created at or after this time. */
  createdFrom?: Date;
  /** Created before this time. */
  createdTo?: Date;
  /** Page size (1..1000). */
  limit?: number;
  /** `nextCursor` of the previous page. */
  cursor?: string;
}

export interface TaskSummary {
  id: string;
  name: string;
  state: TaskStatus;
  workflowId: string;
  parentId: string | null;
  /** null when none was given (the default group), and once the task ended (history keeps no affinity). */
  affinityGroup: string | null;
  affinity: string | null;
  priority: number | null;
  attempts: number;
  nodeId: string | null;
  notBefore: Date | null;
  createdAt: Date;
  finishedAt: Date | null;
  error: string | null;
  /** The last value its handler reported with ctx.progress(); null: none. */
  progress: unknown;
}

export interface TaskPage {
  tasks: TaskSummary[];
  /** Pass back as `cursor` for the next page; null on the last page. */
  nextCursor: string | null;
}

// One statement over tm_any_task (the three tables), newest first: each table's primary key is walked
// backwards from the cursor (ids are UUIDv7, so id order is creation order) and merged, stopping after
// `limit` rows; a table no wanted state can be in is skipped whole ($6). States are the visible ones
// (task-states.ts). An affinity given without a group is stored with the group '' and shown as null,
// like no group. $7-$8 the affinity key, $9-$10 the creation time range.
const LIST_TASKS = `
  select id, name, state, workflow_id, parent_id, affinity_group, affinity, priority, attempts, node_id, not_before,
    created_at, finished_at, error, (select p.value from tm_task_progress p where p.task_id = t.id) as progress
  from (
    select a.id, a.name, ${visibleStateSql('a.', 'attempts')} as state, a.workflow_id, a.parent_id,
      nullif(a.affinity_group, '') as affinity_group, a.affinity, a.priority, a.attempts, a.node_id, a.not_before,
      a.created_at, a.finished_at, a.error
    from tm_any_task a
    where a.stored_in = any($6::text[]) and ($2::text is null or a.name = $2)
      and ($3::uuid is null or a.workflow_id = $3) and ($4::uuid is null or a.id < $4)
      and ($7::text is null or a.affinity = $7) and ($8::text is null or a.affinity_group = $8)
      and ($9::timestamptz is null or a.created_at >= $9) and ($10::timestamptz is null or a.created_at < $10)) t
  where ($1::text[] is null or t.state = any($1))
  order by t.id desc
  limit $5`;

/** Tasks newest first, across the hot table, history and dead letters. */
export async function listTasks(db: Queryable, filter: TaskFilter = {}): Promise<TaskPage> {
  const limit = filter.limit ?? INSPECT_DEFAULTS.listLimit;
  if (!Number.isInteger(limit) || limit < 1 || limit > INSPECT_DEFAULTS.maxListLimit) {
    throw invalid(`limit must be an integer between 1 and ${INSPECT_DEFAULTS.maxListLimit}, got ${limit}`);
  }
  const states = filter.states?.length ? filter.states : undefined;
  for (const s of states ?? []) {
    if (!(TASK_STATES as readonly string[]).includes(s))
      throw invalid(`unknown state ${JSON.stringify(s)}; use ${TASK_STATES.join(', ')}`);
  }
  if (
    filter.name !== undefined &&
    !(typeof filter.name === 'string' && TASK_NAME_PATTERN.test(filter.name))
  ) {
    throw invalid(
      `name must be a task name (1-200 letters, digits or _ . : -), got ${JSON.stringify(filter.name)}`,
    );
  }
  if (filter.workflowId !== undefined && !isUuid(filter.workflowId)) {
    throw invalid(`workflow id must be a UUID, got ${JSON.stringify(filter.workflowId)}`);
  }
  if (filter.affinity !== undefined && !(typeof filter.affinity === 'string' && filter.affinity !== '')) {
    throw invalid(`affinity must be a non-empty string, got ${JSON.stringify(filter.affinity)}`);
  }
  if (filter.affinityGroup !== undefined) {
    if (typeof filter.affinityGroup !== 'string') {
      throw invalid(`affinity group must be a string, got ${JSON.stringify(filter.affinityGroup)}`);
    }
    if (filter.affinity === undefined) throw invalid('an affinity group filter needs an affinity filter too');
  }
  for (const [what, at] of [
    ['from', filter.createdFrom],
    ['to', filter.createdTo],
  ] as const) {
    if (at !== undefined && !(at instanceof Date && Number.isFinite(at.getTime()))) {
      throw invalid(`${what} must be a date-time, got ${JSON.stringify(at)}`);
    }
  }
  if (filter.createdFrom && filter.createdTo && filter.createdFrom >= filter.createdTo) {
    throw invalid(
      `from (${filter.createdFrom.toISOString()}) must be before to (${filter.createdTo.toISOString()})`,
    );
  }
  if (filter.cursor !== undefined && !isUuid(filter.cursor)) {
    throw invalid(`cursor must be the nextCursor of a previous page, got ${JSON.stringify(filter.cursor)}`);
  }
  const wants = (group: readonly string[]) => !states || states.some((s) => group.includes(s));
  const tables = [
    wants(PENDING_STATES) ? 'tasks' : undefined,
    // History keeps no affinity: an affinity filter never matches it.
    wants(ENDED_STATES) && filter.affinity === undefined ? 'history' : undefined,
    wants(['dead']) ? 'dead_letters' : undefined,
  ].filter((b) => b !== undefined);
  const { rows } = await readQuery<RawTask>(db, LIST_TASKS, [
    states ?? null,
    filter.name ?? null,
    filter.workflowId ?? null,
    filter.cursor ?? null,
    limit,
    tables,
    filter.affinity ?? null,
    filter.affinityGroup ?? null,
    filter.createdFrom ?? null,
    filter.createdTo ?? null,
  ]);
  const tasks = rows.map(toSummary);
  return { tasks, nextCursor: tasks.length === limit ? tasks[tasks.length - 1].id : null };
}

interface RawTask {
  id: string;
  name: string;
  state: TaskStatus;
  workflow_id: string;
  parent_id: string | null;
  affinity_group: string | null;
  affinity: string | null;
  priority: number | null;
  attempts: number;
  node_id: string | null;
  not_before: Date | null;
  created_at: Date;
  finished_at: Date | null;
  error: string | null;
  progress: unknown;
}

function toSummary(r: RawTask): TaskSummary {
  return {
    id: r.id,
    name: r.name,
    state: r.state,
    workflowId: r.workflow_id,
    parentId: r.parent_id,
    affinityGroup: r.affinity_group,
    affinity: r.affinity,
    priority: r.priority,
    attempts: r.attempts,
    nodeId: r.node_id,
    notBefore: r.not_before,
    createdAt: r.created_at,
    finishedAt: r.finished_at,
    error: r.error,
    progress: r.progress,
  };
}

/** Pending tasks by name and state (DEPTH_STATES: the pending states and `dead` for dead letters). */
export interface QueueDepth {
  name: string;
  state: DepthState;
  count: number;
}

export async function queueDepths(db: Queryable): Promise<QueueDepth[]> {
  const { rows } = await readQuery<QueueDepth>(
    db,
    `select name, ${visibleStateSql()} as state, count(*)::int as count
     from tm_tasks group by 1, 2
     union all
     select name, 'dead', count(*)::int from tm_dead_letters group by 1
     order by 1, 2`,
  );
  return rows;
}

export interface NodeInfo {
  id: string;
  name: string;
  capacity: number;
  taskNames: string[];
  /** Running or queued on the node, as of its last heartbeat. */
  inFlight: number;
  /** Tasks the hot table holds for the node (assigned or running) right now. */
  held: number;
  cpu: number;
  /** Connections the node had open, as of its last heartbeat (null: a node that does not report them). */
  connections: number | null;
  /** The node's connection budget (maxConnections); null: not reported. */
  maxConnections: number | null;
  startedAt: Date;
  heartbeatAt: Date;
  /** Heartbeat younger than the node timeout (database time). */
  alive: boolean;
  leader: boolean;
}

export async function listNodes(db: Queryable, nodeTimeoutMs = DEFAULT_NODE_TIMEOUT_MS): Promise<NodeInfo[]> {
  const { rows } = await readQuery<NodeInfo>(
    db,
    `select n.id, n.name, n.capacity, n.task_names as "taskNames", n.in_flight as "inFlight",
       coalesce(h.held, 0)::int as held, n.cpu, n.connections, n.max_connections as "maxConnections",
       n.started_at as "startedAt", n.heartbeat_at as "heartbeatAt",
       n.heartbeat_at > now() - $1 * interval '1 millisecond' as alive,
       coalesce(l.node_id = n.id and l.expires_at > now(), false) as leader
     from tm_nodes n
     left join (select node_id, count(*) as held from tm_tasks where node_id is not null group by 1) h
       on h.node_id = n.id
     left join tm_leader l on l.node_id = n.id
     order by n.started_at, n.name`,
    [nodeTimeoutMs],
  );
  return rows;
}

export interface LeaderInfo {
  nodeId: string;
  nodeName: string | null;
  acquiredAt: Date;
  expiresAt: Date;
}

/** The current planner leader; undefined when no unexpired lease exists. */
export async function currentLeader(db: Queryable): Promise<LeaderInfo | undefined> {
  const { rows } = await readQuery<LeaderInfo>(
    db,
    `select l.node_id as "nodeId", n.name as "nodeName", l.acquired_at as "acquiredAt", l.expires_at as "expiresAt"
     from tm_leader l left join tm_nodes n on n.id = l.node_id where l.expires_at > now()`,
  );
  return rows[0];
}

export interface ThroughputBucket {
  /** Start of the bucket (database time). */
  start: Date;
  completed: number;
  failed: number;
  cancelled: number;
  dead: number;
}

export interface Throughput {
  bucketSeconds: number;
  buckets: ThroughputBucket[];
  /** Tasks ended (any outcome) per second over the whole window. */
  perSecond: number;
  /**
   * True when counting the window took longer than the caller's `timeoutMs` (a large history): the
   * buckets are then empty and `perSecond` is 0, so a status read answers in time instead of waiting.
   */
  timedOut?: boolean;
}

/** Ended tasks per time bucket over the last minutes, from history and dead letters (oldest first). */
export async function throughput(
  db: Queryable,
  options: { windowMinutes?: number; bucketSeconds?: number; timeoutMs?: number } = {},
): Promise<Throughput> {
  const windowMinutes = options.windowMinutes ?? INSPECT_DEFAULTS.throughputWindowMinutes;
  const bucketSeconds = options.bucketSeconds ?? INSPECT_DEFAULTS.throughputBucketSeconds;
  if (!(Number.isInteger(windowMinutes) && windowMinutes >= 1 && windowMinutes <= 24 * 60)) {
    throw invalid(`window must be 1..1440 minutes, got ${windowMinutes}`);
  }
  if (!(Number.isInteger(bucketSeconds) && bucketSeconds >= 1 && bucketSeconds <= windowMinutes * 60)) {
    throw invalid(`bucket must be 1..${windowMinutes * 60} seconds, got ${bucketSeconds}`);
  }
  const { timeoutMs } = options;
  if (timeoutMs !== undefined && !(Number.isInteger(timeoutMs) && timeoutMs >= 1)) {
    throw invalid(`throughput timeout must be a positive integer of milliseconds, got ${timeoutMs}`);
  }
  if (timeoutMs !== undefined && db instanceof pg.Pool) {
    // Counting is proportional to the tasks ended in the window (about 1.9 s for 1M history rows on a
    // loaded 2-core machine): bounded by a statement timeout on its own session, so a status read
    // still answers in time when the history is large.
    try {
      return await inTransaction(db, async (client) => {
        await client.query(`select set_config('statement_timeout', $1, true)`, [String(timeoutMs)]);
        return await throughput(client, { ...options, timeoutMs: undefined });
      });
    } catch (error) {
      if ((error as { code?: string }).code !== '57014') throw error;
      return { bucketSeconds, buckets: [], perSecond: 0, timedOut: true };
    }
  }
  // Buckets are aligned on the epoch so consecutive calls agree; the range scans of tm_history and
  // tm_dead_letters use their finished_at / failed_at indexes.
  const { rows } = await readQuery<ThroughputBucket>(
    db,
    `with bounds as (
       select date_bin(make_interval(secs => $1), now(), timestamptz 'epoch') as last_start,
              make_interval(secs => $1) as width),
     buckets as (
       select generate_series(last_start - make_interval(secs => $2 * 60) + width, last_start, width) as start
       from bounds),
     ended as (
       select date_bin(make_interval(secs => $1), finished_at, timestamptz 'epoch') as start, state
       from tm_history, bounds where finished_at >= last_start - make_interval(secs => $2 * 60) + width
       union all
       select date_bin(make_interval(secs => $1), failed_at, timestamptz 'epoch'), 'dead'
       from tm_dead_letters, bounds where failed_at >= last_start - make_interval(secs => $2 * 60) + width)
     select b.start,
       count(e.state) filter (where e.state = 'completed')::int as completed,
       count(e.state) filter (where e.state = 'failed')::int as failed,
       count(e.state) filter (where e.state = 'cancelled')::int as cancelled,
       count(e.state) filter (where e.state = 'dead')::int as dead
     from buckets b left join ended e on e.start = b.start
     group by b.start order by b.start`,
    [bucketSeconds, windowMinutes],
  );
  const total = rows.reduce((sum, b) => sum + b.completed + b.failed + b.cancelled + b.dead, 0);
  return { bucketSeconds, buckets: rows, perSecond: total / (rows.length * bucketSeconds || 1) };
}

export interface FailureInfo {
  id: string;
  name: string;
  workflowId: string;
  /** `dead`: in the dead-letter table (can be requeued); `failed`: ended in history. */
  state: 'dead' | 'failed';
  attempts: number;
  error: string | null;
  failedAt: Date;
}

/** The newest failures that ended a task, dead letters and failed history rows. */
export async function recentFailures(
  db: Queryable,
  limit = INSPECT_DEFAULTS.recentFailures,
): Promise<FailureInfo[]> {
  const { rows } = await readQuery<FailureInfo>(
    db,
    `select * from (
       (select id, name, workflow_id as "workflowId", 'dead' as state, attempts, error, failed_at as "failedAt"
        from tm_dead_letters order by failed_at desc limit $1)
       union all
       (select id, name, workflow_id, 'failed', attempts, error, finished_at
        from tm_history where state = 'failed' order by finished_at desc limit $1)) f
     order by "failedAt" desc limit $1`,
    [limit],
  );
  return rows;
}

export interface ClusterStats {
  at: Date;
  leader: LeaderInfo | null;
  nodes: NodeInfo[];
  depths: QueueDepth[];
  /** Depth per state summed over task names. */
  totals: Record<QueueDepth['state'], number>;
  throughput: Throughput;
  recentFailures: FailureInfo[];
}

/** Everything `taskmill status`, `GET /api/stats` and the dashboard show, read concurrently. */
export async function clusterStats(
  db: Queryable,
  options: {
    nodeTimeoutMs?: number;
    windowMinutes?: number;
    bucketSeconds?: number;
    failures?: number;
    /** Give up counting throughput after this long (see `Throughput.timedOut`); needs a pool. */
    throughputTimeoutMs?: number;
  } = {},
): Promise<ClusterStats> {
  const [leader, nodes, depths, tp, failures] = await Promise.all([
    currentLeader(db),
    listNodes(db, options.nodeTimeoutMs),
    queueDepths(db),
    throughput(db, { ...options, timeoutMs: options.throughputTimeoutMs }),
    recentFailures(db, options.failures),
  ]);
  const totals = Object.fromEntries(DEPTH_STATES.map((s) => [s, 0])) as Record<DepthState, number>;
  for (const d of depths) totals[d.state] += d.count;
  return {
    at: new Date(),
    leader: leader ?? null,
    nodes,
    depths,
    totals,
    throughput: tp,
    recentFailures: failures,
  };
}

function invalid(message: string): TaskmillError {
  return new TaskmillError('INVALID_ARGUMENT', `Invalid query: ${message}.`);
}

/** A node as `TaskmillClient.cluster()` reports it. */
export interface ClusterNode {
  id: string;
  name: string;
  /** `alive`: heartbeat within the node timeout; `stopping`: alive and handing its work back; `dead`. */
  state: 'alive' | 'stopping' | 'dead';
  leader: boolean;
  startedAt: Date;
  lastHeartbeatAt: Date;
  /** Tasks it runs at once (maxParallelTasksInNode); 0 while stopping. */
  capacity: number;
  /** Running or queued on the node, as of its last heartbeat. */
  inFlight: number;
  /** Assigned or running on the node in the hot table, now. */
  held: number;
  /** Share of its machine's CPU the node used (0..1), as of its last heartbeat. */
  cpu: number;
  /** Connections it had open, as of its last heartbeat (null: a node that does not report them). */
  connections: number | null;
  /** Its connection budget (maxConnections); null: not reported. */
  maxConnections: number | null;
  taskNames: string[];
}

export interface ClusterOverview {
  /** Database time of the reading. */
  at: Date;
  /** The planner leader holding an unexpired lease, and since when it holds it; null when none. */
  leader: { nodeId: string; nodeName: string | null; since: Date; expiresAt: Date } | null;
  nodes: ClusterNode[];
  /** Over the live nodes (alive or stopping); `nodes` counts every row, dead ones included. */
  totals: { nodes: number; alive: number; capacity: number; inFlight: number; held: number };
}

/** Leader, nodes and their load in one round trip (tm_nodes, tm_leader and the node index of tm_tasks). */
export async function clusterOverview(
  db: Queryable,
  nodeTimeoutMs = DEFAULT_NODE_TIMEOUT_MS,
): Promise<ClusterOverview> {
  if (!(Number.isInteger(nodeTimeoutMs) && nodeTimeoutMs > 0)) {
    throw invalid(`node timeout must be a positive whole number of milliseconds, got ${nodeTimeoutMs}`);
  }
  const { rows } = await readQuery<{ at: Date; leader: RawLeader | null; nodes: RawNode[] }>(
    db,
    `select now() as at,
       (select json_build_object('nodeId', l.node_id, 'nodeName', n.name, 'since', l.acquired_at,
           'expiresAt', l.expires_at)
        from tm_leader l left join tm_nodes n on n.id = l.node_id where l.expires_at > now()) as leader,
       (select coalesce(json_agg(json_build_object('id', n.id, 'name', n.name,
           'alive', n.heartbeat_at > now() - $1 * interval '1 millisecond',
           'leader', coalesce(l.node_id = n.id and l.expires_at > now(), false),
           'startedAt', n.started_at, 'lastHeartbeatAt', n.heartbeat_at, 'capacity', n.capacity,
           'inFlight', n.in_flight, 'cpu', n.cpu, 'connections', n.connections,
           'maxConnections', n.max_connections, 'taskNames', n.task_names,
           'held', (select count(*) from tm_tasks t where t.node_id = n.id))
           order by n.started_at, n.name), '[]')
        from tm_nodes n left join tm_leader l on l.node_id = n.id) as nodes`,
    [nodeTimeoutMs],
  );
  const row = rows[0];
  const nodes: ClusterNode[] = row.nodes.map(({ alive, ...n }) => ({
    ...n,
    state: !alive ? 'dead' : n.capacity === 0 ? 'stopping' : 'alive',
    startedAt: new Date(n.startedAt),
    lastHeartbeatAt: new Date(n.lastHeartbeatAt),
  }));
  const live = nodes.filter((n) => n.state !== 'dead');
  const sum = (k: 'capacity' | 'inFlight' | 'held') => live.reduce((total, n) => total + n[k], 0);
  return {
    at: row.at,
    leader: row.leader && {
      ...row.leader,
      since: new Date(row.leader.since),
      expiresAt: new Date(row.leader.expiresAt),
    },
    nodes,
    totals: {
      nodes: nodes.length,
      alive: live.length,
      capacity: sum('capacity'),
      inFlight: sum('inFlight'),
      held: sum('held'),
    },
  };
}

interface RawLeader {
  nodeId: string;
  nodeName: string | null;
  since: string;
  expiresAt: string;
}

type RawNode = Omit<ClusterNode, 'state' | 'startedAt' | 'lastHeartbeatAt'> & {
  alive: boolean;
  startedAt: string;
  lastHeartbeatAt: string;
};
