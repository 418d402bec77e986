/**
 * A node's connection budget (docs/connections.md): the node option `maxConnections` bounds every
 * connection the node opens, split once at start into
 *   - the main pool: planner, fetcher, completer, heartbeat, cancellations, progress, maintenance,
 *     node.client and operator reads, and the HTTP API when the node serves it (it shares this pool);
 *   - the LISTEN session (one, when notifications are on; node.client's waits share it);
 *   - the worker threads' share: one semaphore for all threads (worker/connection-slots.ts) that every
 *     thread's exactly-once transaction and durable-step connection holds a slot of.
 * The parts add up to the budget, so the node never has more connections open than it. When a part is
 * all in use, work waits for one of its connections (pg.Pool queues, the semaphore waits).
 *
 * `connectionsInUse()` is what the heartbeat reports (tm_nodes.connections): connections open now.
 * Main thread only.
 */
import type pg from 'pg';
import { TaskmillError } from '../task/errors.ts';
import type { ConnectionSlots } from '../worker/connection-slots.ts';

/** Default budget: 8 nodes leave 20 of a stock PostgreSQL's 100 connections for everything else. */
export const DEFAULT_MAX_CONNECTIONS = 10;
/** The main pool needs two: the planner's pass holds one while the heartbeat and fetcher use another. */
export const MIN_MAIN_CONNECTIONS = 2;
/** The worker threads need one to run exactly-once tasks and durable steps at all. */
export const MIN_WORKER_CONNECTIONS = 1;

export interface ConnectionSplit {
  /** The budget: main + listener + worker. */
  total: number;
  main: number;
  /** 1 with notifications on (the LISTEN session), else 0. */
  listener: number;
  worker: number;
}

/**
 * Splits `maxConnections`: the LISTEN session first, then the worker threads get half of the rest
 * (rounded down, at least one, at most `threads` times 8, the most they could use), the main pool the
 * remainder. Too small a budget is INVALID_CONFIG naming the least that runs.
 */
export function splitConnectionBudget(options: {
  maxConnections: number;
  notifications: boolean;
  threads: number;
}): ConnectionSplit {
  const { maxConnections, notifications, threads } = options;
  const listener = notifications ? 1 : 0;
  const least = MIN_MAIN_CONNECTIONS + MIN_WORKER_CONNECTIONS + listener;
  if (!Number.isInteger(maxConnections) || maxConnections < least) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      `maxConnections ${maxConnections} is too small for a node: it needs at least ${least} ` +
        `(${MIN_MAIN_CONNECTIONS} for its main pool, ${MIN_WORKER_CONNECTIONS} for its worker threads` +
        `${listener ? ', 1 for its LISTEN session' : ''}). Raise maxConnections (--max-connections).`,
    );
  }
  const rest = maxConnections - listener;
  const worker = Math.max(MIN_WORKER_CONNECTIONS, Math.min(Math.floor(rest / 2), threads * 8));
  return { total: maxConnections, main: rest - worker, listener, worker };
}

/** What a node has open now, by part of its budget. */
export interface ConnectionUse {
  main: number;
  listener: number;
  worker: number;
  total: number;
}

export function connectionsInUse(parts: {
  pool: Pick<pg.Pool, 'totalCount'>;
  listening: boolean;
  slots: Pick<ConnectionSlots, 'open'>;
}): ConnectionUse {
  const main = parts.pool.totalCount;
  const listener = parts.listening ? 1 : 0;
  const worker = parts.slots.open;
  return { main, listener, worker, total: main + listener + worker };
}
