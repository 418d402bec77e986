/**
 * A taskmill node: the process-level composition of the runtime and, while it holds the lease, the
 * planner. Path of a task through a node:
 *   planner NOTIFY -> fetcher (assigned -> running) -> mailboxes -> dispatcher (worker threads)
 *   -> outcome -> completer (batched, fenced commit) -> planner NOTIFY (capacity freed).
 *
 * States: starting -> running -> stopping -> stopped. `stop()` is idempotent and graceful: stop
 * planning and fetching, hand queued tasks back, let running tasks finish within `shutdownGraceMs`
 * (then abort them and hand them back), commit outcomes, release the lease and the node row.
 * Owned by the main thread; the worker threads see only protocol.ts messages.
 */
import { EventEmitter } from 'node:events';
import pg from 'pg';
import { v4 as uuidv4 } from 'uuid';
import { migrate, assertSchemaKnown } from '../migrations/migrator.ts';
import type { MaintenanceResult } from '../planner/maintenance.ts';
import type { PassResult } from '../planner/planner.ts';
import { TaskmillClient } from '../client/client.ts';
import { Completer, type FlushResult } from './completer.ts';
import { Dispatcher } from './dispatcher.ts';
import { Fetcher } from './fetcher.ts';
import { Cancellations } from './cancellations.ts';
import { Heartbeat } from './heartbeat.ts';
import { FailureLog } from '../log/failure-log.ts';
import { Listener } from '../store/listener.ts';
import { createLogger, type Logger } from '../log/logger.ts';
import { Mailboxes } from './mailboxes.ts';
import { NODE_DEFAULTS, parseNodeConfig, type NodeConfig, type NodeOptions } from './node-config.ts';
import { OutcomeRouter } from './outcome-router.ts';
import { Planning } from './planning.ts';
import { Pump } from './pump.ts';
import { registerTaskDefinitions } from './definitions.ts';
import { stopOnSignals } from './signals.ts';
import type { Outcome } from '../task/outcome.ts';
import { workerShellPolicy } from '../task/shell-task.ts';
import { assertHandlerExists, type TaskDefinition } from '../task/task-definition.ts';
import { CANCEL_CHANNEL, NODE_CHANNEL } from '../store/channels.ts';
import { closeNodeToNewTasks } from '../store/nodes.ts';
import { releaseTasks, tasksNoLongerHeld, type FetchedTask } from '../store/tasks.ts';
import { ConnectionClient } from '../store/connections.ts';
import { connectionConfig, poolConnectionConfig, workerNetworkOptions } from '../store/network.ts';
import { ProgressRecorder } from './progress-recorder.ts';
import { ConnectionSlots } from '../worker/connection-slots.ts';
import { connectionsInUse, type ConnectionSplit, type ConnectionUse } from './connection-budget.ts';

export type { NodeOptions } from './node-config.ts';

export interface NodeStats {
  id: string;
  name: string;
  leader: boolean;
  queued: number;
  inFlight: number;
  completed: number;
  retried: number;
  /** Ended failed (dead-lettered or not). */
  failed: number;
  stale: number;
}

export interface TaskmillNodeEvents {
  /**
   * One task's run on this node ended, before its outcome is committed: the outcome as its worker thread
   * reported it (task/outcome.ts; `outcomeLabel()` names it), with its task and run time.
   */
  task: [Outcome<FetchedTask>];
  /**
   * Tasks this node took to run (fetched, or handed over by its own planner), each with `waitedMs`, its
   * schedule-to-start time. Emitted once per batch, only while someone listens.
   */
  fetched: [FetchedTask[]];
  pass: [PassResult];
  flush: [FlushResult];
  leader: [boolean];
  /**
   * On the leader, after a maintenance pass that did something (dead nodes removed, tasks recovered,
   * history purged, dangling waits released); a pass that found nothing to do emits nothing.
   */
  maintenance: [MaintenanceResult];
  error: [unknown];
}

type Phase = 'starting' | 'running' | 'stopping' | 'stopped';

export class TaskmillNode extends EventEmitter<TaskmillNodeEvents> {
  readonly id = uuidv4();
  readonly name: string;
  readonly client: TaskmillClient;
  readonly log: Logger;
  private phase: Phase = 'starting';
  private readonly pool: pg.Pool;
  private readonly ownsPool: boolean;
  private readonly defs: Map<string, TaskDefinition>;
  private readonly mailboxes: Mailboxes<FetchedTask>;
  /**
   * Tasks fetched again while an older assignment of them still runs here (the node was declared dead
   * and the task came back to it): each waits for that run, now aborted as lost, to end. Runs here are
   * known by task id, so two runs of one task never overlap on a node.
   */
  private readonly afterLostRun = new Map<string, FetchedTask>();
  private readonly dispatcher: Dispatcher;
  private readonly completer: Completer;
  private readonly outcomes: OutcomeRouter;
  private readonly pump: Pump;
  private readonly heartbeat: Heartbeat;
  private readonly fetcher: Fetcher;
  /** Level-triggered safety net for cancellation notifications this node missed. */
  private readonly cancels: Cancellations;
  private readonly planning: Planning;
  private readonly listener: Listener | undefined;
  /** The worker threads' share of the connection budget (connection-budget.ts). */
  private readonly connectionSlots: ConnectionSlots;
  private readonly progress: ProgressRecorder;
  private stopping: Promise<void> | undefined;
  private readonly counters = { completed: 0, retried: 0, failed: 0, stale: 0 };
  private readonly failures: FailureLog;
  /** When the database last came back after an outage this node saw (epoch ms). */
  private databaseBackAt = 0;

  /** Validates the configuration, migrates (unless told not to), registers and starts the node. */
  static async start(options: NodeOptions): Promise<TaskmillNode> {
    const config = parseNodeConfig(options);
    for (const def of config.tasks) assertHandlerExists(def);
    const node = new TaskmillNode(config);
    try {
      await node.init(config);
    } catch (error) {
      await node.stop().catch(() => {});
      throw error;
    }
    return node;
  }

  private constructor(private readonly config: NodeConfig) {
    super();
    this.name = config.name;
    this.log = createLogger(config.logLevel, { node: config.name });
    this.failures = new FailureLog(this.log);
    const connectionString = config.connectionString ?? process.env.DATABASE_URL;
    this.pool =
      (config.pool as pg.Pool | undefined) ??
      new pg.Pool({
        connectionString,
        max: config.connections.main,
        application_name: `taskmill-node`,
        Client: ConnectionClient,
        ...poolConnectionConfig(config.network),
      });
    this.ownsPool = !config.pool;
    // An idle pooled connection that dies (server restart, terminated backend) is dropped by the pool.
    // Once the node stopped, a connection the server closes (say, while it shuts down after the node)
    // is no longer the node's failure: a caller's pool outlives the node, and is the caller's to watch.
    this.pool.on('error', (error) => this.phase !== 'stopped' && this.fail(error, 'pool'));
    // The LISTEN session is the budget's one listener connection: node.client's waits share it, and poll
    // when the node has none (notifications off).
    if (config.notifications)
      this.listener = new Listener(
        { connectionString: config.listenUrl ?? connectionString ?? '', ...connectionConfig(config.network) },
        (e) => this.fail(e, 'listener'),
      );
    this.client = new TaskmillClient({
      pool: this.pool,
      notify: config.notifications,
      listen: this.listener ?? false,
    });
    // Seats: every thread of the dispatcher's two pools (threads each) alive at once, with replacements.
    this.connectionSlots = ConnectionSlots.create(config.connections.worker, 2 * config.threads + 16);
    this.defs = new Map(config.tasks.map((d) => [d.name, d]));
    const onError = (source: string) => (error: unknown) => this.fail(error, source);

    this.mailboxes = new Mailboxes((name) => this.defs.get(name)?.maxParallelInNode);
    this.dispatcher = new Dispatcher({
      handlers: Object.fromEntries(config.tasks.map((d) => [d.name, d.handler])),
      timeoutOf: (name) => this.defs.get(name)?.timeoutMs,
      onOutcome: (outcome) => this.onOutcome(outcome),
      exactlyOnce: (name) => this.defs.get(name)?.guarantee === 'exactly-once',
      connectionString: connectionString ?? '',
      network: workerNetworkOptions(config.network),
      connectionSlots: this.connectionSlots,
      nodeId: this.id,
      threads: config.threads,
      maxBatchSize: config.maxBatchSize,
      abortGraceMs: config.abortGraceMs,
      execArgv: config.workerExecArgv,
      threadHeapLimitMb: config.threadHeapLimitMb,
      shell: workerShellPolicy(config.shell, config.abortGraceMs),
      limits: config.limits,
      // A wait longer than the history retention is refused (docs/durable-waits.md).
      maxWaitMs: config.historyRetentionMs,
    });
    this.completer = new Completer({
      db: this.pool,
      nodeId: this.id,
      ...config.completer,
      maxErrorBytes: config.limits.maxErrorBytes,
      onFlush: (result) => this.onFlush(result),
      onError: onError('completer'),
    });
    this.outcomes = new OutcomeRouter({
      definitionOf: (name) => this.defs.get(name),
      completer: this.completer,
      log: this.log,
    });
    this.pump = new Pump({
      mailboxes: this.mailboxes,
      dispatcher: this.dispatcher,
      completer: this.completer,
      maxParallelTasksInNode: config.maxParallelTasksInNode,
    });
    this.progress = new ProgressRecorder({ db: this.pool, nodeId: this.id, onError: onError('progress') });
    this.heartbeat = new Heartbeat({
      db: this.pool,
      node: {
        id: this.id,
        name: this.name,
        capacity: config.maxParallelTasksInNode,
        taskNames: [...this.defs.keys()],
      },
      intervalMs: config.heartbeatIntervalMs,
      inFlight: () => this.dispatcher.inFlight + this.mailboxes.size,
      connections: () => ({ inUse: this.connections().total, max: config.maxConnections }),
      onReregistered: () => void this.dropLostTasks(),
      onError: onError('heartbeat'),
      onBeat: () => this.recovered('heartbeat'),
    });
    const fetchIntervalMs =
      config.fetchIntervalMs ??
      (config.notifications ? NODE_DEFAULTS.fetchIntervalMs : NODE_DEFAULTS.fetchIntervalWithoutNotifyMs);
    this.fetcher = new Fetcher({
      db: this.pool,
      nodeId: this.id,
      intervalMs: fetchIntervalMs,
      deliver: (tasks) => this.accept(tasks),
      stopping: () => this.phase === 'stopping',
      onError: onError('fetcher'),
      onSuccess: () => this.recovered('fetcher'),
    });
    this.cancels = new Cancellations({
      db: this.pool,
      nodeId: this.id,
      intervalMs: config.heartbeatIntervalMs,
      cancel: (id) => this.cancelLocal(id),
      onError: onError('cancellations'),
      onSuccess: () => this.recovered('cancellations'),
    });

    this.planning = new Planning({
      db: this.pool,
      nodeId: this.id,
      config,
      log: this.log,
      startedLocally: (tasks) => this.accept(tasks),
      onPass: (pass) => this.emit('pass', pass),
      onLeader: (leader) => this.emit('leader', leader),
      onMaintenance: (result) => this.emit('maintenance', result),
      databaseBackAt: () => this.databaseBackAt,
      onError,
    });
  }

  private async init(config: NodeConfig): Promise<void> {
    if (config.migrate) await migrate(this.pool);
    else await assertSchemaKnown(this.pool);
    await registerTaskDefinitions(this.pool, [...this.defs.values()]);
    if (this.listener) {
      await this.listener.subscribe(NODE_CHANNEL, (payload, reconnected) => {
        if (reconnected || payload === this.id) this.fetcher.wake();
      });
      await this.listener.subscribe(CANCEL_CHANNEL, (payload, reconnected) => {
        if (reconnected) this.cancels.wake();
        else this.cancels.notified(payload);
      });
      await this.planning.subscribe(this.listener);
    }
    await this.heartbeat.runOnce();
    this.progress.start();
    this.heartbeat.start();
    this.fetcher.start();
    this.cancels.start();
    await this.planning.start();
    if (config.handleSignals) stopOnSignals(() => this.stop(), this.log);
    this.phase = 'running';
    this.log.info(
      {
        id: this.id,
        tasks: [...this.defs.keys()],
        capacity: config.maxParallelTasksInNode,
        planner: this.planning.plans,
      },
      'node started',
    );
  }

  /** False while this node's loops cannot reach the database (from the first failure until a success). */
  get databaseAvailable(): boolean {
    return !this.failures.databaseDown;
  }

  /** Connections this node has open now, by part of its budget (`config.maxConnections`). */
  connections(): ConnectionUse {
    return connectionsInUse({
      pool: this.pool,
      listening: this.listener?.open ?? false,
      slots: this.connectionSlots,
    });
  }

  /** The connection budget and its split (docs/connections.md). */
  get connectionBudget(): ConnectionSplit {
    return this.config.connections;
  }

  get isLeader(): boolean {
    return this.planning.isLeader;
  }

  get state(): Phase {
    return this.phase;
  }

  stats(): NodeStats {
    return {
      id: this.id,
      name: this.name,
      leader: this.isLeader,
      queued: this.mailboxes.size,
      inFlight: this.dispatcher.inFlight,
      ...this.counters,
    };
  }

  /** Runs one planning pass now (when leader); for tests and tools. */
  planOnce(): Promise<PassResult> {
    return this.planning.planOnce();
  }

  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.phase = 'stopping';
    const deadline = Date.now() + this.config.shutdownGraceMs;
    await closeNodeToNewTasks(this.pool, this.id).catch(() => {});
    await this.listener?.close();
    // The LISTEN session of node.client.waitForTask(), if one was opened (the pool stays the node's).
    await this.client.close();
    await this.planning.stop();
    await this.fetcher.stop();
    await this.cancels.stop();

    // Queued tasks go back now, not after the grace period: another node can run them meanwhile.
    const queued = [...this.mailboxes.drain(), ...this.afterLostRun.values()].map((t) => t.id);
    this.afterLostRun.clear();
    if (queued.length > 0)
      await releaseTasks(this.pool, this.id, queued).catch((error) => this.fail(error, 'shutdown'));
    await this.waitForInFlight(deadline);
    if (this.dispatcher.inFlight > 0) {
      this.log.warn({ inFlight: this.dispatcher.inFlight }, 'grace period over: aborting running tasks');
      for (const id of this.dispatcher.runningIds()) this.dispatcher.abort(id, 'shutdown');
      await this.waitForInFlight(Date.now() + this.config.abortGraceMs + 1_000);
    }
    await this.progress.stop();
    const left = await this.completer.drain(Date.now() + Math.max(5_000, this.config.shutdownGraceMs));
    if (left > 0) this.log.error({ left }, 'outcomes not committed; the planner will take these tasks back');
    // Hand back what was queued or aborted, and anything assigned after the fetcher stopped.
    const released = await releaseTasks(this.pool, this.id).catch(
      (error) => (this.fail(error, 'shutdown'), 0),
    );
    await this.heartbeat.stop().catch((error) => this.fail(error, 'shutdown'));
    await this.dispatcher.destroy();
    if (this.ownsPool) await this.pool.end();
    this.phase = 'stopped';
    this.log.info(
      { handedBack: released, queued: queued.length + this.outcomes.handedBack.length },
      'node stopped',
    );
  }

  private async waitForInFlight(deadline: number): Promise<void> {
    while (this.dispatcher.inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  }

  /** Tasks now running on this node (fetched, or delivered by the local planner). */
  private accept(tasks: FetchedTask[]): void {
    if (tasks.length > 0 && this.listenerCount('fetched') > 0) this.emit('fetched', tasks);
    for (const task of tasks) {
      if (this.supersedes(task)) continue;
      if (task.cancelRequested) this.outcomes.cancelledBeforeStart(task);
      else this.mailboxes.push(task);
    }
    if (tasks.length > 0) this.pump.pump();
  }

  /**
   * A newer assignment of a task this node still holds under an older one: the older one was lost (the
   * task was taken back and given to this node again). Dropped if queued; if running, aborted as lost,
   * and the new one waits for it to end (true).
   */
  private supersedes(task: FetchedTask): boolean {
    const older = (t: FetchedTask) => t.assignment !== task.assignment;
    const queued = this.mailboxes.remove(task.id, older);
    const running = this.dispatcher.runningTask(task.id);
    const lostRun = running && older(running) ? running : undefined;
    const lost = queued ?? lostRun;
    if (lost) {
      this.log.warn(
        { task: task.id, assignment: task.assignment, lost: lost.assignment },
        'task given back to this node while it still held an older assignment; that one is stopped',
      );
    }
    if (!lostRun) return false;
    this.dispatcher.abort(task.id, 'lost');
    this.afterLostRun.set(task.id, task);
    return true;
  }

  private onOutcome(outcome: Outcome<FetchedTask>): void {
    if (this.listenerCount('task') > 0) this.emit('task', outcome);
    this.mailboxes.release(outcome.task);
    this.pump.pump();
    this.outcomes.route(outcome);
    const next = this.afterLostRun.get(outcome.task.id);
    if (next && next.assignment !== outcome.task.assignment) {
      this.afterLostRun.delete(next.id);
      this.accept([next]);
    }
  }

  private onFlush(result: FlushResult): void {
    this.counters.completed += result.completed;
    this.counters.retried += result.retried;
    this.counters.failed += result.failed + result.deadLettered;
    this.counters.stale += result.stale;
    if (result.stale > 0)
      this.log.warn({ stale: result.stale }, 'outcomes fenced out: tasks were reassigned');
    this.emit('flush', result);
  }

  /**
   * The node was declared dead (cut off from the database longer than the node timeout) and has
   * registered again: the tasks it held then were taken back and may run elsewhere. Those the
   * database says it no longer holds are dropped if queued and aborted if running, their outcome
   * written nowhere (one already waiting in the completer is fenced out at commit); tasks assigned to
   * it since it came back are kept.
   */
  private async dropLostTasks(): Promise<void> {
    const held = [
      ...this.mailboxes.waiting(),
      ...this.dispatcher.runningTasks(),
      ...this.afterLostRun.values(),
    ];
    const lost =
      held.length === 0
        ? []
        : await tasksNoLongerHeld(this.pool, this.id, held).catch((error) => {
            this.fail(error, 'heartbeat');
            return [];
          });
    let dropped = 0;
    let aborted = 0;
    // Each under the assignment it was lost with: a newer one of the same task given since is kept.
    for (const { id, assignment } of lost) {
      if (this.mailboxes.remove(id, (t) => t.assignment === assignment)) dropped++;
      else if (this.afterLostRun.get(id)?.assignment === assignment) {
        this.afterLostRun.delete(id);
        dropped++;
      } else if (
        this.dispatcher.runningTask(id)?.assignment === assignment &&
        this.dispatcher.abort(id, 'lost')
      )
        aborted++;
    }
    this.log.warn({ dropped, aborted }, 'node was declared dead and registered again; tasks it lost stopped');
  }

  /** Cancels a task this node holds: dropped if still queued, aborted if running. */
  private cancelLocal(id: string): void {
    const queued = this.mailboxes.remove(id);
    if (queued) {
      this.outcomes.cancelledBeforeStart(queued);
      return;
    }
    this.dispatcher.abort(id, 'cancel');
  }

  /**
   * A background failure: logged through the FailureLog (one line when it starts, at most one per
   * interval while it goes on) and emitted, every time, as an 'error' event.
   */
  private fail(error: unknown, source: string): void {
    this.failures.failure(source, error);
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }

  /**
   * `source` reached the database. After an outage every loop is woken (they may be backing off), and
   * dead-node recovery holds off for DATABASE_BACK_GRACE_BEATS heartbeats: every node's heartbeat went
   * stale while the database was away, and each must get the chance to beat again before the leader
   * judges it dead.
   */
  private recovered(source: string): void {
    if (!this.failures.recovered(source)) return;
    this.databaseBackAt = Date.now();
    this.fetcher.wake();
    this.cancels.wake();
    this.planning.wake();
  }
}

/** Starts a node; see NodeOptions. */
export function startNode(options: NodeOptions): Promise<TaskmillNode> {
  return TaskmillNode.start(options);
}
