/** Task routes: submit one or many, look one up, list with filters, cancel. */
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import { inTransaction } from '../store/checkout.ts';
import { TaskmillError } from '../task/errors.ts';
import type { ServerResponse } from 'node:http';
import type { TaskInfo, TaskmillClient } from '../client/client.ts';
import { listTasks } from '../store/inspect.ts';
import { taskDetail } from '../store/task-detail.ts';
import { decode } from '../task/codec.ts';
import type { TaskmillMetrics } from '../node/metrics.ts';
import type { PlannerWaker } from './planner-waker.ts';
import type { SubmitBatcher } from './submit-batcher.ts';
import type { ScheduleContext } from '../task/schedule-context.ts';
import type { TaskStatus } from '../task/task-states.ts';
import {
  cancelTaskSchema,
  getTaskSchema,
  listTasksSchema,
  parseWait,
  taskDetailsSchema,
  submitSchema,
  type NewTaskBody,
} from './schemas.ts';
import { toJson } from './to-json.ts';

export interface TaskRoutesOptions {
  pool: pg.Pool;
  client: TaskmillClient;
  metrics: TaskmillMetrics;
  waker: PlannerWaker;
  batcher: SubmitBatcher;
}

export function registerTaskRoutes(
  app: FastifyInstance,
  { pool, client, metrics, waker, batcher }: TaskRoutesOptions,
): void {
  app.post<{ Body: NewTaskBody | NewTaskBody[] }>(
    '/api/tasks',
    { schema: submitSchema },
    async (request, reply) => {
      const many = Array.isArray(request.body);
      const items = many ? (request.body as NewTaskBody[]) : [request.body as NewTaskBody];
      const ids = await schedule({ pool, client, batcher }, items);
      waker.wake();
      const counts = new Map<string, number>();
      for (const item of items) counts.set(item.name, (counts.get(item.name) ?? 0) + 1);
      for (const [name, n] of counts) metrics.recordScheduled(name, n);
      return reply.code(201).send(many ? { ids } : { id: ids[0] });
    },
  );

  app.get<{ Params: { id: string }; Querystring: { wait?: string } }>(
    '/api/tasks/:id',
    { schema: getTaskSchema },
    async (request, reply) => {
      const { id } = request.params;
      const task =
        request.query.wait === undefined
          ? await client.getTask(id)
          : await waitForTask(client, id, parseWait(request.query.wait), reply.raw);
      if (!task) throw new TaskmillError('NOT_FOUND', `No task ${id} (unknown, or past history retention).`);
      return { ...task, result: toJson(task.result) };
    },
  );

  app.get<{
    Querystring: {
      state?: string[];
      name?: string;
      workflow?: string;
      affinity?: string;
      affinityGroup?: string;
      from?: string;
      to?: string;
      limit?: number;
      cursor?: string;
    };
  }>(
    '/api/tasks',
    {
      schema: listTasksSchema,
      // `state=ready,running` is accepted as well as `state=ready&state=running`.
      preValidation: async (request) => {
        const query = request.query as { state?: string | string[] };
        if (query.state !== undefined) query.state = [query.state].flat().flatMap((s) => s.split(','));
      },
    },
    async (request) => {
      const q = request.query;
      return listTasks(pool, {
        states: q.state as TaskStatus[] | undefined,
        name: q.name,
        workflowId: q.workflow,
        affinity: q.affinity,
        affinityGroup: q.affinityGroup,
        createdFrom: q.from === undefined ? undefined : new Date(q.from),
        createdTo: q.to === undefined ? undefined : new Date(q.to),
        limit: q.limit,
        cursor: q.cursor,
      });
    },
  );

  app.get<{ Params: { id: string } }>(
    '/api/tasks/:id/details',
    { schema: taskDetailsSchema },
    async (request) => {
      const task = await taskDetail(pool, request.params.id);
      if (!task) {
        throw new TaskmillError(
          'NOT_FOUND',
          `No task ${request.params.id} (unknown, or past history retention).`,
        );
      }
      return { ...task, message: toJson(decode(task.message)), result: toJson(decode(task.result)) };
    },
  );

  app.post<{ Params: { id: string } }>(
    '/api/tasks/:id/cancel',
    { schema: cancelTaskSchema },
    async (request) => {
      return { id: request.params.id, outcome: await client.cancel(request.params.id) };
    },
  );
}

/**
 * The long poll: the client's one waiter (one LISTEN session for every request) resolves when the task
 * ends; when the wait is over, the task as it is then. A client that goes away ends its wait.
 */
async function waitForTask(
  client: TaskmillClient,
  id: string,
  timeoutMs: number,
  response: ServerResponse,
): Promise<TaskInfo | undefined> {
  const gone = new AbortController();
  const onClose = () => gone.abort();
  response.once('close', onClose);
  try {
    return await client.waitForTask(id, { timeoutMs, signal: gone.signal });
  } catch (error) {
    if (error instanceof TaskmillError && (error.code === 'TIMEOUT' || error.code === 'ABORTED')) {
      return client.getTask(id);
    }
    if (error instanceof TaskmillError && error.code === 'NOT_FOUND') return undefined;
    throw error;
  } finally {
    response.off('close', onClose);
  }
}

/** Schedules the items in one transaction; ids in request order. */
async function schedule(
  { pool, client, batcher }: Pick<TaskRoutesOptions, 'pool' | 'client' | 'batcher'>,
  items: NewTaskBody[],
): Promise<string[]> {
  const contexts = items.map(toContext);
  // One multi-row insert per (name, dependencies), in order of first appearance.
  const groups = new Map<string, { name: string; dependsOn?: string[]; indexes: number[] }>();
  items.forEach((item, i) => {
    const dependsOn = item.dependsOn?.length ? [...new Set(item.dependsOn)].sort() : undefined;
    const key = JSON.stringify([item.name, dependsOn ?? []]);
    const group = groups.get(key) ?? { name: item.name, dependsOn, indexes: [] };
    group.indexes.push(i);
    groups.set(key, group);
  });
  const ids = new Array<string>(items.length);
  if (groups.size === 1) {
    // One statement is atomic on its own: no transaction round trips; concurrent requests without
    // dependencies share multi-row inserts.
    const [{ name, dependsOn }] = groups.values();
    return dependsOn ? client.scheduleMany(name, contexts, { dependsOn }) : batcher.submit(name, contexts);
  }
  await inTransaction(pool, async (tx) => {
    for (const { name, dependsOn, indexes } of groups.values()) {
      const groupIds = await client.scheduleMany(
        name,
        indexes.map((i) => contexts[i]),
        { client: tx, dependsOn },
      );
      indexes.forEach((i, k) => (ids[i] = groupIds[k]));
    }
  });
  return ids;
}

function toContext(item: NewTaskBody, index: number): ScheduleContext {
  const ctx: ScheduleContext = {
    message: item.message,
    delayMs: item.delayMs,
    workflowId: item.workflowId,
    affinity: item.affinity,
    affinityGroup: item.affinityGroup,
    priority: item.priority,
    idempotencyKey: item.idempotencyKey,
    idempotencyRetentionMs: item.idempotencyRetentionMs,
    debounce: item.debounce,
    concurrencyKey: item.concurrencyKey,
  };
  if (item.runAt !== undefined) {
    const runAt = new Date(
      typeof item.runAt === 'string' && /^\d+$/.test(item.runAt) ? Number(item.runAt) : item.runAt,
    );
    if (!Number.isFinite(runAt.getTime())) {
      throw new TaskmillError(
        'INVALID_ARGUMENT',
        `Invalid schedule: task ${index}: runAt must be epoch milliseconds or an ISO 8601 date-time, got ${JSON.stringify(item.runAt)}.`,
      );
    }
    ctx.runAt = runAt;
  }
  return Object.fromEntries(Object.entries(ctx).filter(([, v]) => v !== undefined)) as ScheduleContext;
}
