/**
 * A TCP proxy on loopback that a test or a benchmark controls, to put network faults between a node
 * and PostgreSQL: it listens on 127.0.0.1 (port 0, so the system picks one) and forwards every
 * connection to one target host:port.
 *
 * States (one for the whole proxy, changed only by the caller, on the main thread):
 * - `open`: bytes flow both ways, each chunk delayed by the latency when one is set (setLatency).
 * - `cut`: entered by cut(). Every open connection is reset (RST to both the client and the target),
 *   and each new connection is accepted and reset at once, so the client sees ECONNRESET.
 * - `blackhole`: entered by blackhole(). Sockets stay open but nothing is forwarded either way: the
 *   proxy stops reading, so bytes wait in the kernel's buffers as they would in retransmissions on a
 *   partitioned network, and no RST is sent. New connections are accepted and kept silent (the
 *   target is not dialled). Since the proxy's own sockets stay healthy, TCP keepalive does not see a
 *   black hole made here: only timeouts above TCP do (query and connect timeouts).
 * - restore() goes back to `open` from either: held bytes and held connections go through, in order.
 * close() resets everything and stops listening; it is the end state.
 *
 * Counters (stats()) say how many connections were accepted, forwarded to the target, are open now,
 * were reset by cut() or refused while cut, and how many bytes went each way.
 */
import net from 'node:net';

export type ProxyState = 'open' | 'cut' | 'blackhole' | 'closed';

export interface TcpProxyOptions {
  /** Where connections go. */
  targetHost: string;
  targetPort: number;
  /** Delay of every chunk each way, from the start (setLatency changes it). */
  latencyMs?: number;
}

export interface TcpProxyStats {
  /** Connections the proxy accepted, in any state. */
  accepted: number;
  /** Connections joined to the target. */
  forwarded: number;
  /** Connections open now (accepted, not yet closed on the client's side). */
  open: number;
  /** Open connections reset by cut(). */
  reset: number;
  /** Connections reset on arrival while cut. */
  refused: number;
  /** Bytes delivered to the target (up) and to clients (down). */
  bytesUp: number;
  bytesDown: number;
}

export interface TcpProxy {
  readonly host: string;
  readonly port: number;
  readonly state: ProxyState;
  /** `url` with its host and port replaced by the proxy's (a postgres:// connection string). */
  url(url: string): string;
  cut(): void;
  blackhole(): void;
  restore(): void;
  setLatency(ms: number): void;
  stats(): TcpProxyStats;
  close(): Promise<void>;
}

/** One direction of one connection: chunks in order, each released at its due time. */
class Pipe {
  private readonly queue: { chunk: Buffer; due: number }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private ended = false;

  constructor(
    private readonly from: net.Socket,
    private readonly to: net.Socket,
    private readonly proxy: Proxy,
    private readonly count: (bytes: number) => void,
  ) {
    from.on('data', (chunk: Buffer) => {
      this.queue.push({ chunk, due: performance.now() + proxy.latencyMs });
      this.flush();
    });
    // A FIN (or the socket's end without one) is passed on after the bytes before it.
    const end = () => {
      this.ended = true;
      this.flush();
    };
    from.on('end', end);
    from.on('close', end);
    to.on('drain', () => {
      if (this.proxy.state === 'open') from.resume();
    });
  }

  /** Delivers what is due, in order, while the proxy is open; paused otherwise. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.proxy.state !== 'open') {
      this.from.pause();
      return;
    }
    const now = performance.now();
    while (this.queue.length > 0 && this.queue[0].due <= now) {
      const { chunk } = this.queue.shift()!;
      this.count(chunk.length);
      if (this.to.destroyed) continue;
      if (!this.to.write(chunk)) this.from.pause();
    }
    if (this.queue.length > 0) {
      this.timer = setTimeout(() => this.flush(), Math.max(0, this.queue[0].due - now));
    } else if (this.ended && !this.to.destroyed && !this.to.writableEnded) this.to.end();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.length = 0;
  }
}

/** A client socket, and its target socket once dialled. */
interface Connection {
  client: net.Socket;
  target?: net.Socket;
  pipes: Pipe[];
}

class Proxy implements TcpProxy {
  state: ProxyState = 'open';
  latencyMs: number;
  readonly host = '127.0.0.1';
  port = 0;
  private readonly server: net.Server;
  private readonly connections = new Set<Connection>();
  private readonly counters: TcpProxyStats = {
    accepted: 0,
    forwarded: 0,
    open: 0,
    reset: 0,
    refused: 0,
    bytesUp: 0,
    bytesDown: 0,
  };

  constructor(private readonly options: TcpProxyOptions) {
    this.latencyMs = validLatency(options.latencyMs ?? 0);
    this.server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) =>
      this.accept(client),
    );
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, this.host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  url(url: string): string {
    const u = new URL(url);
    u.hostname = this.host;
    u.port = String(this.port);
    return u.toString();
  }

  private accept(client: net.Socket): void {
    this.counters.accepted++;
    if (this.state === 'cut' || this.state === 'closed') {
      this.counters.refused++;
      client.on('error', () => {});
      client.resetAndDestroy();
      return;
    }
    this.counters.open++;
    const connection: Connection = { client, pipes: [] };
    this.connections.add(connection);
    client.on('error', () => {});
    client.on('close', () => {
      this.counters.open--;
      this.connections.delete(connection);
    });
    // A black hole keeps the new connection silent; restore() dials the target for it.
    if (this.state === 'open') this.dial(connection);
  }

  private dial(connection: Connection): void {
    const { client } = connection;
    const target = net.connect({
      host: this.options.targetHost,
      port: this.options.targetPort,
      allowHalfOpen: true,
      // Nagle off on both legs, as pg sets it on its own socket: the proxy adds only the delay asked for.
      noDelay: true,
    });
    connection.target = target;
    this.counters.forwarded++;
    target.on('error', () => {});
    connection.pipes = [
      new Pipe(client, target, this, (n) => (this.counters.bytesUp += n)),
      new Pipe(target, client, this, (n) => (this.counters.bytesDown += n)),
    ];
    client.resume();
  }

  cut(): void {
    if (this.state === 'closed') return;
    this.state = 'cut';
    this.resetAll();
  }

  blackhole(): void {
    if (this.state === 'closed') return;
    this.state = 'blackhole';
    for (const connection of this.connections) {
      connection.client.pause();
      connection.target?.pause();
    }
  }

  restore(): void {
    if (this.state === 'closed') return;
    this.state = 'open';
    for (const connection of this.connections) {
      if (!connection.target) {
        this.dial(connection);
        continue;
      }
      connection.client.resume();
      connection.target.resume();
      for (const pipe of connection.pipes) pipe.flush();
    }
  }

  setLatency(ms: number): void {
    this.latencyMs = validLatency(ms);
  }

  stats(): TcpProxyStats {
    return { ...this.counters };
  }

  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closed';
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.resetAll();
    await closed;
  }

  /** RST to both sides of every open connection. */
  private resetAll(): void {
    for (const connection of this.connections) {
      for (const pipe of connection.pipes) pipe.stop();
      this.counters.reset++;
      connection.target?.resetAndDestroy();
      connection.client.resetAndDestroy();
    }
    this.connections.clear();
  }
}

function validLatency(ms: number): number {
  if (!Number.isFinite(ms) || ms < 0) throw new Error(`latency must be a number of ms ≥ 0, got ${ms}`);
  return ms;
}

/** Starts a proxy on 127.0.0.1 (a port the system picks) to the target. */
export async function startTcpProxy(options: TcpProxyOptions): Promise<TcpProxy> {
  const proxy = new Proxy(options);
  await proxy.listen();
  return proxy;
}

/** Starts a proxy to the host and port of a postgres:// URL; `proxy.url(url)` is the URL through it. */
export async function proxyForUrl(url: string, options: { latencyMs?: number } = {}): Promise<TcpProxy> {
  const u = new URL(url);
  return startTcpProxy({
    targetHost: u.hostname || '127.0.0.1',
    targetPort: Number(u.port || 5432),
    latencyMs: options.latencyMs,
  });
}
