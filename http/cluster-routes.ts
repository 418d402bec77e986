/** Cluster routes: stats (what the dashboard shows), nodes and leader. */
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import { clusterStats, currentLeader, listNodes } from '../store/inspect.ts';
import { nodesSchema, statsSchema } from './schemas.ts';

/** The dashboard polls /api/stats: counting a very large history gives up after this long. */
const STATS_THROUGHPUT_TIMEOUT_MS = 1_000;

export interface ClusterRoutesOptions {
  pool: pg.Pool;
  nodeTimeoutMs?: number;
}

export function registerClusterRoutes(
  app: FastifyInstance,
  { pool, nodeTimeoutMs }: ClusterRoutesOptions,
): void {
  app.get<{ Querystring: { windowMinutes?: number; bucketSeconds?: number } }>(
    '/api/stats',
    { schema: statsSchema },
    async (request) =>
      clusterStats(pool, {
        nodeTimeoutMs,
        throughputTimeoutMs: STATS_THROUGHPUT_TIMEOUT_MS,
        ...request.query,
      }),
  );

  app.get('/api/nodes', { schema: nodesSchema }, async () => {
    const [leader, nodes] = await Promise.all([currentLeader(pool), listNodes(pool, nodeTimeoutMs)]);
    return { leader: leader ?? null, nodes };
  });
}
