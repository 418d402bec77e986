/** Dead-letter routes (store/dead-letters.ts): list, show, requeue, purge. */
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import {
  getDeadLetter,
  listDeadLetters,
  purgeDeadLetters,
  requeueDeadLetters,
  type PurgeSelector,
  type RequeueSelector,
} from '../store/dead-letters.ts';
import {
  getDeadLetterSchema,
  listDeadLettersSchema,
  purgeSchema,
  requeueOneSchema,
  requeueSchema,
} from './schemas.ts';
import { toJson } from './to-json.ts';

export function registerDeadLetterRoutes(app: FastifyInstance, { pool }: { pool: pg.Pool }): void {
  app.get<{ Querystring: { name?: string; limit: number; after?: string } }>(
    '/api/dead-letters',
    { schema: listDeadLettersSchema },
    async (request) => {
      const deadLetters = await listDeadLetters(pool, request.query);
      const full = deadLetters.length === request.query.limit;
      return { deadLetters, nextAfter: full ? deadLetters[deadLetters.length - 1].id : null };
    },
  );

  app.get<{ Params: { id: string } }>(
    '/api/dead-letters/:id',
    { schema: getDeadLetterSchema },
    async (request) => {
      const dl = await getDeadLetter(pool, request.params.id);
      return { ...dl, message: toJson(dl.message) };
    },
  );

  app.post<{ Params: { id: string } }>(
    '/api/dead-letters/:id/requeue',
    { schema: requeueOneSchema },
    async (request) => requeueDeadLetters(pool, { ids: [request.params.id] }),
  );

  app.post<{ Body: RequeueSelector }>(
    '/api/dead-letters/requeue',
    { schema: requeueSchema },
    async (request) => requeueDeadLetters(pool, request.body),
  );

  app.post<{ Body: PurgeSelector }>('/api/dead-letters/purge', { schema: purgeSchema }, async (request) =>
    purgeDeadLetters(pool, request.body),
  );
}
