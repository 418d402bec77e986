/** Workflow routes: state counts, the graph of the workflow page, cancellation (client/workflows.ts). */
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import { TaskmillError } from '../task/errors.ts';
import { cancelWorkflow, workflowStatus } from '../client/workflows.ts';
import { workflowGraph } from '../store/workflow-graph.ts';
import { cancelWorkflowSchema, workflowGraphSchema, workflowSchema } from './schemas.ts';

export function registerWorkflowRoutes(app: FastifyInstance, { pool }: { pool: pg.Pool }): void {
  app.get<{ Params: { id: string } }>('/api/workflows/:id', { schema: workflowSchema }, async (request) => {
    const status = await workflowStatus(pool, request.params.id);
    if (!status) throw new TaskmillError('NOT_FOUND', `No workflow ${request.params.id}.`);
    return status;
  });

  app.get<{ Params: { id: string }; Querystring: { limit?: number } }>(
    '/api/workflows/:id/graph',
    { schema: workflowGraphSchema },
    async (request) => {
      const graph = await workflowGraph(pool, request.params.id, request.query.limit);
      if (!graph) throw new TaskmillError('NOT_FOUND', `No workflow ${request.params.id}.`);
      return graph;
    },
  );

  app.post<{ Params: { id: string } }>(
    '/api/workflows/:id/cancel',
    { schema: cancelWorkflowSchema },
    async (request) => ({ id: request.params.id, ...(await cancelWorkflow(pool, request.params.id)) }),
  );
}
