/**
 * The HTTP server of a taskmill cluster (fastify): the JSON API under /api (schema-validated; a bad
 * request gets a 4xx with a message and changes nothing), health and readiness probes, Prometheus
 * metrics, the OpenAPI document and the dashboard pages. It runs standalone (`taskmill serve`) or inside
 * a node process (`taskmill node --http`), where it also exports that node's metrics.
 *
 * States: built -> listening -> closed. `close()` is idempotent; it closes the pool only if it opened it.
 */
import swagger from '@fastify/swagger';
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
} from 'fastify';
import pg from 'pg';
import { assertSchemaKnown } from '../migrations/migrator.ts';
import { TaskmillClient } from '../client/client.ts';
import { TaskmillError, type TaskmillErrorCode } from '../task/errors.ts';
import { FailureLog } from '../log/failure-log.ts';
import { createLogger, type Logger } from '../log/logger.ts';
import { TaskmillMetrics } from '../node/metrics.ts';
import type { TaskmillNode } from '../node/node.ts';
import { bearerAuth, checkBinding, hostCheck, HTTP_DEFAULTS, parseAllowedHosts } from './auth.ts';

export { HTTP_DEFAULTS };
import { registerClusterRoutes } from './cluster-routes.ts';
import { registerCronRoutes } from './cron-routes.ts';
import { registerDeadLetterRoutes } from './dead-letter-routes.ts';
import { registerEventRoutes } from './event-routes.ts';
import { registerFlowRoutes } from './flow-routes.ts';
import { registerKeyRoutes } from './key-routes.ts';
import { registerPageRoutes } from './page-routes.ts';
import { parseQuery } from './schemas.ts';
import { PlannerWaker } from './planner-waker.ts';
import { SubmitBatcher } from './submit-batcher.ts';
import { registerTaskRoutes } from './task-routes.ts';
import { registerWorkflowRoutes } from './workflow-routes.ts';
import { ConnectionClient } from '../store/connections.ts';

const STATUS_OF: Partial<Record<TaskmillErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  UNKNOWN_TASK: 400,
  ENCODE_FAILED: 400,
  INVALID_CONFIG: 400,
  NOT_FOUND: 404,
  NOT_CANCELLABLE: 409,
  NOT_MIGRATED: 503,
  SCHEMA_TOO_NEW: 503,
};

export interface HttpServerOptions {
  /**
   * Database: a pool (not closed by the server), else the pool of `node` (the API's connections are then
   * within the node's connection budget), else a connection string (default DATABASE_URL).
   */
  pool?: pg.Pool;
  connectionString?: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Bearer token; required unless bound to a loopback address. Default TASKMILL_HTTP_TOKEN. */
  token?: string;
  /**
   * Without a token, the Host names (optionally `name:port`) answered besides localhost, 127.0.0.1 and
   * [::1], e.g. a reverse proxy's public name. Default TASKMILL_HTTP_ALLOWED_HOSTS (comma-separated).
   */
  allowedHosts?: string[];
  /** A node running in this process: its metrics are exported and /readyz checks it. */
  node?: TaskmillNode;
  metrics?: TaskmillMetrics;
  nodeTimeoutMs?: number;
  log?: Logger;
}

export interface HttpServer {
  app: FastifyInstance;
  /** http://host:port of the listening server. */
  url: string;
  close(): Promise<void>;
}

/** Builds the app without listening (tests use `app.inject`). */
export async function buildHttpApp(options: HttpServerOptions = {}): Promise<FastifyInstance> {
  const host = options.host ?? HTTP_DEFAULTS.host;
  const token = options.token ?? (process.env.TASKMILL_HTTP_TOKEN || undefined);
  checkBinding(host, token);
  const allowedHosts = parseAllowedHosts(options.allowedHosts ?? process.env.TASKMILL_HTTP_ALLOWED_HOSTS);
  const log = options.log ?? createLogger(undefined, { component: 'http' });
  const connectionString = options.connectionString ?? process.env.DATABASE_URL;
  const shared = options.pool ?? options.node?.client.pool;
  if (!shared && !connectionString) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      'No database: pass a pool or connection string, or set DATABASE_URL.',
    );
  }
  const pool =
    shared ??
    new pg.Pool({ connectionString, max: 10, application_name: 'taskmill-http', Client: ConnectionClient });
  const ownsPool = !shared;
  if (ownsPool) {
    // An idle connection that dies is dropped by the pool: one line per outage, one when it is back.
    const failures = new FailureLog(log);
    pool.on('error', (error) => failures.failure('pool', error));
    pool.on('connect', () => failures.recovered('pool'));
  }
  const client = new TaskmillClient({ pool, notify: false });
  const waker = new PlannerWaker(pool, log);
  const batcher = new SubmitBatcher(client);
  const ownsMetrics = !options.metrics;
  const metrics =
    options.metrics ?? new TaskmillMetrics({ db: pool, nodeTimeoutMs: options.nodeTimeoutMs, log });
  if (options.node && ownsMetrics) metrics.observe(options.node);

  const app = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    // One line per request would be one line per task for producers: requests are not logged.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 16 * 1024 * 1024,
    ajv: {
      customOptions: {
        removeAdditional: false,
        // Bodies are taken as sent: no string for a number, no [x] for x, no null for 0. Query strings
        // are parsed by their schema in a preValidation hook (parseQuery).
        coerceTypes: false,
        allErrors: false,
        allowUnionTypes: true,
      },
    },
    schemaErrorFormatter: (errors, dataVar) => {
      // A oneOf body reports the errors of both branches; keep those of the branch the data's type picked.
      const useful = errors.filter((e) => e.keyword !== 'oneOf');
      const specific = useful.filter((e) => !(e.keyword === 'type' && e.instancePath === ''));
      const chosen = specific.length > 0 ? specific : useful.length > 0 ? useful : errors;
      const text = chosen
        .map((e) => {
          const extra =
            e.keyword === 'additionalProperties' ? ` (${String(e.params.additionalProperty)})` : '';
          return `${dataVar}${e.instancePath.replaceAll('/', '.')} ${e.message}${extra}`;
        })
        .join('; ');
      return new Error(text);
    },
  });
  app.addHook('onRequest', hostCheck({ host, token, allowedHosts }));
  app.addHook('onRequest', bearerAuth(token));
  app.addHook('preValidation', async (request) => {
    const schema = request.routeOptions.schema?.querystring;
    if (schema && typeof request.query === 'object' && request.query !== null) {
      parseQuery(schema, request.query as Record<string, unknown>);
    }
  });
  app.addHook('onClose', async () => {
    await waker.close();
    if (ownsMetrics) metrics.close();
    await client.close();
    if (ownsPool) await pool.end();
  });
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error.validation) {
      return reply
        .code(400)
        .send({ statusCode: 400, code: 'INVALID_ARGUMENT', error: 'Bad Request', message: error.message });
    }
    if (error instanceof TaskmillError) {
      const status = STATUS_OF[error.code] ?? 500;
      if (status >= 500) request.log.error({ err: error }, 'request failed');
      return reply
        .code(status)
        .send({ statusCode: status, code: error.code, error: httpText(status), message: error.message });
    }
    const status =
      error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
    if (status >= 500) request.log.error({ err: error }, 'request failed');
    return reply.code(status).send({
      statusCode: status,
      code: status >= 500 ? 'INTERNAL' : (error.code ?? 'BAD_REQUEST'),
      error: httpText(status),
      message: status >= 500 ? 'Internal error; see the server log.' : error.message,
    });
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'taskmill',
        version: '1',
        description: 'Schedule, inspect and steer the tasks of a taskmill cluster.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }));
  app.get('/readyz', { schema: { hide: true } }, async (_request, reply) => {
    try {
      if (options.node && options.node.state !== 'running') {
        throw new Error(`node ${options.node.name} is ${options.node.state}`);
      }
      if (options.node && !options.node.databaseAvailable) {
        throw new Error(`node ${options.node.name} cannot reach the database`);
      }
      await withTimeout(assertSchemaKnown(pool), READY_TIMEOUT_MS, 'the database did not answer in time');
      return { status: 'ready' };
    } catch (error) {
      return reply.code(503).send({ status: 'not ready', reason: (error as Error).message });
    }
  });
  app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
    return reply.header('content-type', metrics.contentType).send(await metrics.metrics());
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  registerPageRoutes(app);
  registerTaskRoutes(app, { pool, client, metrics, waker, batcher });
  registerClusterRoutes(app, { pool, nodeTimeoutMs: options.nodeTimeoutMs });
  registerWorkflowRoutes(app, { pool });
  registerDeadLetterRoutes(app, { pool });
  registerEventRoutes(app, { client });
  registerFlowRoutes(app, { client });
  registerCronRoutes(app, { pool, nodeTimeoutMs: options.nodeTimeoutMs });
  registerKeyRoutes(app, { pool });
  return app;
}

/** Builds the app and listens on host:port (127.0.0.1:8080 by default). */
export async function startHttpServer(options: HttpServerOptions = {}): Promise<HttpServer> {
  const app = await buildHttpApp(options);
  const host = options.host ?? HTTP_DEFAULTS.host;
  try {
    await app.listen({ host, port: options.port ?? HTTP_DEFAULTS.port });
  } catch (error) {
    await app.close();
    throw error;
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  app.log.info({ url }, 'HTTP API listening');
  let closing: Promise<void> | undefined;
  return { app, url, close: () => (closing ??= app.close()) };
}

/** /readyz answers 503 when the database takes longer than this to answer. */
const READY_TIMEOUT_MS = 2_000;

function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  promise.catch(() => {});
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function httpText(status: number): string {
  return (
    {
      400: 'Bad Request',
      401: 'Unauthorized',
      403: 'Forbidden',
      404: 'Not Found',
      409: 'Conflict',
      413: 'Payload Too Large',
      415: 'Unsupported Media Type',
      503: 'Service Unavailable',
    }[status] ?? (status >= 500 ? 'Internal Server Error' : 'Bad Request')
  );
}
