/**
 * The dashboard's pages: the overview (`/`, dashboard.html) and the pages of pages.html, one file that
 * draws, from its address, the task list (`/tasks`), a task (`/tasks/:id`), a workflow's graph
 * (`/workflows/:id`) and the keys (`/keys`, `/keys/affinity`, `/keys/concurrency`). The two browser
 * libraries the pages use (morphdom: updates in place, so a refresh does not blink; dagre: the layered
 * layout of the graph) are served from this server's own dependencies, and the stylesheet both pages
 * share (pages.css) from this folder: a page loads nothing from elsewhere, and the content security
 * policy makes sure of it.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { FastifyInstance, FastifyReply } from 'fastify';

const require = createRequire(import.meta.url);
const html = (file: string) => readFileSync(new URL(`./${file}`, import.meta.url), 'utf8');
/** A file beside the entry point of an npm package (their `exports` hide the other files). */
const beside = (pkg: string, file: string) =>
  readFileSync(path.join(path.dirname(require.resolve(pkg)), file), 'utf8');

const CSP =
  "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";

/** The addresses that answer with pages.html. */
export const PAGE_PATHS = [
  '/tasks',
  '/tasks/:id',
  '/workflows/:id',
  '/keys',
  '/keys/affinity',
  '/keys/concurrency',
] as const;

/**
 * Every route of the pages: public even when the API needs a token (static files; the data they show
 * comes from the API, which asks for it).
 */
export const PAGE_ROUTES = ['/', ...PAGE_PATHS, '/assets/:file'] as const;

export function registerPageRoutes(app: FastifyInstance): void {
  // Read when a server is built, not when this module is imported (the CLI imports PAGE_ROUTES).
  const dashboardHtml = html('dashboard.html');
  const pagesHtml = html('pages.html');
  /**
   * Served under /assets/: the minified browser builds of the pages' libraries (pinned in package.json)
   * and the stylesheet both pages share.
   */
  const assets: Record<string, { body: string; type: string }> = {
    'morphdom.js': { body: beside('morphdom', 'morphdom-umd.min.js'), type: 'text/javascript' },
    'dagre.js': { body: beside('@dagrejs/dagre', 'dagre.min.js'), type: 'text/javascript' },
    'pages.css': { body: html('pages.css'), type: 'text/css' },
  };
  const page = (body: string) => async (_request: unknown, reply: FastifyReply) =>
    reply
      .header('content-type', 'text/html; charset=utf-8')
      .header('content-security-policy', CSP)
      .send(body);
  app.get('/', { schema: { hide: true } }, page(dashboardHtml));
  for (const url of PAGE_PATHS) app.get(url, { schema: { hide: true } }, page(pagesHtml));
  app.get<{ Params: { file: string } }>(
    '/assets/:file',
    { schema: { hide: true } },
    async (request, reply) => {
      const asset = Object.hasOwn(assets, request.params.file) ? assets[request.params.file] : undefined;
      if (asset === undefined) return reply.code(404).send({ statusCode: 404, error: 'Not Found' });
      return reply
        .header('content-type', `${asset.type}; charset=utf-8`)
        .header('cache-control', 'public, max-age=3600')
        .send(asset.body);
    },
  );
}
