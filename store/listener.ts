/**
 * One dedicated PostgreSQL session per process for LISTEN: channels are subscribed once and
 * notifications are fanned out to in-process handlers. When the session breaks it reconnects with a
 * backoff and calls every handler with `reconnected = true`, because notifications sent meanwhile are
 * lost: a subscriber must then re-check the rows (every loop here is level-triggered anyway).
 *
 * States: idle -> connected -> (broken -> reconnecting -> connected)* -> closed. Main thread only.
 */
import pg from 'pg';
import { ConnectionClient } from './connections.ts';

export type NotificationHandler = (payload: string, reconnected: boolean) => void;

export class Listener {
  private client: pg.Client | undefined;
  private readonly handlers = new Map<string, Set<NotificationHandler>>();
  private closed = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private connecting: Promise<void> | undefined;

  constructor(
    /** A connection string, or the options of the session (a pool's `options` will do). */
    private readonly connection: string | pg.ClientConfig,
    private readonly onError: (error: unknown) => void,
  ) {}

  /** Whether the session is open or opening (one connection of the node's budget). */
  get open(): boolean {
    return !this.closed && (this.client !== undefined || this.connecting !== undefined);
  }

  async subscribe(channel: string, handler: NotificationHandler): Promise<() => void> {
    let set = this.handlers.get(channel);
    if (!set) {
      set = new Set();
      this.handlers.set(channel, set);
      if (this.client) await this.client.query(`listen ${pg.escapeIdentifier(channel)}`);
    }
    set.add(handler);
    await this.ensureConnected();
    return () => set.delete(handler);
  }

  private ensureConnected(): Promise<void> {
    if (this.client || this.closed) return Promise.resolve();
    this.connecting ??= this.connect().finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private async connect(): Promise<void> {
    const options =
      typeof this.connection === 'string' ? { connectionString: this.connection } : this.connection;
    const client = new ConnectionClient({ ...options, application_name: 'taskmill-listen' });
    client.on('notification', (msg) => {
      for (const handler of this.handlers.get(msg.channel) ?? []) handler(msg.payload ?? '', false);
    });
    client.on('error', (error) => this.broken(client, error));
    client.on('end', () => this.broken(client, undefined));
    await client.connect();
    for (const channel of this.handlers.keys()) await client.query(`listen ${pg.escapeIdentifier(channel)}`);
    if (this.closed) {
      await client.end();
      return;
    }
    this.client = client;
  }

  private broken(client: pg.Client, error: unknown): void {
    if (this.client !== client || this.closed) return;
    this.client = undefined;
    if (error) this.onError(error);
    const retry = (delay: number) => {
      this.reconnectTimer = setTimeout(() => {
        this.ensureConnected().then(
          () => {
            for (const set of this.handlers.values()) for (const handler of set) handler('', true);
          },
          (e) => {
            this.onError(e);
            retry(Math.min(delay * 2, 5000));
          },
        );
      }, delay);
    };
    retry(100);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    await this.connecting?.catch(() => {});
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => {});
  }
}
