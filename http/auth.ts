/**
 * Who may call the HTTP API. Bound to a loopback address, the server is open to local processes
 * (a token is still enforced when one is given). Bound anywhere else, it refuses to start without a
 * bearer token, and every route except the health probes and the dashboard shell (a static page with
 * no data; it calls the API with the token the operator enters) requires `Authorization: Bearer <token>`.
 *
 * Without a token, a web page could still reach the loopback API through the browser: by DNS
 * rebinding (a name the attacker controls resolving to 127.0.0.1) or by a cross-site form post. So a
 * token-less server answers only requests whose Host names it as localhost, a loopback address or an
 * allowed host (with the port it listens on, when a port is given), and refuses state-changing
 * requests whose Origin is anything else.
 */
import { timingSafeEqual, createHash } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { TaskmillError } from '../task/errors.ts';
import { PAGE_ROUTES } from './page-routes.ts';

/** Where the server binds unless told otherwise: loopback only. */
export const HTTP_DEFAULTS = { host: '127.0.0.1', port: 8080 };
export const MIN_TOKEN_LENGTH = 16;
/** Host names a token-less loopback server answers to, besides its bind address and allowed hosts. */
export const LOOPBACK_HOST_NAMES: readonly string[] = ['localhost', '127.0.0.1', '[::1]'];
/** Routes that answer without a token. */
export const PUBLIC_ROUTES = new Set<string>(['/healthz', '/readyz', ...PAGE_ROUTES]);

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

/** Throws INVALID_CONFIG when the binding would expose the API without a usable token. */
export function checkBinding(host: string, token: string | undefined): void {
  if (token !== undefined && token.length < MIN_TOKEN_LENGTH) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      `The HTTP token must be at least ${MIN_TOKEN_LENGTH} characters (e.g. \`openssl rand -hex 24\`).`,
    );
  }
  if (!isLoopback(host) && token === undefined) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      `Refusing to serve the HTTP API on ${host} without a token: pass --token (or TASKMILL_HTTP_TOKEN), or bind 127.0.0.1.`,
    );
  }
}

/** An onRequest hook that rejects requests without the bearer token (none when token is undefined). */
export function bearerAuth(token: string | undefined) {
  const expected = token === undefined ? undefined : digest(token);
  return async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (!expected || PUBLIC_ROUTES.has(request.routeOptions.url ?? '')) return;
    const header = request.headers.authorization ?? '';
    const match = /^Bearer (.+)$/i.exec(header);
    // Compare digests so the comparison takes the same time whatever the length of the guess.
    if (match && timingSafeEqual(digest(match[1]), expected)) return;
    await reply.code(401).header('www-authenticate', 'Bearer').send({
      statusCode: 401,
      code: 'UNAUTHORIZED',
      error: 'Unauthorized',
      message: 'Send the API token as `Authorization: Bearer <token>`.',
    });
  };
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/**
 * Parses the allowed-hosts setting (option or TASKMILL_HTTP_ALLOWED_HOSTS, comma-separated): host
 * names as a browser sends them in Host, each optionally with a port (`tasks.example.com`,
 * `proxy.internal:8443`, `[fd00::1]`). Throws INVALID_CONFIG for anything else.
 */
export function parseAllowedHosts(value: string | readonly string[] | undefined): string[] {
  const list = typeof value === 'string' ? value.split(',') : [...(value ?? [])];
  return list
    .map((entry) => (typeof entry === 'string' ? entry.trim().toLowerCase() : entry))
    .filter((entry) => entry !== '')
    .map((entry) => {
      const parsed = typeof entry === 'string' ? parseHost(entry) : undefined;
      if (!parsed) {
        throw new TaskmillError(
          'INVALID_CONFIG',
          `Allowed HTTP host ${JSON.stringify(entry)} is not a host name: give names like tasks.example.com or proxy.internal:8443, without scheme or path.`,
        );
      }
      return entry as string;
    });
}

/**
 * An onRequest hook against DNS rebinding and cross-site requests, for a server without a token (a
 * no-op with a token, which a browser page cannot learn). Host must name the loopback interface (or
 * the bind address, or an allowed host); a state-changing request with an Origin header must come
 * from such a host too. Others get 403 and change nothing.
 */
export function hostCheck(options: { host: string; token: string | undefined; allowedHosts: string[] }) {
  if (options.token !== undefined) return async (): Promise<void> => {};
  const bind = options.host.includes(':') ? `[${options.host}]` : options.host;
  const names = new Set([...LOOPBACK_HOST_NAMES, bind.toLowerCase()]);
  const allowed = options.allowedHosts.map((entry) => parseHost(entry)!);
  const accepts = (value: string | undefined, localPort: number | undefined): boolean => {
    const parsed = value === undefined ? undefined : parseHost(value.toLowerCase());
    if (!parsed) return false;
    if (names.has(parsed.name)) {
      return parsed.port === undefined || localPort === undefined || parsed.port === localPort;
    }
    return allowed.some((a) => a.name === parsed.name && (a.port === undefined || a.port === parsed.port));
  };
  return async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const localPort = request.socket?.localPort;
    const host = request.headers.host;
    if (!accepts(host, localPort)) {
      await refuse(
        reply,
        'HOST_NOT_ALLOWED',
        `Host ${JSON.stringify(clip(host ?? ''))} is not allowed: without a token this server answers only to localhost, 127.0.0.1 and [::1] (with its port). Behind a reverse proxy, add the proxy's host name to allowedHosts (TASKMILL_HTTP_ALLOWED_HOSTS), or set a token.`,
      );
      return;
    }
    const origin = request.headers.origin;
    if (
      origin !== undefined &&
      !SAFE_METHODS.has(request.method) &&
      !accepts(originHost(origin), localPort)
    ) {
      await refuse(
        reply,
        'ORIGIN_NOT_ALLOWED',
        `Origin ${JSON.stringify(clip(origin))} is not allowed to change anything here: only pages served from this server's allowed hosts are. Set a token to call the API from other origins.`,
      );
    }
  };
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** `name[:port]` (IPv6 in brackets) as sent in Host; undefined when it is not one. */
function parseHost(value: string): { name: string; port: number | undefined } | undefined {
  const match = /^(\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9_.-]*[a-z0-9])?)(?::(\d{1,5}))?$/i.exec(value);
  if (!match) return undefined;
  const port = match[2] === undefined ? undefined : Number(match[2]);
  if (port !== undefined && port > 65_535) return undefined;
  return { name: match[1].toLowerCase(), port };
}

/** The `host[:port]` of an Origin header (`http://localhost:8080`); undefined for `null` or garbage. */
function originHost(origin: string): string | undefined {
  const match = /^https?:\/\/([^/?#]+)$/i.exec(origin);
  return match ? match[1] : undefined;
}

async function refuse(reply: FastifyReply, code: string, message: string): Promise<void> {
  await reply.code(403).send({ statusCode: 403, code, error: 'Forbidden', message });
}

function clip(value: string): string {
  return value.length > 100 ? `${value.slice(0, 100)}...` : value;
}
