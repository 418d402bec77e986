/**
 * Clusters of node processes for the multi-process tests: each on a database of its own (kept with the
 * file's when a test failed) with the `runs` table the `record` fixture writes each run's interval and
 * process id into. Every cluster still running when the file ends is killed.
 */
import { afterAll } from 'vitest';
import { TaskmillClient } from '../../index.ts';
import type { FileDatabase, TestDatabase } from './database.ts';
import { killAllNodes, spawnNode, type SpawnOptions, type SpawnedNode } from './spawn.ts';

export interface NodeCluster {
  db: TestDatabase;
  client: TaskmillClient;
  nodes: SpawnedNode[];
}

const RUNS_TABLE = `create table runs (task_id uuid, key text, workflow_id uuid, seq int, started_at timestamptz,
  ended_at timestamptz, pid int)`;

/** Starts and stops clusters on databases made by `databases`; call it once, at the top of a test file. */
export function useNodeClusters(databases: FileDatabase) {
  const clusters = new Set<NodeCluster>();

  /** Kills the cluster's node processes (the ones still alive); its database goes with the file's. */
  async function stop(c: NodeCluster): Promise<void> {
    clusters.delete(c);
    await Promise.all(
      c.nodes.map((n) => {
        n.kill('SIGKILL');
        return n.stopped;
      }),
    );
    await c.client.close();
  }

  /** One node process per options entry; `setupSql` runs after the `runs` table is made. */
  async function start(options: SpawnOptions[], setupSql?: string): Promise<NodeCluster> {
    const db = await databases.another();
    const client = new TaskmillClient({ connectionString: db.url });
    const cluster: NodeCluster = { db, client, nodes: [] };
    clusters.add(cluster);
    await db.pool.query(setupSql ? `${RUNS_TABLE};\n${setupSql}` : RUNS_TABLE);
    cluster.nodes = await Promise.all(options.map((o) => spawnNode(db.url, o)));
    return cluster;
  }

  afterAll(async () => {
    // Also the nodes of a cluster whose start failed half-way.
    await killAllNodes();
    await Promise.all([...clusters].map(stop));
  });

  return { start, stop };
}
