/**
 * Opening PostgreSQL connections. Every pool and session taskmill opens uses `ConnectionClient`, so a
 * server that refuses a connection for lack of slots (SQLSTATE 53300, too_many_connections: its
 * max_connections, or a role's or database's connection limit, is reached) surfaces at once as a
 * TaskmillError that names the setting, instead of a bare "sorry, too many clients already".
 */
import pg from 'pg';
import { TaskmillError } from '../task/errors.ts';

/** SQLSTATE too_many_connections. */
export const TOO_MANY_CONNECTIONS = '53300';

/** The error to raise for a failed connection attempt: 53300 becomes TOO_MANY_CONNECTIONS. */
export function connectError(error: unknown): unknown {
  if ((error as { code?: string } | undefined)?.code !== TOO_MANY_CONNECTIONS) return error;
  return new TaskmillError(
    'TOO_MANY_CONNECTIONS',
    `PostgreSQL refused a connection: ${(error as Error).message}. The server's max_connections ` +
      '(or the connection limit of this role or database) is reached: raise max_connections, or lower ' +
      'what taskmill opens (maxConnections per node, fewer nodes or test workers against this server).',
    { cause: error },
  );
}

/**
 * A pg.Client whose connect() reports a refused slot as TOO_MANY_CONNECTIONS (`Client` of a pool), and
 * which never ends the process when its connection breaks. pg emits `error` on a client whose socket
 * closes or whose backend is terminated; pg-pool listens only while the client is idle, so a client
 * checked out without `checkout()` would make that event unhandled and Node would exit. The error
 * still reaches the query in flight, and a later query on the client fails; pg-pool destroys such a
 * client on release (it is no longer queryable).
 */
export class ConnectionClient extends pg.Client {
  /** `connectTimeoutMs`: bounds this client's connect (poolConnectionConfig in network.ts says why). */
  constructor(config?: string | (pg.ClientConfig & { connectTimeoutMs?: number })) {
    super(
      typeof config === 'object' && config.connectTimeoutMs
        ? { ...config, connectionTimeoutMillis: config.connectTimeoutMs }
        : config,
    );
    this.on('error', () => {});
  }

  override connect(): Promise<pg.Client>;
  override connect(callback: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): void;
  override connect(
    callback?: ((err: Error) => void) | ((err: null, c: pg.Client) => void),
  ): Promise<pg.Client> | void {
    if (callback) {
      const done = callback as (err: Error | null, c?: pg.Client) => void;
      super.connect((err: Error | null) => (err ? done(connectError(err) as Error) : done(null, this)));
      return;
    }
    return super.connect().catch((err: unknown) => {
      throw connectError(err);
    });
  }
}
