/** Workflow routes: state counts and cancellation (client/workflows.ts). */
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import { TaskmillError } from '../task/errors.ts';
import { cancelWorkflow, workflowStatus } from '../client/workflows.ts';
import { cancelWorkflowSchema, workflowSchema } from './schemas.ts';

export function registerWorkflowRoutes(app: FastifyInstance, { pool }: { pool: pg.Pool }): void {
  app.get<{ Params: { id: string } }>('/api/workflows/:id', { schema: workflowSchema }, async (request) => {
    const status = await workflowStatus(pool, request.params.id);
    if (!status) throw new TaskmillError('NOT_FOUND', `No workflow ${request.params.id}.`);
    return status;
  });

  app.post<{ Params: { id: string } }>(
    '/api/workflows/:id/cancel',
    { schema: cancelWorkflowSchema },
    async (request) => ({ id: request.params.id, ...(await cancelWorkflow(pool, request.params.id)) }),
  );
}
