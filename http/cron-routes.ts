/** Cron routes (store/crons.ts): list the crons, remove one whose definition is gone. */
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import { listCrons, removeCron } from '../store/crons.ts';
import { TASK_NAME_PATTERN } from '../task/task-definition.ts';
import { errorSchema } from './schemas.ts';

const nullableUuid = { type: 'string', format: 'uuid', nullable: true } as const;
const lastTaskState = {
  type: 'string',
  enum: ['waiting', 'started', 'ended', null],
  nullable: true,
  description:
    'Where the last instance is: waiting (not started: new slots create nothing until it starts), ' +
    'started (assigned, running or retrying), ended; null when the cron has created none.',
} as const;

const cron = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    expression: { type: 'string' },
    timezone: { type: 'string' },
    missed: { type: 'string', enum: ['run-once', 'skip'] },
    lastSlot: { type: 'string', format: 'date-time', description: 'Every slot up to it is handled.' },
    nextSlot: { type: 'string', format: 'date-time', nullable: true },
    lastTaskId: nullableUuid,
    lastTaskState,
    nodes: { type: 'integer', description: 'Live nodes that run the task (0: its instances wait).' },
  },
} as const;

export const listCronsSchema = {
  summary: 'The crons the planner leader runs, with their last instance and the nodes running them',
  tags: ['crons'],
  response: {
    200: { type: 'object', properties: { crons: { type: 'array', items: cron } } },
    '4xx': errorSchema,
  },
} as const;

export const removeCronSchema = {
  summary: 'Remove a cron: no more instances are created (those created stay; cancel them by id)',
  tags: ['crons'],
  params: {
    type: 'object',
    required: ['name'],
    properties: { name: { type: 'string', pattern: TASK_NAME_PATTERN.source } },
  },
  response: {
    200: {
      type: 'object',
      properties: { name: { type: 'string' }, lastTaskId: nullableUuid, lastTaskState },
    },
    '4xx': errorSchema,
  },
} as const;

export function registerCronRoutes(
  app: FastifyInstance,
  { pool, nodeTimeoutMs }: { pool: pg.Pool; nodeTimeoutMs?: number },
): void {
  app.get('/api/crons', { schema: listCronsSchema }, async () => ({
    crons: await listCrons(pool, { nodeTimeoutMs }),
  }));
  app.delete<{ Params: { name: string } }>(
    '/api/crons/:name',
    { schema: removeCronSchema },
    async (request) => removeCron(pool, request.params.name),
  );
}
