/**
 * The planning loop, run by the leader only. One pass, in one transaction:
 *  1. take the planner's advisory lock (two nodes that both believe they lead never plan at once),
 *  2. read live nodes and what each holds, and the tasks at their cluster limit,
 *  3. claim up to min(batch size, free slots) ready tasks with FOR UPDATE SKIP LOCKED, in priority
 *     order, skipping any task whose affinity key is held by an older workflow (or, for strict keys, an
 *     older or in-flight task): the check reads rows, not events, so a freed key is seen on the next pass,
 *  4. choose a node for each (assignment.ts) and write every assignment in one UPDATE,
 *  5. NOTIFY the chosen nodes.
 * Under flow control (a concurrency or rate limit configured, or fairness with keyed tasks ready),
 * step 3 is flow.ts's claim: per (concurrency key, task name) group, within each limit's room, served
 * round-robin, and the pass logs the starts the rate limits count.
 * Then it sleeps per the polling-delay map, cut short (debounced) by NOTIFYs on PLANNER_CHANNEL.
 *
 * States: stopped -> running -> stopped; the loop runs passes only while the lease says leader.
 */
import type pg from 'pg';
import { checkout } from '../store/checkout.ts';
import { Loop, type Timers } from '../loop/loop.ts';
import {
  anyTaskReady,
  assignTasksToNode,
  beginPass,
  claimForLocalNode,
  claimForNode,
  claimReadyTasks,
  startTasksOnLocalNode,
} from '../store/assignments.ts';
import { DEFAULT_NODE_TIMEOUT_MS } from '../store/nodes.ts';
import type { FetchedTask } from '../store/tasks.ts';
import { logStarts } from '../store/flow.ts';
import { assignTasks, type Candidate, type NodeSlots } from './assignment.ts';
import { budgetsOf, claimWithFlowControl, startsToLog } from './flow.ts';
import {
  DEFAULT_POLLING_DELAY,
  pollingDelayFor,
  validatePollingDelay,
  type PollingDelayMap,
} from './polling-delay.ts';

export { PLANNER_LOCK_KEY } from '../store/assignments.ts';

export const PLANNER_DEFAULTS = {
  /** distributed-task-framework `batch-size`: most tasks claimed by one pass. */
  batchSize: 1000,
  /** distributed-task-framework `plan-factor`: a node may hold capacity x planFactor tasks (running + queued). */
  planFactor: 2,
  pollingDelay: DEFAULT_POLLING_DELAY,
  /** Node heartbeat older than this (database time) means the node is dead. */
  nodeTimeoutMs: DEFAULT_NODE_TIMEOUT_MS,
  /** Nodes whose reported CPU use (0..1 of the machine) is above this get no new tasks; 1 disables. */
  nodeCpuLimit: 1,
  /** Extra wait to gather a burst of NOTIFYs into one pass (0: only those arriving during a pass coalesce). */
  wakeDebounceMs: 0,
  /**
   * Serve ready tasks round-robin across (concurrency key, task name) groups when any ready task has a
   * concurrency key (docs/flow-control.md); false: priority order, as without keys.
   */
  fairness: true,
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
  fairness?: boolean;
  timers?: Timers;
  onPass?: (result: PassResult) => void;
  /**
   * The node this planner runs in. Its share of a pass is written straight to 'running' and returned
   * in `PassResult.startedLocally`, sparing that node the fetch round trip and a second write per task.
   */
  localNodeId?: string;
  /**
   * The node whose leader lease (tm_leader) a pass must hold, checked inside the pass's transaction by
   * database time; unset, passes rely on `isLeader` and the planner's lock alone.
   */
  leaseHolderId?: string;
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
  /**
   * The local node's share (`localNodeId`), committed as running: the node that runs this planner
   * puts them in its mailboxes, as if it had fetched them.
   */
  startedLocally: FetchedTask[];
}

export class Planner {
  private readonly loop: Loop<PassResult>;
  private readonly delays: [number, number][];
  private readonly busyDelayMs: number;
  private readonly cfg: Required<
    Omit<
      PlannerOptions,
      'timers' | 'onPass' | 'db' | 'isLeader' | 'onError' | 'localNodeId' | 'leaseHolderId'
    >
  >;
  private wakeTimer: NodeJS.Timeout | undefined;
  private lastPromotion = 0;
  /** Where flow control's scan of groups resumes (flow.ts); a hint only, lost on failover by design. */
  private flowCursor: { key: string; name: string } | null = null;

  constructor(private readonly options: PlannerOptions) {
    this.cfg = {
      batchSize: options.batchSize ?? PLANNER_DEFAULTS.batchSize,
      planFactor: options.planFactor ?? PLANNER_DEFAULTS.planFactor,
      pollingDelay: options.pollingDelay ?? PLANNER_DEFAULTS.pollingDelay,
      nodeTimeoutMs: options.nodeTimeoutMs ?? PLANNER_DEFAULTS.nodeTimeoutMs,
      nodeCpuLimit: options.nodeCpuLimit ?? PLANNER_DEFAULTS.nodeCpuLimit,
      wakeDebounceMs: options.wakeDebounceMs ?? PLANNER_DEFAULTS.wakeDebounceMs,
      fairness: options.fairness ?? PLANNER_DEFAULTS.fairness,
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
      return {
        leader: false,
        claimed: 0,
        assigned: 0,
        freeSlots: 0,
        durationMs: 0,
        delayMs: idle,
        startedLocally: [],
      };
    }
    // The pass's connection may break under it (server restart, terminated backend): checkout()
    // keeps that from ending the process; the pass then fails and the loop retries with backoff.
    const { client, release } = await checkout(this.options.db);
    let result: Omit<PassResult, 'durationMs' | 'delayMs' | 'startedLocally'> & {
      capacityLimited: boolean;
      startedLocally?: FetchedTask[];
    };
    let destroy = false;
    try {
      result = await this.pass(client);
      await client.query('commit');
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
      startedLocally: result.startedLocally ?? [],
    };
    this.options.onPass?.(pass);
    return pass;
  }

  /**
   * One pass inside a transaction the caller commits. Round trips: begin + lock + cluster state, claim,
   * one assignment per node; with one node and no cluster limit in play, claim and assignment are a
   * single statement (the latency path of an idle cluster).
   */
  private async pass(client: pg.PoolClient) {
    const none = { leader: true, claimed: 0, assigned: 0, freeSlots: 0, capacityLimited: false };
    const promote = performance.now() - this.lastPromotion >= PROMOTE_WAITING_EVERY_MS;
    const state = await beginPass(client, {
      leaseHolder: this.options.leaseHolderId,
      nodeTimeoutMs: this.cfg.nodeTimeoutMs,
      promote,
    });
    if (!state) return { ...none, leader: false };
    if (promote) this.lastPromotion = performance.now();
    const nodes: NodeSlots[] = state.nodes
      .filter((n) => n.cpu <= this.cfg.nodeCpuLimit)
      .map((n) => ({
        id: n.id,
        free: Math.max(0, Math.floor(n.capacity * this.cfg.planFactor) - n.held),
        taskNames: new Set(n.task_names),
      }));
    const freeSlots = nodes.reduce((sum, n) => sum + n.free, 0);
    if (freeSlots === 0) {
      if (nodes.length === 0) return none;
      return { ...none, capacityLimited: await anyTaskReady(client) };
    }
    const open = nodes.filter((n) => n.free > 0);
    const runnable = [...new Set(open.flatMap((n) => [...n.taskNames]))];
    const limits = state.limits.filter((l) => runnable.includes(l.name));
    const budget = new Map(limits.map((l) => [l.name, l.max - l.held]));
    const saturated = limits.filter((l) => l.held >= l.max).map((l) => l.name);
    const limit = Math.min(this.cfg.batchSize, freeSlots);
    const outcome = (claimed: number, assigned: number, startedLocally: FetchedTask[]) => ({
      startedLocally,
      leader: true,
      claimed,
      assigned,
      freeSlots,
      capacityLimited: limit < this.cfg.batchSize && claimed === limit,
    });

    const localId = this.options.localNodeId;
    const flow = state.flow_limited || (this.cfg.fairness && state.keyed_ready);
    if (open.length === 1 && limits.length === 0 && !flow) {
      if (open[0].id === localId) {
        const started = await claimForLocalNode(client, localId, limit, runnable, saturated);
        return outcome(started.length, started.length, started);
      }
      const assigned = await claimForNode(client, open[0].id, limit, runnable, saturated);
      return outcome(assigned, assigned, []);
    }

    let candidates: Candidate[];
    let plan;
    let rateLimited = new Set<string>();
    if (flow) {
      const claim = await claimWithFlowControl(client, {
        limit,
        runnable: new Set(runnable),
        saturated: new Set(saturated),
        fairness: this.cfg.fairness,
        cursor: this.flowCursor,
        clusterBudgets: budget,
      });
      this.flowCursor = claim.cursor;
      candidates = claim.candidates;
      rateLimited = claim.rateLimited;
      plan = assignTasks(candidates, nodes, claim.budgets, budgetsOf);
    } else {
      candidates = await claimReadyTasks(client, limit, runnable, saturated);
      plan = assignTasks(candidates, nodes, budget);
    }
    const byNode = new Map<string, string[]>();
    plan.taskIds.forEach((id, i) => {
      const ids = byNode.get(plan.nodeIds[i]);
      if (ids) ids.push(id);
      else byNode.set(plan.nodeIds[i], [id]);
    });
    let startedLocally: FetchedTask[] = [];
    for (const [nodeId, ids] of byNode) {
      if (nodeId === localId) startedLocally = await startTasksOnLocalNode(client, nodeId, ids);
      else await assignTasksToNode(client, nodeId, ids);
    }
    if (rateLimited.size > 0) await logStarts(client, startsToLog(candidates, plan.taskIds, rateLimited));
    // Under flow control a claimed task over a shared budget stays ready: only what was assigned counts
    // for the polling delay, or a pass that can start nothing would come straight back.
    const claimed = flow ? plan.taskIds.length : candidates.length;
    return outcome(claimed, plan.taskIds.length, startedLocally);
  }
}

/**
 * How often a pass also promotes waiting tasks left with nothing to wait for (tm_promote_waiting): the
 * level-triggered release of a join whose last two tasks ended in concurrent transactions.
 */
const PROMOTE_WAITING_EVERY_MS = 100;
