/** Flow-limit routes (client setConcurrencyLimit / setRateLimit / flowLimits, docs/flow-control.md). */
import type { FastifyInstance } from 'fastify';
import type { TaskmillClient } from '../client/client.ts';
import { listFlowLimitsSchema, removeFlowLimitSchema, setFlowLimitSchema } from './schemas.ts';

interface SetBody {
  pattern: string;
  concurrency?: number | null;
  rate?: { limit: number; windowMs: number } | null;
}

export function registerFlowRoutes(app: FastifyInstance, { client }: { client: TaskmillClient }): void {
  app.get('/api/flow-limits', { schema: listFlowLimitsSchema }, async () => ({
    limits: await client.flowLimits(),
  }));

  app.put<{ Body: SetBody }>('/api/flow-limits', { schema: setFlowLimitSchema }, async (request) => {
    const { pattern, concurrency, rate } = request.body;
    if (concurrency !== undefined) await client.setConcurrencyLimit(pattern, concurrency);
    if (rate !== undefined) await client.setRateLimit(pattern, rate);
    return { limits: await client.flowLimits() };
  });

  app.delete<{ Querystring: { pattern: string } }>(
    '/api/flow-limits',
    { schema: removeFlowLimitSchema },
    async (request) => {
      await client.setConcurrencyLimit(request.query.pattern, null);
      await client.setRateLimit(request.query.pattern, null);
      return { limits: await client.flowLimits() };
    },
  );
}
