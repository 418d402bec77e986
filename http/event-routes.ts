/** Event routes (client sendEvent, docs/durable-waits.md): POST /api/events. */
import type { FastifyInstance } from 'fastify';
import type { TaskmillClient } from '../client/client.ts';
import { sendEventSchema } from './schemas.ts';

export function registerEventRoutes(app: FastifyInstance, { client }: { client: TaskmillClient }): void {
  app.post<{ Body: { name: string; key: string; payload?: unknown } }>(
    '/api/events',
    { schema: sendEventSchema },
    async (request) => ({
      woken: await client.sendEvent(request.body.name, request.body.key, request.body.payload ?? null),
    }),
  );
}
