/**
 * Prometheus metrics (prom-client). Two sources:
 *  - node events, counted as they happen in this process: task outcomes per task name (from 'flush'),
 *    planner passes (from 'pass'), leadership changes (from 'leader'), plus the node's in-flight work
 *    read at scrape time;
 *  - the database, read once per scrape (cluster-wide, the same from every process that exports it):
 *    queue depth by task and state, live and dead nodes, per-node load, the leader, tasks created, and
 *    the latency (creation to end) of tasks that ended since this exporter started.
 * Counters of scheduled tasks count what this process scheduled through the HTTP API (`recordScheduled`).
 * Also from node events: schedule-to-start times (from 'fetched'), completer batch sizes and flush times
 * (from 'flush'); at scrape time: the connections of each node's pg pool; and, only in the process whose
 * node leads the cluster, the tasks waiting per key for the keys with the most, read from the database
 * at most every `keyStatsIntervalMs`. docs/observability.md lists every metric.
 *
 * Written by node event handlers and scrape collectors, both on the main thread.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type pg from 'pg';
import type { TaskmillNode } from './node.ts';
import { outcomeLabel, type Outcome } from '../task/outcome.ts';
import type { FlushResult } from './completer.ts';
import type { PassResult } from '../planner/planner.ts';
import { listNodes, queueDepths, type NodeInfo, type QueueDepth } from '../store/inspect.ts';
import { endedLatencies, latencyWatermark } from '../store/history.ts';
import { tasksCreated } from '../store/tasks.ts';
import { topWaitingKeys, type WaitingKey } from '../store/key-stats.ts';
import { TaskmillError } from '../task/errors.ts';
import type { FetchedTask } from '../store/tasks.ts';
import { DEPTH_STATES } from '../task/task-states.ts';
import type { Logger } from '../log/logger.ts';

/** Upper bounds (seconds) of the task latency histogram: 5 ms .. 1 h. */
export const LATENCY_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
];
/** Upper bounds (seconds) of the schedule-to-start histogram: 1 ms .. 10 min. */
export const SCHEDULE_TO_START_BUCKETS = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600,
];
/** Keys of each kind (affinity, concurrency) the per-key gauge exports. */
export const TOP_KEYS = 10;
/** The per-key gauge reads the database at most this often. */
export const KEY_STATS_INTERVAL_MS = 15_000;
/** History rows are counted once they are this old, so a transaction that commits late is not missed. */
const LATENCY_SETTLE_MS = 2_000;
/** Collectors of one scrape share one database snapshot younger than this. */
const SNAPSHOT_TTL_MS = 500;

export interface MetricsOptions {
  /** Database of the cluster gauges; without it only node-fed metrics are exported. */
  db?: Pick<pg.Pool, 'query'>;
  /** Heartbeat age after which a node counts as dead (default: the planner's). */
  nodeTimeoutMs?: number;
  /** Also export Node.js process metrics (default true). */
  processMetrics?: boolean;
  /**
   * The latency histogram counts history rows once they are this old (default 2 s), so a completion
   * that commits late is not missed; a test that ends its tasks before the first scrape may use 0.
   */
  latencySettleMs?: number;
  /**
   * The collectors of one scrape share one database snapshot younger than this (default 500 ms); a
   * test that scrapes twice in a row and wants the second to read the database anew may use 0.
   */
  snapshotTtlMs?: number;
  /** Keys of each kind (affinity, concurrency) in `taskmill_key_waiting_tasks` (default 10, 1..1000). */
  topKeys?: number;
  /** Least time between two reads of `taskmill_key_waiting_tasks` from the database (default 15 s). */
  keyStatsIntervalMs?: number;
  log?: Logger;
}

interface Snapshot {
  depths: QueueDepth[];
  nodes: NodeInfo[];
  created: number;
}

export class TaskmillMetrics {
  readonly registry = new Registry();
  private readonly detachers: (() => void)[] = [];
  private readonly observed = new Set<TaskmillNode>();
  private snapshotAt = 0;
  private snapshotPromise: Promise<Snapshot | undefined> | undefined;
  private keyStats: { at: number; keys: Promise<WaitingKey[]> } | undefined;
  private readonly topKeys: number;
  private readonly keyStatsIntervalMs: number;

  private readonly scheduled = this.counter(
    'taskmill_tasks_scheduled_total',
    'Tasks scheduled through this process (HTTP API).',
    ['task'],
  );
  private readonly completed = this.counter(
    'taskmill_tasks_completed_total',
    'Tasks completed by nodes of this process.',
    ['task'],
  );
  private readonly retried = this.counter(
    'taskmill_tasks_retried_total',
    'Failed attempts rescheduled by the retry policy.',
    ['task'],
  );
  private readonly deadLettered = this.counter(
    'taskmill_tasks_dead_lettered_total',
    'Tasks that failed every attempt and moved to the dead-letter table.',
    ['task'],
  );
  private readonly failed = this.counter(
    'taskmill_tasks_failed_total',
    'Tasks that failed for good without a dead letter (ended failed in history).',
    ['task'],
  );
  private readonly cancelled = this.counter(
    'taskmill_tasks_cancelled_total',
    'Running tasks that ended cancelled on nodes of this process.',
    ['task'],
  );
  private readonly outcomes: Record<string, Counter | undefined> = {
    completed: this.completed,
    retried: this.retried,
    dead: this.deadLettered,
    failed: this.failed,
    cancelled: this.cancelled,
  };
  private readonly stale = this.counter(
    'taskmill_outcomes_stale_total',
    'Outcomes fenced out because their task was reassigned meanwhile.',
  );
  private readonly passes = this.counter(
    'taskmill_planner_passes_total',
    'Planning passes run while leader.',
  );
  private readonly claimed = this.counter(
    'taskmill_planner_claimed_total',
    'Ready tasks claimed by planning passes.',
  );
  private readonly assigned = this.counter(
    'taskmill_planner_assigned_total',
    'Tasks assigned to nodes by planning passes.',
  );
  private readonly passDuration = this.histogram(
    'taskmill_planner_pass_duration_seconds',
    'Duration of one planning pass (claim, choose nodes, assign).',
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
  );
  private readonly runDuration = this.histogram(
    'taskmill_task_run_seconds',
    'Time one run of a task took in its worker thread (handler, decode, encode), by task.',
    [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120],
    ['task', 'outcome'],
  );
  private readonly batchSize = this.histogram(
    'taskmill_planner_batch_size',
    'Tasks claimed by one planning pass.',
    [0, 1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
  );
  private readonly pollingDelay = this.gauge(
    'taskmill_planner_polling_delay_seconds',
    'Sleep the planner chose after its last pass.',
  );
  private readonly freeSlots = this.gauge(
    'taskmill_planner_free_slots',
    'Free slots across live nodes before the last pass.',
  );
  private readonly scheduleToStart = this.histogram(
    'taskmill_task_schedule_to_start_seconds',
    'Time from when a task was due (created, or its delay, retry backoff or wait over) to when a node of this process took it to run, database time, by task.',
    SCHEDULE_TO_START_BUCKETS,
    ['task'],
  );
  private readonly completerBatch = this.histogram(
    'taskmill_completer_batch_size',
    'Outcomes one completer flush wrote to the database (exactly-once tasks commit their own).',
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500],
  );
  private readonly completerFlush = this.histogram(
    'taskmill_completer_flush_seconds',
    'Time one completer flush took to write its outcomes.',
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  );
  private readonly leaderChanges = this.counter(
    'taskmill_leader_changes_total',
    'Leadership gained or lost by nodes of this process.',
    ['node'],
  );

  constructor(private readonly options: MetricsOptions = {}) {
    this.topKeys = options.topKeys ?? TOP_KEYS;
    this.keyStatsIntervalMs = options.keyStatsIntervalMs ?? KEY_STATS_INTERVAL_MS;
    if (!Number.isInteger(this.topKeys) || this.topKeys < 1 || this.topKeys > 1_000) {
      throw new TaskmillError(
        'INVALID_CONFIG',
        `metrics topKeys must be an integer from 1 to 1000, got ${String(options.topKeys)}.`,
      );
    }
    if (!Number.isFinite(this.keyStatsIntervalMs) || this.keyStatsIntervalMs < 0) {
      throw new TaskmillError(
        'INVALID_CONFIG',
        `metrics keyStatsIntervalMs must be a number of milliseconds >= 0, got ${String(options.keyStatsIntervalMs)}.`,
      );
    }
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    this.gauge(
      'taskmill_node_leader',
      'Whether the node holds the planner lease (1) or not (0).',
      ['node'],
      (g) => {
        g.reset();
        for (const node of this.observed) g.set({ node: node.name }, node.isLeader ? 1 : 0);
      },
    );
    this.gauge('taskmill_node_in_flight', 'Tasks the node is running now.', ['node'], (g) => {
      g.reset();
      for (const node of this.observed) g.set({ node: node.name }, node.stats().inFlight);
    });
    this.gauge(
      'taskmill_node_queued',
      'Tasks fetched by the node and waiting in its mailboxes.',
      ['node'],
      (g) => {
        g.reset();
        for (const node of this.observed) g.set({ node: node.name }, node.stats().queued);
      },
    );
    this.gauge(
      'taskmill_node_utilization',
      'In-flight tasks over the node capacity (maxParallelTasksInNode), 0..1.',
      ['node'],
      async (g) => {
        g.reset();
        const snapshot = await this.snapshot();
        for (const node of this.observed) {
          const capacity = snapshot?.nodes.find((n) => n.id === node.id)?.capacity;
          if (capacity) g.set({ node: node.name }, node.stats().inFlight / capacity);
        }
      },
    );
    this.gauge(
      'taskmill_node_connections',
      'Connections a node of this process has open now, by part of its budget: main (its pool), listener (its LISTEN session), worker (its worker threads); budget: its maxConnections.',
      ['node', 'part'],
      (g) => {
        g.reset();
        for (const node of this.observed) {
          const use = node.connections();
          for (const part of ['main', 'listener', 'worker'] as const)
            g.set({ node: node.name, part }, use[part]);
          g.set({ node: node.name, part: 'budget' }, node.connectionBudget.total);
        }
      },
    );
    this.gauge(
      'taskmill_db_pool_connections',
      "Connections of a pg pool by state: total (open) and idle; pool is node (a node of this process) or exporter (this exporter's own).",
      ['node', 'pool', 'state'],
      (g) => {
        g.reset();
        for (const { node, pool, stats } of this.pools()) {
          g.set({ node, pool, state: 'total' }, stats.totalCount);
          g.set({ node, pool, state: 'idle' }, stats.idleCount);
        }
      },
    );
    this.gauge(
      'taskmill_db_pool_waiting_clients',
      'Queries waiting for a connection of a pg pool (all its connections are busy).',
      ['node', 'pool'],
      (g) => {
        g.reset();
        for (const { node, pool, stats } of this.pools()) g.set({ node, pool }, stats.waitingCount);
      },
    );
    if (!options.db) return;
    this.gauge(
      'taskmill_key_waiting_tasks',
      'Tasks due and waiting to start per key, for the keys of each kind (affinity, concurrency) with the most (topKeys); exported only by the process whose node leads the cluster, read at most every keyStatsIntervalMs.',
      ['kind', 'group', 'key'],
      async (g) => {
        g.reset();
        for (const k of await this.waitingKeys())
          g.set({ kind: k.kind, group: k.group, key: k.key }, k.waiting);
      },
    );
    this.gauge(
      'taskmill_cluster_up',
      'Whether the last scrape could read the database (1) or not (0).',
      [],
      async (g) => {
        g.set((await this.snapshot()) ? 1 : 0);
      },
    );
    this.gauge(
      'taskmill_queue_depth',
      `Pending tasks by task name and state (${DEPTH_STATES.join(', ')}; ready = due, delayed = first attempt not yet due, retrying = failed and waiting for its next attempt, dead = dead letters).`,
      ['task', 'state'],
      async (g) => {
        g.reset();
        const depths = (await this.snapshot())?.depths ?? [];
        // Every state of a task that has any pending row, zeros included, so each series stays continuous.
        for (const task of new Set(depths.map((d) => d.name)))
          for (const state of DEPTH_STATES) g.set({ task, state }, 0);
        for (const d of depths) g.set({ task: d.name, state: d.state }, d.count);
      },
    );
    this.gauge('taskmill_cluster_nodes', 'Registered nodes by heartbeat status.', ['status'], async (g) => {
      g.reset();
      const nodes = (await this.snapshot())?.nodes;
      if (!nodes) return;
      g.set({ status: 'alive' }, nodes.filter((n) => n.alive).length);
      g.set({ status: 'dead' }, nodes.filter((n) => !n.alive).length);
    });
    this.gauge(
      'taskmill_cluster_leader',
      'Whether some node holds an unexpired planner lease.',
      [],
      async (g) => {
        const nodes = (await this.snapshot())?.nodes;
        g.set(nodes?.some((n) => n.leader) ? 1 : 0);
      },
    );
    this.gauge(
      'taskmill_cluster_node_in_flight',
      'In-flight tasks per live node, as of its last heartbeat.',
      ['node'],
      async (g) => {
        g.reset();
        for (const n of (await this.snapshot())?.nodes ?? [])
          if (n.alive) g.set({ node: n.name }, n.inFlight);
      },
    );
    this.gauge(
      'taskmill_cluster_node_capacity',
      'Capacity (maxParallelTasksInNode) per live node.',
      ['node'],
      async (g) => {
        g.reset();
        for (const n of (await this.snapshot())?.nodes ?? [])
          if (n.alive) g.set({ node: n.name }, n.capacity);
      },
    );
    this.gauge(
      'taskmill_cluster_node_connections',
      'Connections open per live node, as of its last heartbeat (nodes that report them).',
      ['node'],
      async (g) => {
        g.reset();
        for (const n of (await this.snapshot())?.nodes ?? [])
          if (n.alive && n.connections !== null) g.set({ node: n.name }, n.connections);
      },
    );
    this.gauge(
      'taskmill_cluster_node_max_connections',
      'Connection budget (maxConnections) per live node (nodes that report it).',
      ['node'],
      async (g) => {
        g.reset();
        for (const n of (await this.snapshot())?.nodes ?? [])
          if (n.alive && n.maxConnections !== null) g.set({ node: n.name }, n.maxConnections);
      },
    );
    this.counter(
      'taskmill_cluster_tasks_created_total',
      'Task rows inserted since the schema was created (identity sequence of tm_tasks; counts rolled-back inserts too).',
      [],
      async (g) => {
        const snapshot = await this.snapshot();
        if (!snapshot) return;
        g.reset();
        g.inc(snapshot.created);
      },
    );
    this.registry.registerMetric(
      new LatencyHistogram(options.db, options.latencySettleMs ?? LATENCY_SETTLE_MS, options.log) as never,
    );
  }

  /** Counts outcomes, passes and leadership of a node until it stops or `detach` is called. */
  observe(node: TaskmillNode): () => void {
    const onFlush = (flush: FlushResult) => {
      for (const a of flush.accepted) this.outcomes[a.outcome as string]?.inc({ task: a.name });
      if (flush.stale) this.stale.inc(flush.stale);
      if (flush.batchSize > 0) {
        this.completerBatch.observe(flush.batchSize);
        this.completerFlush.observe(flush.durationMs / 1000);
      }
    };
    const onPass = (pass: PassResult) => {
      if (!pass.leader) return;
      this.passes.inc();
      this.claimed.inc(pass.claimed);
      this.assigned.inc(pass.assigned);
      this.passDuration.observe(pass.durationMs / 1000);
      this.batchSize.observe(pass.claimed);
      this.pollingDelay.set(pass.delayMs / 1000);
      this.freeSlots.set(pass.freeSlots);
    };
    const onLeader = () => this.leaderChanges.inc({ node: node.name });
    const onFetched = (tasks: FetchedTask[]) => {
      for (const t of tasks) this.scheduleToStart.observe({ task: t.name }, Math.max(0, t.waitedMs) / 1000);
    };
    const onTask = (run: Outcome) => {
      if (run.runMs !== undefined)
        this.runDuration.observe({ task: run.task.name, outcome: outcomeLabel(run) }, run.runMs / 1000);
    };
    node.on('task', onTask);
    node.on('flush', onFlush);
    node.on('pass', onPass);
    node.on('leader', onLeader);
    node.on('fetched', onFetched);
    this.observed.add(node);
    const detach = () => {
      node.off('task', onTask);
      node.off('flush', onFlush);
      node.off('pass', onPass);
      node.off('leader', onLeader);
      node.off('fetched', onFetched);
      this.observed.delete(node);
    };
    this.detachers.push(detach);
    return detach;
  }

  /** Counts tasks this process scheduled (the HTTP API calls it after each committed submit). */
  recordScheduled(name: string, count = 1): void {
    this.scheduled.inc({ task: name }, count);
  }

  /** Prometheus text exposition. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  close(): void {
    for (const detach of this.detachers.splice(0)) detach();
    this.registry.clear();
  }

  /** The pg pools to report: each observed node's, and the exporter's own when it is another pool. */
  private pools(): { node: string; pool: string; stats: PoolStats }[] {
    const out = [...this.observed].map((n) => ({
      node: n.name,
      pool: 'node',
      stats: n.client.pool as PoolStats,
    }));
    const own = this.options.db as Partial<PoolStats> | undefined;
    if (own && typeof own.totalCount === 'number' && !out.some((p) => p.stats === own))
      out.push({ node: '', pool: 'exporter', stats: own as PoolStats });
    return out;
  }

  /**
   * The keys with the most waiting tasks while a node of this process leads the cluster (one exporter
   * reads them, not every one), read anew at most every keyStatsIntervalMs; none otherwise.
   */
  private waitingKeys(): Promise<WaitingKey[]> {
    const db = this.options.db;
    if (!db || ![...this.observed].some((n) => n.isLeader)) {
      this.keyStats = undefined;
      return Promise.resolve([]);
    }
    if (this.keyStats && Date.now() - this.keyStats.at < this.keyStatsIntervalMs) return this.keyStats.keys;
    const keys = topWaitingKeys(db, this.topKeys).catch((error: unknown) => {
      this.options.log?.warn({ err: error }, 'metrics: cannot read the waiting keys');
      this.keyStats = undefined;
      return [];
    });
    this.keyStats = { at: Date.now(), keys };
    return keys;
  }

  private snapshot(): Promise<Snapshot | undefined> {
    const db = this.options.db;
    if (!db) return Promise.resolve(undefined);
    const ttlMs = this.options.snapshotTtlMs ?? SNAPSHOT_TTL_MS;
    if (this.snapshotPromise && Date.now() - this.snapshotAt < ttlMs) return this.snapshotPromise;
    this.snapshotAt = Date.now();
    this.snapshotPromise = Promise.all([
      queueDepths(db),
      listNodes(db, this.options.nodeTimeoutMs),
      tasksCreated(db),
    ]).then(
      ([depths, nodes, created]) => ({ depths, nodes, created }),
      (error: unknown) => {
        this.options.log?.warn({ err: error }, 'metrics: cannot read the database');
        return undefined;
      },
    );
    return this.snapshotPromise;
  }

  /** A counter; `collect` (if any) sets it from a source at scrape time. */
  private counter(
    name: string,
    help: string,
    labelNames: string[] = [],
    collect?: (counter: Counter) => void | Promise<void>,
  ): Counter {
    const counter: Counter = new Counter({
      name,
      help,
      labelNames,
      registers: [this.registry],
      collect: collect && (() => collect(counter)),
    });
    return counter;
  }

  /** A gauge; `collect` (if any) sets it at scrape time. */
  private histogram(name: string, help: string, buckets: number[], labelNames: string[] = []): Histogram {
    return new Histogram({ name, help, labelNames, buckets, registers: [this.registry] });
  }

  private gauge(
    name: string,
    help: string,
    labelNames: string[] = [],
    collect?: (gauge: Gauge) => void | Promise<void>,
  ): Gauge {
    const gauge: Gauge = new Gauge({
      name,
      help,
      labelNames,
      registers: [this.registry],
      collect: collect && (() => collect(gauge)),
    });
    return gauge;
  }
}

/** What a pg.Pool says of its connections. */
type PoolStats = Pick<pg.Pool, 'totalCount' | 'idleCount' | 'waitingCount'>;

interface LatencySeries {
  labels: { task: string; outcome: string };
  buckets: number[];
  sum: number;
  count: number;
}

/**
 * `taskmill_task_latency_seconds{task,outcome}`: creation to end of the tasks that ended (tm_history)
 * since this exporter's first scrape. Each scrape adds the rows that ended between the previous
 * watermark and now - LATENCY_SETTLE_MS (database time), aggregated in SQL: one range scan of the
 * finished_at index per scrape, whatever the task rate. A prom-client Histogram cannot take
 * pre-aggregated counts, so this metric renders its own series.
 */
class LatencyHistogram {
  readonly name = 'taskmill_task_latency_seconds';
  readonly help =
    'Time from creation to end (completed, failed, cancelled) of tasks ended since this exporter started; cluster-wide, from history.';
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly series = new Map<string, LatencySeries>();
  private watermark: Date | undefined;

  constructor(
    private readonly db: Pick<pg.Pool, 'query'>,
    private readonly settleMs: number,
    private readonly log?: Logger,
  ) {}

  async get() {
    await this.refresh().catch((error: unknown) =>
      this.log?.warn({ err: error }, 'metrics: latency scrape failed'),
    );
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const s of this.series.values()) {
      let cumulative = 0;
      LATENCY_BUCKETS.forEach((le, i) => {
        cumulative += s.buckets[i];
        values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le }, value: cumulative });
      });
      values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le: '+Inf' }, value: s.count });
      values.push({ metricName: `${this.name}_sum`, labels: s.labels, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: s.labels, value: s.count });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  private async refresh(): Promise<void> {
    if (!this.watermark) {
      this.watermark = await latencyWatermark(this.db, this.settleMs);
      return;
    }
    // Bucket i holds latencies in (bounds[i-1], bounds[i]]; index = number of bounds below the value.
    const { rows, upto } = await endedLatencies(this.db, this.watermark, this.settleMs, LATENCY_BUCKETS);
    this.watermark = upto;
    for (const row of rows) {
      const key = `${row.name}\u0000${row.state}`;
      let s = this.series.get(key);
      if (!s) {
        s = {
          labels: { task: row.name, outcome: row.state },
          buckets: LATENCY_BUCKETS.map(() => 0),
          sum: 0,
          count: 0,
        };
        this.series.set(key, s);
      }
      if (row.bucket < LATENCY_BUCKETS.length) s.buckets[row.bucket] += row.n;
      s.sum += row.sum;
      s.count += row.n;
    }
  }
}
