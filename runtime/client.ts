/**
 * The producer side of the public API: schedule tasks (one, many in one statement, or inside the
 * caller's own transaction), look them up, cancel the ones that have not started. Usable from any
 * process; no node needs to run in it.
 */
import pg from 'pg';
import { TaskmillError, isUndefinedTable, notMigratedError } from './errors.ts';
import { newTask, isUuid, type NewTask, type ScheduleContext } from './schedule-context.ts';
import { cancelPendingTask, findTask, insertTasks, type Queryable, type TaskRecord } from './task-store.ts';
import { isTaskDefinition, type TaskDefinition } from './task-definition.ts';
import { decode } from './codec.ts';

export interface ClientOptions {
  /** Default: DATABASE_URL. */
  connectionString?: string;
  /** Use this pool instead of opening one (it is not closed by close()). */
  pool?: pg.Pool;
  /** NOTIFY the planner when tasks are scheduled (default true). */
  notify?: boolean;
}

export interface ScheduleOptions {
  /** Run the insert on this client, e.g. inside the caller's open transaction. */
  client?: Queryable;
}

export interface TaskInfo<R = unknown> extends Omit<TaskRecord, 'result'> {
  result: R | undefined;
}

export class TaskmillClient {
  readonly pool: pg.Pool;
  private readonly ownsPool: boolean;
  private readonly notify: boolean;
  private readonly registered = new Map<string, TaskDefinition>();

  constructor(options: ClientOptions = {}) {
    const connectionString = options.connectionString ?? process.env.DATABASE_URL;
    if (!options.pool && !connectionString) {
      throw new TaskmillError(
        'INVALID_CONFIG',
        'No database: pass connectionString or pool, or set DATABASE_URL.',
      );
    }
    this.pool =
      options.pool ?? new pg.Pool({ connectionString, max: 10, application_name: 'taskmill-client' });
    this.ownsPool = !options.pool;
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
    const rows: NewTask[] = ctxs.map((ctx) => newTask(definition, ctx));
    await this.insert(rows, options.client);
    return rows.map((r) => r.id);
  }

  /** Inserts prepared rows (from newTask) in one statement. */
  async insert(rows: NewTask[], client?: Queryable): Promise<void> {
    try {
      await insertTasks(client ?? this.pool, rows, this.notify);
    } catch (error) {
      throw isUndefinedTable(error) ? notMigratedError(error) : error;
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
    return { ...record, result: decode<R>(record.result) };
  }

  /** Cancels a task that has not started. Throws NOT_FOUND or NOT_CANCELLABLE otherwise. */
  async cancel(id: string): Promise<void> {
    const task = await this.getTask(id);
    if (!task) throw new TaskmillError('NOT_FOUND', `No task ${id}.`);
    if (await cancelPendingTask(this.pool, id)) return;
    const now = await this.getTask(id);
    throw new TaskmillError(
      'NOT_CANCELLABLE',
      `Task ${id} is ${now?.state ?? 'gone'}; only ready or waiting tasks can be cancelled.`,
    );
  }

  async close(): Promise<void> {
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
    let known = this.registered.get(def);
    if (!known) {
      const { rows } = await this.pool
        .query<{ options: TaskDefinition }>(`select options from tm_task_defs where name = $1`, [def])
        .catch((error) => {
          throw isUndefinedTable(error) ? notMigratedError(error) : error;
        });
      if (rows.length === 0) {
        throw new TaskmillError(
          'UNKNOWN_TASK',
          `Unknown task ${JSON.stringify(def)}: no node has registered it.`,
        );
      }
      known = { ...rows[0].options, name: def } as TaskDefinition;
      this.registered.set(def, known);
    }
    return known as TaskDefinition<M>;
  }
}
