/**
 * How the node's connections to PostgreSQL behave when the network between them fails (the `network`
 * node option group, docs/network-faults.md). A refused or reset connection fails at once and every
 * loop retries with backoff; these settings bound the two failures that give no signal at all:
 * - a black hole (packets dropped, no RST): a statement's answer never comes, so each of the runtime's
 *   statements gives up after `queryTimeoutMs` (client side; the connection is then dropped by its
 *   pool), and a connection attempt after `connectTimeoutMs`;
 * - a node that vanishes in the middle of a transaction: the server would keep its locks (the
 *   planner's advisory lock and the task rows a pass claimed) until its own TCP gave up, which takes
 *   minutes; `idleInTransactionTimeoutMs` makes PostgreSQL end such a session and roll it back.
 * TCP keepalive (`keepAliveMs`) finds dead idle connections (the LISTEN session) on a real network.
 *
 * The worker threads' connections (exactly-once transactions, durable steps) get the connect timeout
 * and keepalive, not the query timeout (a handler's statement may take as long as it needs); an
 * exactly-once task's transaction gets its own idle bound, `exactlyOnceIdleTimeoutMs`, set inside the
 * transaction: a node cut off while a handler holds its task's lock (which dead-node recovery waits
 * for) releases it on the server after that long.
 *
 * Defaults derive from the node timeout, so that detection stays within a bound of the time the
 * cluster already uses to judge a node dead.
 */
import type pg from 'pg';
import { z } from 'zod';

export interface NetworkOptions {
  /** Most time to open a connection (TCP, TLS, startup and authentication); 0: no limit. */
  connectTimeoutMs: number;
  /**
   * Most time the runtime waits for the answer to one of its statements on the node's pool (the
   * planner, fetcher, completer, heartbeat, lease and operator reads, and node.client); then the
   * statement fails and its connection is dropped. 0: no limit.
   */
  queryTimeoutMs: number;
  /**
   * PostgreSQL's idle_in_transaction_session_timeout for the node's sessions: the server ends a
   * session that sits inside a transaction this long without a statement, rolling it back and releasing
   * its locks (a black-holed leader's pass holds the planner's advisory lock until then). Sent
   * as a startup parameter; 0 sends nothing (needed behind PgBouncer, which refuses startup
   * parameters it does not know: use its own idle_transaction_timeout there).
   */
  idleInTransactionTimeoutMs: number;
  /** TCP keepalive on every connection, first probe after this much idle time; 0: off. */
  keepAliveMs: number;
  /**
   * idle_in_transaction_session_timeout of an exactly-once task's transaction (SET LOCAL, so it also
   * works behind PgBouncer): the longest pause of a handler between two of its statements there. The
   * server then ends the session and rolls the task's work back (the attempt fails and is retried).
   * It bounds how long a node cut off mid-task keeps the task's row locked, which keeps the task from
   * being taken back. 0: no bound.
   */
  exactlyOnceIdleTimeoutMs: number;
}

/** What the defaults derive from: the node's own timing options. */
export interface NetworkTiming {
  /** A node whose heartbeat is older than this is declared dead (nodeTimeoutMs). */
  nodeTimeoutMs: number;
}

/**
 * Floors of the defaults: below them a loaded machine or server fails healthy work (a connection's
 * authentication, a pause of the event loop between two statements of a transaction) more often than
 * it finds a fault sooner. They matter only for node timeouts of a few seconds (tests).
 */
export const NETWORK_DEFAULT_FLOORS = {
  connectTimeoutMs: 5_000,
  queryTimeoutMs: 10_000,
  idleInTransactionTimeoutMs: 5_000,
  keepAliveMs: 5_000,
  exactlyOnceIdleTimeoutMs: 60_000,
};

/**
 * The defaults: connect within the node timeout; give up on a statement after three node timeouts
 * (runtime statements take milliseconds; the margin is for node.client's large batches and
 * migrations on a loaded server); end a transaction stuck for one node timeout, the silence after
 * which the node itself is declared dead (a planner pass black-holed mid-way then holds the planner's
 * lock at most that long after its last statement, so planning resumes within lease TTL + node
 * timeout); keepalive probes after one node timeout of silence; a handler may pause six node timeouts
 * inside an exactly-once transaction (at least a minute: its own work, not the runtime's, sets the
 * pace). Each at least its floor.
 */
export function defaultNetworkOptions(timing: NetworkTiming): NetworkOptions {
  const f = NETWORK_DEFAULT_FLOORS;
  return {
    connectTimeoutMs: Math.max(f.connectTimeoutMs, timing.nodeTimeoutMs),
    queryTimeoutMs: Math.max(f.queryTimeoutMs, 3 * timing.nodeTimeoutMs),
    idleInTransactionTimeoutMs: Math.max(f.idleInTransactionTimeoutMs, timing.nodeTimeoutMs),
    keepAliveMs: Math.max(f.keepAliveMs, timing.nodeTimeoutMs),
    exactlyOnceIdleTimeoutMs: Math.max(f.exactlyOnceIdleTimeoutMs, 6 * timing.nodeTimeoutMs),
  };
}

const ms = z.number().int().min(0);

/** The `network` node option group: each setting optional, defaults from defaultNetworkOptions(). */
export const networkSchema = z
  .object({
    connectTimeoutMs: ms.max(600_000).optional(),
    // Below 100 ms an ordinary round trip to a loaded server would fail.
    queryTimeoutMs: z.union([z.literal(0), z.number().int().min(100)]).optional(),
    idleInTransactionTimeoutMs: ms.optional(),
    keepAliveMs: ms.optional(),
    exactlyOnceIdleTimeoutMs: ms.optional(),
  })
  .strict();

export type NetworkOptionsInput = z.input<typeof networkSchema>;

/** The settings in force: what the node was given over the defaults for its timing. */
export function networkOptions(
  given: NetworkOptionsInput | undefined,
  timing: NetworkTiming,
): NetworkOptions {
  const defaults = defaultNetworkOptions(timing);
  const defined = Object.fromEntries(Object.entries(given ?? {}).filter(([, v]) => v !== undefined));
  return { ...defaults, ...defined };
}

/**
 * The settings as pg client options, to spread into a pool's or a client's config (pg-pool hands a
 * pool's options to each client it opens).
 */
export function connectionConfig(network: NetworkOptions): pg.ClientConfig {
  const config: pg.ClientConfig = {};
  if (network.connectTimeoutMs > 0) config.connectionTimeoutMillis = network.connectTimeoutMs;
  if (network.queryTimeoutMs > 0) config.query_timeout = network.queryTimeoutMs;
  if (network.keepAliveMs > 0) {
    config.keepAlive = true;
    config.keepAliveInitialDelayMillis = network.keepAliveMs;
  }
  if (network.idleInTransactionTimeoutMs > 0) {
    config.idle_in_transaction_session_timeout = network.idleInTransactionTimeoutMs;
  }
  return config;
}

/**
 * The settings as options of a pg.Pool of ConnectionClients. pg-pool applies its own
 * `connectionTimeoutMillis` to a checkout waiting for a busy pool too, which would fail the node's work
 * whenever it queues for a connection longer than that (thousands of waits on a loaded machine): the
 * pool gets none, and each ConnectionClient applies `connectTimeoutMs` to its own connect only.
 */
export function poolConnectionConfig(network: NetworkOptions): pg.PoolConfig & { connectTimeoutMs?: number } {
  const { connectionTimeoutMillis, ...rest } = connectionConfig(network);
  return connectionTimeoutMillis ? { ...rest, connectTimeoutMs: connectionTimeoutMillis } : rest;
}

/** What a worker thread's connections take of the settings (plain values: they cross to the thread). */
export interface WorkerNetworkOptions {
  connectTimeoutMs: number;
  keepAliveMs: number;
  exactlyOnceIdleTimeoutMs: number;
}

export function workerNetworkOptions(network: NetworkOptions): WorkerNetworkOptions {
  const { connectTimeoutMs, keepAliveMs, exactlyOnceIdleTimeoutMs } = network;
  return { connectTimeoutMs, keepAliveMs, exactlyOnceIdleTimeoutMs };
}

/** A worker thread connection's pg options: connect timeout and keepalive only. */
export function workerConnectionConfig(network: WorkerNetworkOptions): pg.ClientConfig {
  return connectionConfig({ ...network, queryTimeoutMs: 0, idleInTransactionTimeoutMs: 0 });
}
