/**
 * The loopback TCP proxy the network-fault tests and benches put between a node and PostgreSQL
 * (bench/tcp-proxy.ts): it forwards bytes in order, delays them by the latency set, resets every
 * connection when cut, holds bytes and new connections without a reset in a black hole, and lets all
 * of it through again on restore. Against an echo server, then against PostgreSQL.
 */
import net from 'node:net';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { proxyForUrl, startTcpProxy, type TcpProxy } from '../bench/tcp-proxy.ts';
import { ConnectionClient } from '../store/connections.ts';
import { defaultNetworkOptions, poolConnectionConfig } from '../store/network.ts';
import { useTestDatabase } from './helpers/database.ts';

const db = useTestDatabase();

let echo: net.Server;
let echoPort: number;
const proxies: TcpProxy[] = [];
const sockets: net.Socket[] = [];

beforeAll(async () => {
  echo = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve));
  echoPort = (echo.address() as net.AddressInfo).port;
});

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await Promise.all(proxies.splice(0).map((p) => p.close()));
});

afterAll(async () => {
  await new Promise<void>((resolve) => echo.close(() => resolve()));
});

async function proxyToEcho(latencyMs = 0): Promise<TcpProxy> {
  const proxy = await startTcpProxy({ targetHost: '127.0.0.1', targetPort: echoPort, latencyMs });
  proxies.push(proxy);
  return proxy;
}

/** A connected client with everything it receives collected. */
async function connect(proxy: TcpProxy): Promise<{ socket: net.Socket; received: () => string }> {
  const socket = net.connect({ host: proxy.host, port: proxy.port });
  sockets.push(socket);
  let text = '';
  socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return { socket, received: () => text };
}

/** Resolves once `received()` is at least `length` long. */
async function receive(socket: net.Socket, received: () => string, length: number): Promise<string> {
  while (received().length < length) await new Promise((resolve) => socket.once('data', resolve));
  return received();
}

/** The error a socket ends with (or 'closed' when it closes cleanly). */
function ending(socket: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    socket.once('close', () => resolve('closed'));
  });
}

describe('forwarding', () => {
  it('passes bytes both ways and counts connections and bytes', async () => {
    const proxy = await proxyToEcho();
    const { socket, received } = await connect(proxy);
    socket.write('hello');
    expect(await receive(socket, received, 5)).toBe('hello');
    const stats = proxy.stats();
    expect(stats).toMatchObject({ accepted: 1, forwarded: 1, open: 1, bytesUp: 5, bytesDown: 5 });
    socket.end();
    await new Promise((resolve) => socket.once('close', resolve));
    await expect.poll(() => proxy.stats().open).toBe(0);
  });

  it('delays every chunk by the latency, each way, keeping their order', async () => {
    const proxy = await proxyToEcho(40);
    const { socket, received } = await connect(proxy);
    const started = performance.now();
    const parts = Array.from({ length: 20 }, (_, i) => `${String(i).padStart(2, '0')};`);
    for (const part of parts) socket.write(part);
    const text = await receive(socket, received, parts.join('').length);
    // Up and down: at least two delays (timers may fire a millisecond early).
    expect(performance.now() - started).toBeGreaterThanOrEqual(78);
    expect(text).toBe(parts.join(''));

    proxy.setLatency(0);
    const before = performance.now();
    socket.write('x');
    await receive(socket, received, text.length + 1);
    expect(performance.now() - before).toBeLessThan(78);
    expect(() => proxy.setLatency(-1)).toThrow(/latency/);
  });
});

describe('cut', () => {
  it('resets open connections and new ones until restored', async () => {
    const proxy = await proxyToEcho();
    const { socket } = await connect(proxy);
    const ended = ending(socket);
    proxy.cut();
    expect(await ended).toBe('ECONNRESET');
    expect(proxy.state).toBe('cut');

    const refused = net.connect({ host: proxy.host, port: proxy.port });
    sockets.push(refused);
    expect(await ending(refused)).toBe('ECONNRESET');
    expect(proxy.stats()).toMatchObject({ reset: 1, refused: 1, forwarded: 1 });

    proxy.restore();
    const again = await connect(proxy);
    again.socket.write('back');
    expect(await receive(again.socket, again.received, 4)).toBe('back');
  });
});

describe('black hole', () => {
  it('holds bytes without a reset and delivers them in order on restore', async () => {
    const proxy = await proxyToEcho();
    const { socket, received } = await connect(proxy);
    socket.write('a');
    await receive(socket, received, 1);
    proxy.blackhole();
    let closed = false;
    socket.once('close', () => (closed = true));
    socket.write('b');
    socket.write('c');
    // Nothing comes back while the hole lasts: a bounded look, since silence has no event to wait on.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(received()).toBe('a');
    expect(closed).toBe(false);
    expect(proxy.stats().bytesUp).toBe(1);

    proxy.restore();
    expect(await receive(socket, received, 3)).toBe('abc');
  });

  it('accepts new connections silently and joins them to the target on restore', async () => {
    const proxy = await proxyToEcho();
    proxy.blackhole();
    const { socket, received } = await connect(proxy);
    socket.write('held');
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(proxy.stats()).toMatchObject({ accepted: 1, forwarded: 0, open: 1 });
    expect(received()).toBe('');
    proxy.restore();
    expect(await receive(socket, received, 4)).toBe('held');
    expect(proxy.stats().forwarded).toBe(1);
  });
});

describe('PostgreSQL through the proxy', () => {
  it('runs queries, times out in a black hole, and fails at once when cut', async () => {
    const proxy = await proxyForUrl(db.url, { latencyMs: 5 });
    proxies.push(proxy);
    const client = new pg.Client({ connectionString: proxy.url(db.url), query_timeout: 1000 });
    client.on('error', () => {});
    await client.connect();
    try {
      expect((await client.query<{ n: number }>('select 1 as n')).rows[0].n).toBe(1);

      proxy.blackhole();
      await expect(client.query('select 2')).rejects.toThrow(/timeout/i);

      proxy.restore();
      proxy.cut();
      const other = new pg.Client({ connectionString: proxy.url(db.url), connectionTimeoutMillis: 5000 });
      other.on('error', () => {});
      await expect(other.connect()).rejects.toThrow();
      await other.end().catch(() => {});
    } finally {
      await client.end().catch(() => {});
    }
    expect(proxy.stats().reset).toBeGreaterThanOrEqual(1);
  });
});

describe("a node's pool with the network settings (store/network.ts poolConnectionConfig)", () => {
  const network = { ...defaultNetworkOptions({ nodeTimeoutMs: 1_000 }), connectTimeoutMs: 300 };

  it('gives up on a connect into a black hole after connectTimeoutMs', async () => {
    const proxy = await proxyForUrl(db.url);
    proxies.push(proxy);
    proxy.blackhole();
    const pool = new pg.Pool({
      connectionString: proxy.url(db.url),
      Client: ConnectionClient,
      ...poolConnectionConfig(network),
    });
    pool.on('error', () => {});
    const started = performance.now();
    await expect(pool.query('select 1')).rejects.toThrow(/timeout/i);
    expect(performance.now() - started).toBeLessThan(10_000);
    await pool.end();
  });

  it('lets a checkout wait for a busy pool longer than connectTimeoutMs: work queues, it does not fail', async () => {
    const pool = new pg.Pool({
      connectionString: db.url,
      max: 1,
      Client: ConnectionClient,
      ...poolConnectionConfig(network),
    });
    try {
      const busy = pool.query('select pg_sleep(1)');
      const queued = pool.query<{ n: number }>('select 2 as n');
      await busy;
      expect((await queued).rows).toEqual([{ n: 2 }]);
    } finally {
      await pool.end();
    }
  });
});
