/**
 * Statements on tm_nodes: a node's registration and heartbeat, its stop, the removal of expired nodes
 * (dead-node recovery) and the lookup a spawned node process uses to report its id.
 */
import type { Queryable } from './queryable.ts';

/** A node whose heartbeat is older than this (database time) is dead, unless told otherwise. */
export const DEFAULT_NODE_TIMEOUT_MS = 10_000;

export interface NodeRegistration {
  id: string;
  name: string;
  capacity: number;
  taskNames: string[];
}

/** What a node reports with each beat. */
export interface NodeLoad {
  inFlight: number;
  /** Share of the machine's CPU, 0..1. */
  cpu: number;
  /** Connections open now and the node's budget (maxConnections); absent: not reported. */
  connections?: { inUse: number; max: number };
}

/**
 * Upserts the node's row with database time (heartbeat_at) and its load; returns whether the row was
 * inserted (the first beat, or the row was removed meanwhile as expired) and when the row was made
 * (started_at: a change means it was removed and made again).
 */
export async function beat(
  db: Queryable,
  node: NodeRegistration,
  load: NodeLoad,
): Promise<{ inserted: boolean; startedAt: Date }> {
  const { rows } = await db.query<{ inserted: boolean; started_at: Date }>(
    `insert into tm_nodes (id, name, capacity, task_names, in_flight, cpu, connections, max_connections)
     values ($1, $2, $3, $4, $5, $6, $7, $8)
     on conflict (id) do update set heartbeat_at = now(), in_flight = excluded.in_flight, cpu = excluded.cpu,
       connections = excluded.connections, max_connections = excluded.max_connections
     returning (xmax = 0) as inserted, started_at`,
    [
      node.id,
      node.name,
      node.capacity,
      node.taskNames,
      load.inFlight,
      load.cpu,
      load.connections?.inUse ?? null,
      load.connections?.max ?? null,
    ],
  );
  return { inserted: rows[0].inserted, startedAt: rows[0].started_at };
}

/** Removes the node's row (a stopped node). */
export async function deleteNode(db: Queryable, nodeId: string): Promise<void> {
  await db.query(`delete from tm_nodes where id = $1`, [nodeId]);
}

/** A stopping node takes no new tasks: the planner sees no free slot on it. */
export async function closeNodeToNewTasks(db: Queryable, nodeId: string): Promise<void> {
  await db.query(`update tm_nodes set capacity = 0 where id = $1`, [nodeId]);
}

/** Removes the nodes whose heartbeat is older than the timeout (database time); returns their ids. */
export async function deleteExpiredNodes(db: Queryable, nodeTimeoutMs: number): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `delete from tm_nodes where heartbeat_at < now() - $1 * interval '1 millisecond' returning id`,
    [nodeTimeoutMs],
  );
  return rows.map((r) => r.id);
}

/** The oldest node named one of `names` that started at or after `since`. */
export async function findNodeStartedSince(
  db: Queryable,
  names: string[],
  since: Date,
): Promise<{ id: string; name: string } | undefined> {
  const { rows } = await db.query<{ id: string; name: string }>(
    `select id, name from tm_nodes where name = any($1) and started_at >= $2 order by started_at limit 1`,
    [names, since],
  );
  return rows[0];
}
