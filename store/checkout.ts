/**
 * Checked-out pool clients that survive their connection breaking. pg-pool listens for `error` only on
 * idle clients: a client checked out with `pool.connect()` whose backend is terminated, or whose server
 * restarts, emits `error` with no listener, and Node ends the process. Every checkout goes through
 * here: the error is recorded (the query in flight rejects with it anyway), and the broken client is
 * destroyed on release instead of going back to the pool.
 */
import type pg from 'pg';

export interface Checkout {
  client: pg.PoolClient;
  /** The connection's error, if it broke while checked out. */
  readonly broken: Error | undefined;
  /** Returns the client to the pool, or destroys it when it broke or `destroy` is set. */
  release(destroy?: boolean): void;
}

/** `pool.connect()` with an `error` listener for as long as the client is checked out. */
export async function checkout(pool: Pick<pg.Pool, 'connect'>): Promise<Checkout> {
  const client = await pool.connect();
  let broken: Error | undefined;
  let released = false;
  const onError = (error: Error) => {
    broken ??= error;
  };
  client.on('error', onError);
  return {
    client,
    get broken() {
      return broken;
    },
    release(destroy = false) {
      if (released) return;
      released = true;
      client.removeListener('error', onError);
      client.release(broken ?? (destroy ? true : undefined));
    },
  };
}

/**
 * Runs `fn` in a transaction on a checked-out client: commit on success, rollback on error. A client
 * whose rollback failed is destroyed rather than reused in an unknown state.
 */
export async function inTransaction<T>(
  pool: Pick<pg.Pool, 'connect'>,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const c = await checkout(pool);
  let destroy = false;
  try {
    await c.client.query('begin');
    const result = await fn(c.client);
    await c.client.query('commit');
    return result;
  } catch (error) {
    await c.client.query('rollback').catch(() => (destroy = true));
    throw error;
  } finally {
    c.release(destroy);
  }
}
