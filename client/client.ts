/**
 * The producer side of the public API: schedule tasks (one, many in one statement, or inside the
 * caller's own transaction), look them up, cancel the ones that have not started. Usable from any
 * process; no node needs to run in it.
 */
import pg from 'pg';
import { TaskmillError, isUndefinedTable, notMigratedError } from '../task/errors.ts';
import { FailureLog } from '../log/failure-log.ts';
import { createLogger, type Logger } from '../log/logger.ts';
import {
  newTask,
  isUuid,
  SCHEDULE_LIMITS,
  type NewTask,
  type ScheduleContext,
} from '../task/schedule-context.ts';
import {
  cancelTasks,
  findTask,
  insertTasks,
  insertWaitingTasks,
  type Queryable,
  type TaskRecord,
  type Wait,
} from '../store/tasks.ts';
import { cancelWorkflow, waitForWorkflow, workflowStatus, type WorkflowStatus } from './workflows.ts';
import { TASK_NAME_PATTERN, isTaskDefinition, type TaskDefinition } from '../task/task-definition.ts';
import { decode, encode } from '../task/codec.ts';
import { checkEventName } from '../task/events.ts';
import { sendEvent } from '../store/steps.ts';
import { retryPolicySchema } from '../task/retry-policy.ts';
import {
  ENDED_STATES,
  retryOutlook,
  visibleState,
  type RetryOutlook,
  type TaskStatus,
} from '../task/task-states.ts';
import { clusterOverview, type ClusterOverview } from '../store/inspect.ts';
import type { CronInfo } from '../store/crons.ts';
import { ConnectionClient } from '../store/connections.ts';
import { definitionOptions, retryOptionsAt } from '../store/task-defs.ts';
import { Listener } from '../store/listener.ts';
import { insertKeyedTasks } from '../store/task-keys.ts';
import { readProgress } from '../store/progress.ts';
import { ATTRIBUTES, activeTracer, endWithError, startSpan, traceparentOf } from '../log/tracing.ts';
import { TaskWaiter, checkWaitOptions, type WaitForTaskOptions } from './task-waiter.ts';
import { listFlowLimits, setConcurrencyLimit, setRateLimit, type FlowLimit } from '../store/flow.ts';
import {
  checkKeyPattern,
  concurrencyOptionSchema,
  parseFlowOption,
  rateLimitOptionSchema,
} from '../task/flow-options.ts';

export interface ClientOptions {
  /** Default: DATABASE_URL. */
  connectionString?: string;
  /** Use this pool instead of opening one (it is not closed by close()). */
  pool?: pg.Pool;
  /** NOTIFY the planner when tasks are scheduled (default true). */
  notify?: boolean;
  /**
   * How waitForTask() and waitForWorkflow() hear of ended tasks: by default a LISTEN session opened with
   * the pool's settings; a connection string: the LISTEN session's server (a direct one, when the pool
   * goes through PgBouncer in transaction mode, which cannot carry LISTEN); a Listener: a session to
   * share (a node's; never closed by the client); false: no LISTEN, waits poll (docs/connections.md).
   */
  listen?: string | Listener | false;
  /** Where the client's own pool reports lost connections (default: a pino logger, level TASKMILL_LOG_LEVEL). */
  log?: Logger;
}

export interface ScheduleOptions {
  /** Run the insert on this client, e.g. inside the caller's open transaction. */
  client?: Queryable;
  /**
   * DAG dependencies: the task waits until every one of these tasks completed successfully. They must
   * exist already; if one fails for good or is cancelled, this task ends as failed (and so do its own
   * dependents) with the reason in its error.
   */
  dependsOn?: string[];
}

export interface TaskInfo<R = unknown> extends Omit<TaskRecord, 'result' | 'state'> {
  /** One of TASK_STATES (task-states.ts): `delayed` and `retrying` are derived from the row. */
  state: TaskStatus;
  result: R | undefined;
  /**
   * For a pending task: attempts so far, attempts its retry policy still allows, when the next one may
   * start. null once the task ended.
   */
  retry: RetryOutlook | null;
}

function checkIds(ids: unknown, what: string): string[] {
  if (!Array.isArray(ids))
    throw new TaskmillError('INVALID_ARGUMENT', `${what} must be an array of task ids.`);
  const bad = ids.filter((id) => !isUuid(id));
  if (bad.length > 0)
    throw new TaskmillError('INVALID_ARGUMENT', `${what} has ids that are not UUIDs: ${bad.join(', ')}.`);
  return [...new Set(ids as string[])];
}

/** Completed, failed, cancelled or dead-lettered: nothing more will happen to the task by itself. */
function isEnded(state: TaskStatus): boolean {
  return state === 'dead' || (ENDED_STATES as readonly TaskStatus[]).includes(state);
}

export class TaskmillClient {
  readonly pool: pg.Pool;
  private readonly ownsPool: boolean;
  private readonly notify: boolean;
  private readonly registered = new Map<string, TaskDefinition>();
  private readonly waiter: TaskWaiter<TaskInfo>;

  constructor(options: ClientOptions = {}) {
    const connectionString = options.connectionString ?? process.env.DATABASE_URL;
    if (!options.pool && !connectionString) {
      throw new TaskmillError(
        'INVALID_CONFIG',
        'No database: pass connectionString or pool, or set DATABASE_URL.',
      );
    }
    this.pool =
      options.pool ??
      new pg.Pool({
        connectionString,
        max: 10,
        application_name: 'taskmill-client',
        Client: ConnectionClient,
      });
    this.ownsPool = !options.pool;
    const failures = new FailureLog(options.log ?? createLogger(undefined, { component: 'client' }));
    if (this.ownsPool) {
      // An idle connection that dies (server restart, terminated backend, idle timeout of a proxy) is
      // dropped by the pool, which opens a new one on next use; without this listener the pool's
      // 'error' event would end the process. Logged once per outage, and once when a connection opens again.
      this.pool.on('error', (error) => failures.failure('pool', error));
      this.pool.on('connect', () => failures.recovered('pool'));
    }
    // waitForTask()'s LISTEN session: by default the pool's connection settings, a session of its own.
    const listen = options.listen;
    this.waiter = new TaskWaiter(
      listen === false
        ? 'poll'
        : listen instanceof Listener
          ? { shared: listen }
          : { open: () => new Listener(listen ?? this.pool.options, (e) => failures.failure('listener', e)) },
      async (id) => {
        const task = await this.getTask(id);
        return task && { task, state: task.state, ended: isEnded(task.state), progress: task.progress };
      },
      (id) => readProgress(this.pool, id),
    );
    this.notify = options.notify ?? true;
  }

  /** Schedules one task; returns its id. */
  async schedule<M>(
    def: TaskDefinition<M> | string,
    ctx?: ScheduleContext<M>,
    options?: ScheduleOptions,
  ): Promise<string> {
    const [id] = await this.scheduleMany(def, [ctx ?? {}], options);
    return id;
  }

  /** Schedules many tasks of one definition in one multi-row insert; returns their ids in order. */
  async scheduleMany<M>(
    def: TaskDefinition<M> | string,
    ctxs: ScheduleContext<M>[],
    options: ScheduleOptions = {},
  ): Promise<string[]> {
    if (!Array.isArray(ctxs))
      throw new TaskmillError('INVALID_ARGUMENT', 'scheduleMany() takes an array of contexts.');
    const definition = await this.resolve(def);
    const dependsOn = checkIds(options.dependsOn ?? [], 'dependsOn');
    const rows: NewTask[] = ctxs.map((ctx) => newTask(definition, ctx));
    if (rows.some((r) => r.key)) {
      if (dependsOn.length > 0) {
        throw new TaskmillError(
          'INVALID_ARGUMENT',
          'Invalid schedule: idempotencyKey and debounce cannot be combined with dependsOn.',
        );
      }
      const outcomes = await this.traced(definition.name, rows, () =>
        insertKeyedTasks(options.client ?? this.pool, rows),
      ).catch((error) => {
        throw isUndefinedTable(error) ? notMigratedError(error) : error;
      });
      return outcomes.map((o) => o.taskId);
    }
    const waits: Wait[] = rows.flatMap((r) =>
      dependsOn.map((waitsFor) => ({ task: r.id, waitsFor, kind: 'd' as const })),
    );
    await this.traced(definition.name, rows, () => this.insert(rows, waits, options.client));
    return rows.map((r) => r.id);
  }

  /**
   * Schedules a join task: it runs once every listed task and everything those tasks spawn have
   * ended (successfully or not), and receives their results and the messages they sent it
   * (ctx.joinResults, ctx.joinMessages). The listed tasks must still be pending: schedule them and
   * their join in one transaction (pass `client`), or use ctx.scheduleJoin() from their parent.
   */
  async scheduleJoin<M>(
    def: TaskDefinition<M> | string,
    ctx: ScheduleContext<M> | undefined,
    taskIds: string[],
    options: Omit<ScheduleOptions, 'dependsOn'> = {},
  ): Promise<string> {
    const definition = await this.resolve(def);
    const ids = checkIds(taskIds, 'taskIds');
    if (ids.length === 0)
      throw new TaskmillError('INVALID_ARGUMENT', 'scheduleJoin() needs at least one task id.');
    const row = newTask(definition, ctx ?? {});
    await this.traced(definition.name, [row], () =>
      this.insert(
        [row],
        ids.map((waitsFor) => ({ task: row.id, waitsFor, kind: 'j' as const })),
        options.client,
      ),
    );
    return row.id;
  }

  /**
   * Runs an insert of new tasks in a `schedule` span (log/tracing.ts) while an OpenTelemetry SDK is
   * registered: a child of the caller's active span, and the parent the tasks carry (their traceparent)
   * for their attempts on the nodes. Without an SDK, just the insert.
   */
  private async traced<T>(name: string, rows: NewTask[], insert: () => Promise<T>): Promise<T> {
    const tracer = activeTracer();
    if (!tracer) return insert();
    const span = startSpan(tracer, 'schedule', name, {
      [ATTRIBUTES.taskName]: name,
      [ATTRIBUTES.taskCount]: rows.length,
      ...(rows.length === 1 && { [ATTRIBUTES.taskId]: rows[0].id }),
    });
    const traceparent = traceparentOf(span);
    for (const row of rows) row.traceparent = traceparent;
    try {
      const result = await insert();
      span.end();
      return result;
    } catch (error) {
      endWithError(span, error as Error);
      throw error;
    }
  }

  /** Inserts prepared rows (from newTask), with their waits, in one statement. */
  async insert(rows: NewTask[], waits: Wait[] = [], client?: Queryable): Promise<void> {
    try {
      if (waits.length === 0) await insertTasks(client ?? this.pool, rows, this.notify);
      else await insertWaitingTasks(client ?? this.pool, rows, waits);
    } catch (error) {
      if (isUndefinedTable(error)) throw notMigratedError(error);
      if ((error as { code?: string }).code === 'TM001') {
        throw new TaskmillError('INVALID_ARGUMENT', `Invalid schedule: ${(error as Error).message}.`, {
          cause: error,
        });
      }
      throw error;
    }
  }

  /** A task wherever it is (pending, history, dead letters); undefined when unknown or past retention. */
  async getTask<R = unknown>(id: string): Promise<TaskInfo<R> | undefined> {
    if (!isUuid(id))
      throw new TaskmillError('INVALID_ARGUMENT', `Task id must be a UUID, got ${JSON.stringify(id)}.`);
    const record = await findTask(this.pool, id).catch((error) => {
      throw isUndefinedTable(error) ? notMigratedError(error) : error;
    });
    if (!record) return undefined;
    const ended = record.finishedAt !== null || record.state === 'dead';
    if (ended) return { ...record, result: decode<R>(record.result), retry: null };
    // Database time decides delayed/retrying (as in listTasks); the policy is the one the nodes registered.
    const { now, retry } = await retryOptionsAt(this.pool, record.name);
    const policy = retryPolicySchema.safeParse(retry);
    const state = visibleState(record.state, record.attempts, record.notBefore, now);
    return {
      ...record,
      state,
      result: decode<R>(record.result),
      retry: retryOutlook(policy.success ? policy.data : undefined, { ...record, state }, now),
    };
  }

  /**
   * Cancels a task. One that has not started ends as cancelled at once ('cancelled'); one that is
   * assigned or running is aborted on its node and ends as cancelled, not retried ('requested').
   * Throws NOT_FOUND for an unknown id and NOT_CANCELLABLE for a task that already ended.
   */
  async cancel(id: string): Promise<'cancelled' | 'requested'> {
    const task = await this.getTask(id);
    if (!task) throw new TaskmillError('NOT_FOUND', `No task ${id}.`);
    const [result] = await cancelTasks(this.pool, [id]);
    if (result) return result.outcome;
    const now = await this.getTask(id);
    throw new TaskmillError('NOT_CANCELLABLE', `Task ${id} has already ended (${now?.state ?? 'gone'}).`);
  }

  /**
   * Resolves with the task once it has ended (completed, failed, cancelled or dead-lettered), woken by
   * a PostgreSQL notification rather than by polling; at once if it has ended already. Rejects with
   * NOT_FOUND for an unknown id and TIMEOUT when it has not ended within `timeoutMs` (default 60 s).
   * The first call opens one LISTEN connection, kept until close().
   */
  async waitForTask<R = unknown>(id: string, options?: WaitForTaskOptions): Promise<TaskInfo<R>> {
    if (!isUuid(id))
      throw new TaskmillError('INVALID_ARGUMENT', `Task id must be a UUID, got ${JSON.stringify(id)}.`);
    return (await this.waiter.wait(id, options)) as TaskInfo<R>;
  }

  /**
   * Schedules one task and waits for it to end (schedule() then waitForTask()): resolves with the task
   * in its ended state (completed with its result, failed, cancelled or dead), and rejects as
   * waitForTask() does (TIMEOUT, ABORTED). With an idempotencyKey it waits for the task the key stands
   * for. Not inside the caller's transaction (`client`): the task would not be visible to the wait.
   */
  async scheduleAndWait<M, R = unknown>(
    def: TaskDefinition<M, R> | string,
    ctx?: ScheduleContext<M>,
    options: Omit<ScheduleOptions, 'client'> & WaitForTaskOptions = {},
  ): Promise<TaskInfo<R>> {
    const { timeoutMs, signal, onProgress, ...scheduleOptions } = options;
    if ('client' in scheduleOptions) {
      throw new TaskmillError(
        'INVALID_ARGUMENT',
        'scheduleAndWait() cannot schedule in your transaction (`client`): the task would not run before it commits. Use schedule() with `client`, commit, then waitForTask().',
      );
    }
    const waitOptions: WaitForTaskOptions = { timeoutMs, signal, onProgress };
    for (const key of Object.keys(waitOptions) as (keyof WaitForTaskOptions)[])
      if (waitOptions[key] === undefined) delete waitOptions[key];
    // Bad wait options, or a signal aborted already, write nothing.
    checkWaitOptions(waitOptions);
    if (signal?.aborted)
      throw new TaskmillError('ABORTED', 'scheduleAndWait() was aborted before it scheduled.');
    const id = await this.schedule(def as TaskDefinition<M> | string, ctx, scheduleOptions);
    return this.waitForTask<R>(id, waitOptions);
  }

  /** Counts of a workflow's tasks by state; undefined when unknown. */
  workflow(id: string): Promise<WorkflowStatus | undefined> {
    return workflowStatus(this.pool, id);
  }

  /**
   * Resolves with the workflow's final status once no task of it is pending, woken by the task-ended
   * notification (like waitForTask) rather than by polling. Rejects with TIMEOUT after `timeoutMs`
   * (default 60 s) and NOT_FOUND for an unknown workflow.
   */
  waitForWorkflow(id: string, options: { timeoutMs?: number } = {}): Promise<WorkflowStatus> {
    return waitForWorkflow(this.pool, id, { timeoutMs: options.timeoutMs, ended: this.waiter });
  }

  /** Cancels every pending task of a workflow and aborts its running ones. */
  cancelWorkflow(id: string): Promise<{ cancelled: number; requested: number }> {
    return cancelWorkflow(this.pool, id);
  }

  /** The crons the leader runs (store/crons.ts): slots, last instance, live nodes running each. */
  async listCrons(): Promise<CronInfo[]> {
    const { listCrons } = await import('../store/crons.ts');
    return listCrons(this.pool);
  }

  /**
   * Removes a cron whose definition is gone: no more instances are created (those created stay; cancel
   * the waiting one by `lastTaskId`). Throws NOT_FOUND for a name without a cron.
   */
  async removeCron(
    name: string,
  ): Promise<{ name: string; lastTaskId: string | null; lastTaskState: CronInfo['lastTaskState'] }> {
    const { removeCron } = await import('../store/crons.ts');
    return removeCron(this.pool, name);
  }

  /**
   * The cluster as the database sees it: the planner leader and since when it leads, every registered
   * node with its state (alive, stopping, dead), last heartbeat, capacity and load, and totals over
   * the live nodes. One query; `nodeTimeoutMs` is the heartbeat age after which a node counts as dead
   * (the nodes' own setting, default 10 s).
   */
  cluster(options: { nodeTimeoutMs?: number } = {}): Promise<ClusterOverview> {
    return clusterOverview(this.pool, options.nodeTimeoutMs);
  }

  /**
   * Caps the tasks assigned or running at once, across the cluster, for every concurrency key the
   * pattern matches (`*`: any run of characters; the key itself, else the longest matching pattern,
   * applies), whatever their task names; null removes the cap. Stored in the database
   * (tm_flow_limits): every planner, now and after a failover, applies it from its next pass
   * (docs/flow-control.md). A limit outside 1..1,000,000 or a bad pattern throws INVALID_ARGUMENT.
   */
  async setConcurrencyLimit(pattern: string, limit: number | null): Promise<void> {
    checkKeyPattern(pattern);
    if (limit !== null)
      parseFlowOption(concurrencyOptionSchema, { limit }, `concurrency limit of ${pattern}`);
    await wrapSchemaErrors(() => setConcurrencyLimit(this.pool, pattern, limit));
  }

  /**
   * Caps the task starts, across the cluster, to `limit` in any window of `windowMs` for every
   * concurrency key the pattern matches (as setConcurrencyLimit()); null removes the cap.
   */
  async setRateLimit(pattern: string, rate: { limit: number; windowMs: number } | null): Promise<void> {
    checkKeyPattern(pattern);
    const valid =
      rate === null ? null : parseFlowOption(rateLimitOptionSchema, rate, `rate limit of ${pattern}`);
    await wrapSchemaErrors(() => setRateLimit(this.pool, pattern, valid));
  }

  /**
   * Sends an event to the tasks waiting for it (ctx.waitForEvent(name, { key })): in one transaction,
   * each gets `payload` (msgpack, at most SCHEDULE_LIMITS.maxMessageBytes) recorded as its wait's
   * result and becomes ready. Returns how many tasks it woke; 0 when none waits (the event is not kept
   * for later waiters). docs/durable-waits.md.
   */
  async sendEvent(name: string, key: string, payload?: unknown): Promise<number> {
    checkEventName('sendEvent()', name, key);
    const bytes = encode(payload ?? null, 'event payload', SCHEDULE_LIMITS.maxMessageBytes);
    return wrapSchemaErrors(() => sendEvent(this.pool, name, key, bytes));
  }

  /** The key-pattern limits set by setConcurrencyLimit() and setRateLimit(). */
  async flowLimits(): Promise<FlowLimit[]> {
    return wrapSchemaErrors(() => listFlowLimits(this.pool));
  }

  /** Closes the LISTEN connection of waitForTask(), and the pool when the client opened it. */
  async close(): Promise<void> {
    await this.waiter.close();
    if (this.ownsPool) await this.pool.end();
  }

  private async resolve<M>(def: TaskDefinition<M> | string): Promise<TaskDefinition<M>> {
    if (isTaskDefinition(def)) return def as TaskDefinition<M>;
    if (typeof def !== 'string') {
      throw new TaskmillError(
        'INVALID_ARGUMENT',
        'schedule() takes a definition from defineTask() or a task name.',
      );
    }
    if (!TASK_NAME_PATTERN.test(def)) {
      throw new TaskmillError('UNKNOWN_TASK', `Unknown task ${JSON.stringify(def)}: not a valid task name.`);
    }
    let known = this.registered.get(def);
    if (!known) {
      const options = await definitionOptions<TaskDefinition>(this.pool, def).catch((error) => {
        throw isUndefinedTable(error) ? notMigratedError(error) : error;
      });
      if (!options) {
        throw new TaskmillError(
          'UNKNOWN_TASK',
          `Unknown task ${JSON.stringify(def)}: no node has registered it.`,
        );
      }
      known = { ...options, name: def } as TaskDefinition;
      this.registered.set(def, known);
    }
    return known as TaskDefinition<M>;
  }
}

/** A missing schema becomes NOT_MIGRATED. */
async function wrapSchemaErrors<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    if (isUndefinedTable(error)) throw notMigratedError(error);
    throw error;
  }
}
