/**
 * Who may call the HTTP API. Bound to a loopback address, the server is open to local processes
 * (a token is still enforced when one is given). Bound anywhere else, it refuses to start without a
 * bearer token, and every route except the health probes and the dashboard shell (a static page with
 * no data; it calls the API with the token the operator enters) requires `Authorization: Bearer <token>`.
 */
import { timingSafeEqual, createHash } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { TaskmillError } from '../runtime/errors.ts';

/** Where the server binds unless told otherwise: loopback only. */
export const HTTP_DEFAULTS = { host: '127.0.0.1', port: 8080 };
export const MIN_TOKEN_LENGTH = 16;
/** Routes that answer without a token. */
export const PUBLIC_ROUTES = new Set(['/healthz', '/readyz', '/']);

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
