/** Key routes: what holds an affinity or concurrency key and what waits on it (store/key-views.ts). */
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import { affinityKeyView, busiestKeys, concurrencyKeyView } from '../store/key-views.ts';
import { affinityKeySchema, busiestKeysSchema, concurrencyKeySchema } from './schemas.ts';

export function registerKeyRoutes(app: FastifyInstance, { pool }: { pool: pg.Pool }): void {
  app.get<{ Querystring: { kind: 'affinity' | 'concurrency'; limit?: number } }>(
    '/api/keys',
    { schema: busiestKeysSchema },
    async (request) => ({ keys: await busiestKeys(pool, request.query.kind, request.query.limit) }),
  );

  app.get<{ Querystring: { affinity: string; group?: string; limit?: number } }>(
    '/api/keys/affinity',
    { schema: affinityKeySchema },
    async (request) => {
      const q = request.query;
      return affinityKeyView(pool, q.group ?? '', q.affinity, q.limit);
    },
  );

  app.get<{ Querystring: { key: string; limit?: number } }>(
    '/api/keys/concurrency',
    { schema: concurrencyKeySchema },
    async (request) => concurrencyKeyView(pool, request.query.key, request.query.limit),
  );
}
