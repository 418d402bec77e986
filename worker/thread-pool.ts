/**
 * A worker thread's database connections (exactly-once transactions, durable steps and waits), within
 * the threads' share of the node's connection budget (connection-slots.ts, docs/connections.md).
 *
 * Each connection the thread opens holds one slot of the shared semaphore until it closes, idle or not.
 * A checkout takes an idle connection of this thread, else waits for a slot and opens one; with every
 * slot taken it waits (the work waits for a connection, it does not fail). So that no thread keeps
 * more than its share while another waits, and no connection is closed only to be opened again (opening
 * one costs the server a process, a round trip and authentication): a connection released while
 * another thread waits goes on to this thread's next waiter as long as the thread holds no more than
 * its fair share (the slots divided among the threads that hold or wait for them, rounded up); above
 * it, or when a thread waits holding no slot at all and the connection has served its time slice
 * (`sliceMs` since it opened), it is closed and its slot goes to whoever takes it first. A thread with
 * idle connections watches the semaphore's waiter count and closes them when someone waits. Idle
 * connections also close after `idleTimeoutMs`.
 *
 * A connection that breaks while checked out (server restart, terminated backend) fails the query in
 * flight, is closed on release, and gives its slot back when it ends.
 *
 * States of a connection: connecting -> busy <-> idle -> closed (slot released). Owned by one worker
 * thread.
 */
import type pg from 'pg';
import { isConnectionError } from '../log/failure-log.ts';
import { ConnectionClient } from '../store/connections.ts';
import type { Queryable } from '../store/queryable.ts';
import type { ConnectionSlots } from './connection-slots.ts';

export const THREAD_POOL_DEFAULTS = {
  /** An idle connection closes after this long (its slot goes back to the other threads). */
  idleTimeoutMs: 10_000,
  /**
   * While a thread waits holding no slot, a connection serves this thread's waiters this long, then is
   * given up (when there are more threads than slots, they take turns).
   */
  sliceMs: 100,
};
/** How long one watch for waiting threads lasts before it is renewed (while connections are idle). */
const WATCH_MS = 5_000;

export interface ThreadPoolOptions {
  connectionString: string;
  /** More pg client options of each connection (the node's connect timeout and keepalive). */
  clientConfig?: pg.ClientConfig;
  slots: ConnectionSlots;
  /** This thread's id (its seat in the semaphore). */
  threadId: number;
  idleTimeoutMs?: number;
  sliceMs?: number;
}

/** A checked-out connection; release it exactly once. */
export interface ThreadCheckout {
  client: pg.Client;
  /** Back to the thread's idle connections, or closed when it broke, `destroy` is set or others wait. */
  release(destroy?: boolean): void;
  /** What broke the connection (the server's error when it ended the session), if it broke. */
  brokenBy(): Error | undefined;
}

interface Idle {
  client: Connection;
  timer: NodeJS.Timeout;
}

interface Connection extends pg.Client {
  broken?: Error;
  /** performance.now() when it opened. */
  openedAt?: number;
}

interface Waiter {
  resolve: (client: Connection) => void;
  reject: (error: unknown) => void;
}

export class ThreadPool {
  private readonly idle: Idle[] = [];
  private readonly waiters: Waiter[] = [];
  /** Slot acquisitions under way for this thread's waiters. */
  private acquiring = 0;
  private watching = false;

  constructor(private readonly options: ThreadPoolOptions) {}

  async connect(): Promise<ThreadCheckout> {
    let idle = this.idle.pop();
    while (idle && isBroken(idle.client)) {
      clearTimeout(idle.timer);
      void this.close(idle.client);
      idle = this.idle.pop();
    }
    const client = idle
      ? (clearTimeout(idle.timer), idle.client)
      : await new Promise<Connection>((resolve, reject) => {
          this.waiters.push({ resolve, reject });
          this.pump();
        });
    let released = false;
    return {
      client,
      release: (destroy = false) => {
        if (released) return;
        released = true;
        this.release(client, destroy);
      },
      brokenBy: () => client.broken,
    };
  }

  /** One statement on a connection of the pool (durable steps and waits). */
  readonly query = (async (...args: unknown[]) => {
    const { client, release } = await this.connect();
    try {
      const result = await (client.query as (...a: unknown[]) => Promise<unknown>).apply(client, args);
      release();
      return result;
    } catch (error) {
      // A terminated backend rejects the query before its socket closes: the client still looks usable.
      release(isConnectionError(error));
      throw error;
    }
  }) as Queryable['query'];

  private release(client: Connection, destroy: boolean): void {
    const keep = !this.othersWait() || (this.waiters.length > 0 && this.withinShare(client));
    if (destroy || isBroken(client) || !keep) {
      void this.close(client);
      this.pump();
      return;
    }
    const waiter = this.waiters.shift();
    if (waiter) return waiter.resolve(client);
    const timer = setTimeout(() => {
      const at = this.idle.findIndex((i) => i.client === client);
      if (at >= 0) void this.close(this.idle.splice(at, 1)[0].client);
    }, this.options.idleTimeoutMs ?? THREAD_POOL_DEFAULTS.idleTimeoutMs);
    timer.unref();
    this.idle.push({ client, timer });
    this.watch();
  }

  /** This thread holds more than its fair share now; with it, whether a thread waits holding none. */
  private overShare(): { over: boolean; starved: boolean } {
    const { slots, threadId } = this.options;
    const { fair, starved } = slots.share(threadId);
    return { over: slots.held(threadId) > fair, starved };
  }

  /** While others wait: may this thread keep the connection for its own next waiter? */
  private withinShare(client: Connection): boolean {
    const { over, starved } = this.overShare();
    if (over) return false;
    if (!starved) return true;
    return (
      performance.now() - (client.openedAt ?? 0) <= (this.options.sliceMs ?? THREAD_POOL_DEFAULTS.sliceMs)
    );
  }

  /** Another thread waits for a slot (this thread's own acquisitions count among the waiters). */
  private othersWait(): boolean {
    return this.options.slots.waiting > this.acquiring;
  }

  /**
   * Starts one slot acquisition per waiter not yet served by one, up to the thread's fair share (or
   * beyond it while slots are free and no other thread waits): a thread at its share serves its waiters
   * with the connections it has, so that a slot it gives up goes to the thread that waits for it, not
   * back to itself. Called again whenever one of its connections ends.
   */
  private pump(): void {
    const { slots, threadId } = this.options;
    const held = slots.held(threadId);
    const { fair } = slots.share(threadId);
    while (
      this.waiters.length > this.acquiring &&
      (held + this.acquiring < fair || (slots.open < slots.limit && !this.othersWait()))
    ) {
      this.acquiring++;
      void slots.acquire(threadId).then(async () => {
        this.acquiring--;
        // Served meanwhile by a released connection, or over the share while other threads wait (an
        // acquisition started before they came): the slot is not needed, or is theirs.
        const over = this.othersWait() && this.overShare().over;
        const waiter = over ? undefined : this.waiters.shift();
        if (!waiter) return slots.release(threadId);
        try {
          waiter.resolve(await this.openConnection());
        } catch (error) {
          waiter.reject(error);
        }
      });
    }
  }

  /** A new connection, on a slot already taken; the slot goes back when the connection ends. */
  private async openConnection(): Promise<Connection> {
    const client: Connection = new ConnectionClient({
      ...this.options.clientConfig,
      connectionString: this.options.connectionString,
      application_name: 'taskmill-worker',
    });
    let closed = false;
    const onEnd = () => {
      if (closed) return;
      closed = true;
      const at = this.idle.findIndex((i) => i.client === client);
      if (at >= 0) clearTimeout(this.idle.splice(at, 1)[0].timer);
      this.options.slots.release(this.options.threadId);
      this.pump();
    };
    client.on('error', (error: Error) => (client.broken ??= error));
    client.once('end', onEnd);
    try {
      await client.connect();
      client.openedAt = performance.now();
    } catch (error) {
      await client.end().catch(() => {});
      onEnd();
      throw error;
    }
    return client;
  }

  private async close(client: Connection): Promise<void> {
    await client.end().catch(() => {});
  }

  /** While connections are idle here, close them as soon as some thread waits for a slot. */
  private watch(): void {
    if (this.watching) return;
    this.watching = true;
    void (async () => {
      while (this.idle.length > 0) {
        if (!(await this.options.slots.wanted(WATCH_MS, this.acquiring))) continue;
        for (const { client, timer } of this.idle.splice(0)) {
          clearTimeout(timer);
          void this.close(client);
        }
      }
      this.watching = false;
    })();
  }
}

/**
 * A connection that may not serve another query: it reported an error, or pg marked it unusable (a
 * connection lost during a query rejects that query without an 'error' event; the next one fails with
 * "Client has encountered a connection error and is not queryable"). The same test as pg-pool's.
 */
function isBroken(client: Connection): boolean {
  const internal = client as unknown as { _queryable?: boolean; _ending?: boolean };
  return client.broken !== undefined || internal._queryable === false || internal._ending === true;
}
