/**
 * The planning loop, run by the leader only. One pass, in one transaction:
 *  1. take the planner's advisory lock (two nodes that both believe they lead never plan at once),
 *  2. read live nodes and what each holds, and the tasks at their cluster limit,
 *  3. claim up to min(batch size, free slots) ready tasks with FOR UPDATE SKIP LOCKED, in priority
 *     order, skipping any task whose affinity key is held by an older workflow (or, for strict keys, an
 *     older or in-flight task): the check reads rows, not events, so a freed key is seen on the next pass,
 *  4. choose a node for each (assignment.ts) and write every assignment in one UPDATE,
 *  5. NOTIFY the chosen nodes.
 * Then it sleeps per the polling-delay map, cut short (debounced) by NOTIFYs on PLANNER_CHANNEL.
 *
 * States: stopped -> running -> stopped; the loop runs passes only while the lease says leader.
 */
import type pg from 'pg';
import { checkout } from '../runtime/checkout.ts';
import { Loop, type Timers } from '../runtime/loop.ts';
import { FETCH_COLUMNS, NODE_CHANNEL, type FetchedTask } from '../runtime/task-store.ts';
import { assignTasks, type Candidate, type NodeSlots } from './assignment.ts';
import {
  DEFAULT_POLLING_DELAY,
  pollingDelayFor,
  validatePollingDelay,
  type PollingDelayMap,
} from './polling-delay.ts';

/** Arbitrary constant shared by every taskmill process: the advisory lock key of a planning pass. */
export const PLANNER_LOCK_KEY = 7_300_416_002;

export const PLANNER_DEFAULTS = {
  /** distributed-task-framework `batch-size`: most tasks claimed by one pass. */
  batchSize: 1000,
  /** distributed-task-framework `plan-factor`: a node may hold capacity x planFactor tasks (running + queued). */
  planFactor: 2,
  pollingDelay: DEFAULT_POLLING_DELAY,
  /** Node heartbeat older than this (database time) means the node is dead. */
  nodeTimeoutMs: 10_000,
  /** Nodes whose reported CPU use (0..1 of the machine) is above this get no new tasks; 1 disables. */
  nodeCpuLimit: 1,
  /** Extra wait to gather a burst of NOTIFYs into one pass (0: only those arriving during a pass coalesce). */
  wakeDebounceMs: 0,
};

export interface PlannerOptions {
  db: pg.Pool;
  isLeader: () => boolean;
  onError: (error: unknown) => void;
  batchSize?: number;
  planFactor?: number;
  pollingDelay?: PollingDelayMap;
  nodeTimeoutMs?: number;
  nodeCpuLimit?: number;
  wakeDebounceMs?: number;
  timers?: Timers;
  onPass?: (result: PassResult) => void;
  /**
   * The node this planner runs in. Its share of a pass is written straight to 'running' and handed to
   * `deliver` after commit, sparing it the fetch round trip and a second write per task.
   */
  local?: { nodeId: string; deliver: (tasks: FetchedTask[]) => void };
}

export interface PassResult {
  leader: boolean;
  claimed: number;
  assigned: number;
  /** Free slots across live nodes before the pass. */
  freeSlots: number;
  durationMs: number;
  /** The sleep chosen after this pass. */
  delayMs: number;
}

interface LiveNode {
  id: string;
  capacity: number;
  task_names: string[];
  cpu: number;
  held: number;
}

export class Planner {
  private readonly loop: Loop<PassResult>;
  private readonly delays: [number, number][];
  private readonly busyDelayMs: number;
  private readonly cfg: Required<
    Omit<PlannerOptions, 'timers' | 'onPass' | 'db' | 'isLeader' | 'onError' | 'local'>
  >;
  private wakeTimer: NodeJS.Timeout | undefined;
  private lastPromotion = 0;

  constructor(private readonly options: PlannerOptions) {
    this.cfg = {
      batchSize: options.batchSize ?? PLANNER_DEFAULTS.batchSize,
      planFactor: options.planFactor ?? PLANNER_DEFAULTS.planFactor,
      pollingDelay: options.pollingDelay ?? PLANNER_DEFAULTS.pollingDelay,
      nodeTimeoutMs: options.nodeTimeoutMs ?? PLANNER_DEFAULTS.nodeTimeoutMs,
      nodeCpuLimit: options.nodeCpuLimit ?? PLANNER_DEFAULTS.nodeCpuLimit,
      wakeDebounceMs: options.wakeDebounceMs ?? PLANNER_DEFAULTS.wakeDebounceMs,
    };
    this.delays = validatePollingDelay(this.cfg.pollingDelay);
    this.busyDelayMs = pollingDelayFor(this.delays, this.delays.find(([t]) => t > 0)?.[0] ?? 0);
    this.loop = new Loop({
      name: 'planner',
      runOnce: () => this.runOnce(),
      delayMs: (r) => r?.delayMs ?? pollingDelayFor(this.delays, 0),
      onError: options.onError,
      timers: options.timers,
    });
  }

  start(): void {
    this.loop.start();
  }

  async stop(): Promise<void> {
    clearTimeout(this.wakeTimer);
    this.wakeTimer = undefined;
    await this.loop.stop();
  }

  /**
   * Wake-up on NOTIFY (new tasks or freed capacity). Wake-ups during a pass coalesce into one next
   * pass; `wakeDebounceMs` > 0 also waits that long to gather a burst first.
   */
  wake(): void {
    if (this.cfg.wakeDebounceMs === 0) {
      this.loop.wake();
      return;
    }
    if (this.wakeTimer) return;
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = undefined;
      this.loop.wake();
    }, this.cfg.wakeDebounceMs);
  }

  async runOnce(): Promise<PassResult> {
    const started = performance.now();
    const idle = pollingDelayFor(this.delays, 0);
    if (!this.options.isLeader()) {
      return { leader: false, claimed: 0, assigned: 0, freeSlots: 0, durationMs: 0, delayMs: idle };
    }
    // The pass's connection may break under it (server restart, terminated backend): checkout()
    // keeps that from ending the process; the pass then fails and the loop retries with backoff.
    const { client, release } = await checkout(this.options.db);
    let result: Omit<PassResult, 'durationMs' | 'delayMs'> & {
      capacityLimited: boolean;
      delivered?: FetchedTask[];
    };
    let destroy = false;
    try {
      result = await this.pass(client);
      await client.query('commit');
      if (result.delivered?.length) this.options.local?.deliver(result.delivered);
    } catch (error) {
      await client.query('rollback').catch(() => (destroy = true));
      throw error;
    } finally {
      release(destroy);
    }
    const pass: PassResult = {
      leader: result.leader,
      claimed: result.claimed,
      assigned: result.assigned,
      freeSlots: result.freeSlots,
      durationMs: performance.now() - started,
      // Limited by node capacity, not by the backlog: tasks still wait, but nothing more can be planned
      // until a completion frees a slot (it NOTIFYs) or a node joins, so coming straight back would
      // spin. Poll at the busy delay (the map's smallest non-zero threshold) instead.
      delayMs: result.capacityLimited ? this.busyDelayMs : pollingDelayFor(this.delays, result.claimed),
    };
    this.options.onPass?.(pass);
    return pass;
  }

  /**
   * One pass inside a transaction the caller commits. Round trips: begin + lock, cluster state, claim,
   * one assignment per node; with one node and no cluster limit in play, claim and assignment are a
   * single statement (the latency path of an idle cluster).
   */
  private async pass(client: pg.PoolClient) {
    const none = { leader: true, claimed: 0, assigned: 0, freeSlots: 0, capacityLimited: false };
    // The lock key is a code constant, so the two statements can share one round trip.
    // enable_sort off: the claim must walk the ready index in priority order and stop at its LIMIT. The
    // hot table's statistics lag behind its churn, and with a low row estimate PostgreSQL would instead
    // check the affinity rules of every ready row and sort them (175 ms against 14 ms for 400 of 6,573
    // ready tasks in the workflow bench).
    const [, , lock] = (await client.query(
      `begin; set local enable_sort = off; select pg_try_advisory_xact_lock(${PLANNER_LOCK_KEY}) as ok`,
    )) as unknown as pg.QueryResult<{ ok: boolean }>[];
    if (!lock.rows[0].ok) return { ...none, leader: false };

    const promote = performance.now() - this.lastPromotion >= PROMOTE_WAITING_EVERY_MS;
    if (promote) this.lastPromotion = performance.now();
    const { rows: state } = await client.query<{ nodes: LiveNode[]; limits: Limit[] }>(CLUSTER_STATE, [
      this.cfg.nodeTimeoutMs,
      promote,
    ]);
    const nodes: NodeSlots[] = state[0].nodes
      .filter((n) => n.cpu <= this.cfg.nodeCpuLimit)
      .map((n) => ({
        id: n.id,
        free: Math.max(0, Math.floor(n.capacity * this.cfg.planFactor) - n.held),
        taskNames: new Set(n.task_names),
      }));
    const freeSlots = nodes.reduce((sum, n) => sum + n.free, 0);
    if (freeSlots === 0) {
      if (nodes.length === 0) return none;
      const { rows } = await client.query<{ waiting: boolean }>(
        `select exists (select 1 from tm_tasks where state = 'ready') as waiting`,
      );
      return { ...none, capacityLimited: rows[0].waiting };
    }
    const open = nodes.filter((n) => n.free > 0);
    const runnable = [...new Set(open.flatMap((n) => [...n.taskNames]))];
    const limits = state[0].limits.filter((l) => runnable.includes(l.name));
    const budget = new Map(limits.map((l) => [l.name, l.max - l.held]));
    const saturated = limits.filter((l) => l.held >= l.max).map((l) => l.name);
    const limit = Math.min(this.cfg.batchSize, freeSlots);
    const outcome = (claimed: number, assigned: number, delivered: FetchedTask[]) => ({
      delivered,
      leader: true,
      claimed,
      assigned,
      freeSlots,
      capacityLimited: limit < this.cfg.batchSize && claimed === limit,
    });

    if (open.length === 1 && limits.length === 0) {
      const { rows } = await this.assign(client, open[0].id, null, [limit, runnable, saturated]);
      return outcome(rows.length, rows.length, open[0].id === this.options.local?.nodeId ? rows : []);
    }

    const { rows: candidates } = await client.query<Candidate>(CLAIM_READY_TASKS, [
      limit,
      runnable,
      saturated,
    ]);
    const plan = assignTasks(candidates, nodes, budget);
    const byNode = new Map<string, string[]>();
    plan.taskIds.forEach((id, i) => {
      const ids = byNode.get(plan.nodeIds[i]);
      if (ids) ids.push(id);
      else byNode.set(plan.nodeIds[i], [id]);
    });
    let delivered: FetchedTask[] = [];
    for (const [nodeId, ids] of byNode) {
      const { rows } = await this.assign(client, nodeId, ids, []);
      if (nodeId === this.options.local?.nodeId) delivered = rows;
    }
    return outcome(candidates.length, plan.taskIds.length, delivered);
  }

  /**
   * Assigns tasks to one node: the given ids, or (ids null) the claim itself with `claimParams`. The
   * planner's own node gets them as 'running' with everything it needs to run them (no fetch); another
   * node gets them as 'assigned' and a NOTIFY. One statement per node with `id = any(...)` is an index
   * scan: joining an unnest of ids and nodes made PostgreSQL hash the whole hot table (36 ms of a 107 ms
   * pass for 2,000 tasks, measured).
   */
  private assign(client: pg.PoolClient, nodeId: string, ids: string[] | null, claimParams: unknown[]) {
    const local = nodeId === this.options.local?.nodeId;
    const target = ids ? '$1::uuid[]' : `array(select c.id from (${CLAIM_READY_TASKS}) c)`;
    const nodeParam = ids ? '$2' : '$4';
    return client.query<FetchedTask>(
      `with a as (
         update tm_tasks t set state = '${local ? 'running' : 'assigned'}', node_id = ${nodeParam},
           assignment = t.assignment + 1, assigned_at = now()
         where t.id = any(${target})
         returning ${local ? FETCH_COLUMNS : 't.id'})
       select a.*${local ? '' : `, pg_notify('${NODE_CHANNEL}', ${nodeParam}::text)`} from a`,
      ids ? [ids, nodeId] : [...claimParams, nodeId],
    );
  }
}

interface Limit {
  name: string;
  max: number;
  held: number;
}

/**
 * How often a pass also promotes waiting tasks left with nothing to wait for (tm_promote_waiting): the
 * level-triggered release of a join whose last two tasks ended in concurrent transactions.
 */
const PROMOTE_WAITING_EVERY_MS = 100;

/**
 * Live nodes with the tasks each holds, and the task names with a cluster limit with their running
 * count (through the partial node index: only held rows are read), in one round trip; every
 * PROMOTE_WAITING_EVERY_MS it also promotes waiting tasks with nothing left to wait for ($2).
 */
const CLUSTER_STATE = `
  select
    (select coalesce(json_agg(json_build_object('id', n.id, 'capacity', n.capacity, 'task_names', n.task_names,
        'cpu', n.cpu, 'held', (select count(*) from tm_tasks t where t.node_id = n.id))), '[]')
      from tm_nodes n where n.heartbeat_at > now() - $1 * interval '1 millisecond') as nodes,
    (select coalesce(json_agg(json_build_object('name', d.name, 'max', d.max_parallel_in_cluster,
        'held', (select count(*) from tm_tasks t where t.node_id is not null and t.name = d.name))), '[]')
      from tm_task_defs d where d.max_parallel_in_cluster is not null) as limits,
    case when $2 then tm_promote_waiting(1000) end as promoted`;

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
 * Rows locked by a concurrent completion or cancel are skipped, not waited for.
 */
export const CLAIM_READY_TASKS = `
  select t.id, t.name, t.affinity_group, t.affinity
  from tm_tasks t
  where t.state = 'ready' and t.not_before <= now()
    and t.name = any($2::text[]) and not (t.name = any($3::text[]))
    and (t.affinity is null or case
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
      end)
  order by t.priority desc, t.seq
  limit $1
  for update of t skip locked`;
