/**
 * The dashboard's pages (http/pages.html) in headless Chromium against a real node: the task list with
 * its filters and keyset pages, a task page, the graph of a workflow of 100+ tasks, the key pages; links
 * between them; refreshes that update the page in place. Screenshots go to .taskmill/test-output/.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineTask, type TaskmillNode } from '../index.ts';
import { startHttpServer, type HttpServer } from '../http/server.ts';
import { createLogger } from '../log/logger.ts';
import * as defs from './fixtures/definitions.ts';
import type { ProgressMessage } from './fixtures/progress.ts';
import { collect, fanout, workflowDefs } from './fixtures/workflow-definitions.ts';
import { launchChromium } from './helpers/browser.ts';
import { useTestDatabase, waitForTasks } from './helpers/database.ts';
import { insertTasks } from './helpers/factory.ts';
import { purgeKeysAndProgress } from '../store/history.ts';
import { TASK_STATES } from '../task/task-states.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const OUTPUT = path.resolve(import.meta.dirname, '../.taskmill/test-output');
const progress = defineTask<ProgressMessage>({
  name: 'progress',
  handler: new URL('./fixtures/progress.ts', import.meta.url),
  retry: { mode: 'OFF' },
});
const HOUR = 3_600_000;
const silent = createLogger('silent');
const db = useTestDatabase();
const problems: string[] = [];
let node: TaskmillNode;
let server: HttpServer;
let browser: Browser;
let page: Page;

const workflowId = '0190a5b2-0000-7000-8000-0000000f10e5';
const ids = {} as {
  dead: string;
  echo: string;
  flaky: string;
  holder: string;
  blocked: string;
  queued: string;
  delayed: string[];
  join: string;
  dependent: string;
  late: string[];
};
let between: Date;

beforeAll(async () => {
  node = await startTestNode(db.url, { name: 'pages-node', tasks: [...defs.all, ...workflowDefs, progress] });
  server = await startHttpServer({
    connectionString: db.url,
    port: 0,
    node,
    log: silent,
    nodeTimeoutMs: 1_000,
  });
  const client = node.client;
  // A workflow of 106 tasks: a fanout of 100 leaves (one fails) and their join, run to the end, then
  // two delayed tasks with a pending join and a pending dependent in the same workflow.
  const root = await client.schedule(fanout, { workflowId, message: { width: 100, failOne: true } });
  ids.dead = await client.schedule(defs.throws, { message: { why: 'always throws', n: 7n } });
  ids.echo = await client.schedule(defs.echo, { message: { hello: 'world' } });
  ids.flaky = await client.schedule(defs.flaky, { message: { succeedOn: 3 } });
  await waitForTasks(client, [root, ids.dead, ids.echo, ids.flaky]);
  await client.waitForWorkflow(workflowId, { timeoutMs: 30_000 });
  ids.delayed = await client.scheduleMany(defs.noop, [
    { workflowId, delayMs: HOUR },
    { workflowId, delayMs: HOUR },
  ]);
  ids.join = await client.scheduleJoin(collect, { workflowId }, ids.delayed);
  ids.dependent = await client.schedule(defs.noop, { workflowId }, { dependsOn: [ids.delayed[0]] });

  // An affinity key and a concurrency key held by a running task, with tasks waiting on each.
  const key = { affinityGroup: 'accounts', affinity: 'acct-1' };
  ids.holder = await client.schedule(progress, {
    ...key,
    concurrencyKey: 'tenant-a',
    message: { hold: true },
  });
  await until(async () => (await client.getTask(ids.holder))?.progress !== null);
  ids.blocked = await client.schedule(defs.noop, key);
  ids.queued = await client.schedule(defs.noop, { concurrencyKey: 'tenant-a', delayMs: HOUR });

  // Tasks created after `between`, for the time-range filter.
  between = (await db.pool.query<{ now: Date }>('select clock_timestamp() as now')).rows[0].now;
  ids.late = await client.scheduleMany(defs.sleep, [{ delayMs: HOUR }, { delayMs: HOUR }, { delayMs: HOUR }]);

  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
  page.on('pageerror', (e) => problems.push(e.message));
  mkdirSync(OUTPUT, { recursive: true });
  console.log(`dashboard page screenshots: ${OUTPUT}/pages-*.png`);
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  await stopAllNodes();
});

async function until(check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function open(url: string): Promise<void> {
  await page.goto(`${server.url}${url}`);
  await page.locator('body[data-loaded=true]').waitFor();
}

const shot = (name: string) =>
  page.screenshot({ path: path.join(OUTPUT, `pages-${name}.png`), fullPage: true });
const rowIds = (table: string) =>
  page
    .locator(`[data-testid=${table}] tr[data-id]`)
    .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-id')));

describe('the task list', () => {
  it('filters by state and task name from its form, and links every id', async () => {
    await open('/tasks');
    await page.locator('[data-testid=filters] input[name=state][value=dead]').check();
    await page.locator('[data-testid=filters] input[name=name]').fill('throws');
    await Promise.all([page.waitForURL(/state=dead/), page.getByRole('button', { name: 'Apply' }).click()]);
    await page.locator('body[data-loaded=true]').waitFor();
    expect(new URL(page.url()).searchParams.get('name')).toBe('throws');
    expect(await rowIds('tasks')).toEqual([ids.dead]);
    // The form shows the filters of the address it was opened with.
    expect(await page.locator('input[name=state][value=dead]').isChecked()).toBe(true);
    await shot('task-list-filtered');

    await Promise.all([
      page.waitForURL(`**/tasks/${ids.dead}`),
      page.locator(`a[href="/tasks/${ids.dead}"]`).click(),
    ]);
    await page.locator('body[data-loaded=true]').waitFor();
    expect(await page.getByTestId('task-name').textContent()).toBe('throws');
  });

  it('filters by affinity key and creation time', async () => {
    await open('/tasks?affinity=acct-1&affinityGroup=accounts');
    expect((await rowIds('tasks')).sort()).toEqual([ids.holder, ids.blocked].sort());
    await open(`/tasks?${new URLSearchParams({ from: between.toISOString() })}`);
    expect((await rowIds('tasks')).sort()).toEqual([...ids.late].sort());
    await open(`/tasks?${new URLSearchParams({ to: between.toISOString(), name: 'sleep' })}`);
    expect(await rowIds('tasks')).toEqual([]);
    // The form takes local times and puts them in the address as UTC date-times, and shows them back.
    await open('/tasks');
    await page.locator('[data-testid=filters] input[name=from]').fill('2099-01-01T00:00:05');
    await Promise.all([
      page.waitForURL(/from=2099|from=2098/),
      page.getByRole('button', { name: 'Apply' }).click(),
    ]);
    await page.locator('body[data-loaded=true]').waitFor();
    const from = new URL(page.url()).searchParams.get('from')!;
    expect(from).toBe((await page.evaluate(`new Date('2099-01-01T00:00:05').toISOString()`)) as string);
    expect(await page.locator('[data-testid=filters] input[name=from]').inputValue()).toBe(
      '2099-01-01T00:00:05',
    );
    expect(await page.locator('[data-testid=tasks] td.empty').textContent()).toBe('no task matches');
    // A time range the API refuses says why, on the page (another tab: the browser logs the 400).
    const other = await browser.newPage();
    try {
      await other.goto(`${server.url}/tasks?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z`);
      await other.getByTestId('notice').filter({ hasText: 'must be before' }).waitFor();
    } finally {
      await other.close();
    }
  });

  it('pages through every task with keyset pagination, newest first', async () => {
    const total = Number(
      (await db.pool.query<{ n: string }>('select count(*) as n from tm_any_task')).rows[0].n,
    );
    expect(total).toBeGreaterThan(110);
    await open('/tasks?limit=40');
    const seen: string[] = [];
    for (;;) {
      seen.push(...((await rowIds('tasks')) as string[]));
      const next = page.getByTestId('next-page');
      if ((await next.count()) === 0) break;
      await Promise.all([page.waitForURL(/cursor=/), next.click()]);
      await page.locator('body[data-loaded=true]').waitFor();
      await page.getByTestId('first-page').waitFor();
    }
    expect(seen).toHaveLength(total);
    expect(new Set(seen).size).toBe(total);
    expect(seen).toEqual([...seen].sort().reverse());
  });
});

describe('the task page', () => {
  it('shows the decoded message of a dead letter and its attempts', async () => {
    await open(`/tasks/${ids.dead}`);
    expect(JSON.parse((await page.getByTestId('message').textContent())!)).toEqual({
      why: 'always throws',
      n: '7',
    });
    // throws: 3 attempts. The two retried ones are recorded whole; of the last, its end and error.
    const attempts = page.locator('[data-testid=attempts] tr[data-attempt]');
    expect(await attempts.count()).toBe(3);
    for (const n of [1, 2]) {
      const retried = page.locator(`[data-testid=attempts] tr[data-attempt="${n}"]`);
      expect(await retried.locator('[data-state]').textContent()).toBe('failed');
      expect(await retried.locator('[data-field=node]').textContent()).toBe('pages-node');
      expect(await retried.locator('[data-field=started]').textContent()).not.toBe('—');
      expect(await retried.locator('[data-field=ended]').textContent()).not.toBe('—');
      expect(await retried.locator('[data-field=error]').textContent()).toMatch(/^Error: boom/);
    }
    const last = page.locator('[data-testid=attempts] tr[data-attempt="3"]');
    expect(await last.locator('[data-state]').textContent()).toBe('dead');
    expect(await last.locator('[data-field=error]').textContent()).toMatch(/^Error: boom/);
    expect(await last.locator('[data-field=ended]').textContent()).not.toBe('—');
    expect(await last.locator('[data-field=node]').textContent()).toBe('—');
  });

  it('shows the decoded result of a completed task; a retried task has all its attempts', async () => {
    await open(`/tasks/${ids.echo}`);
    expect(JSON.parse((await page.getByTestId('result').textContent())!)).toEqual({
      message: { hello: 'world' },
      attempt: 1,
    });
    await open(`/tasks/${ids.flaky}`);
    expect(JSON.parse((await page.getByTestId('result').textContent())!)).toBe(3);
    expect(
      await page.locator('[data-testid=attempts] tr[data-attempt] [data-state]').allTextContents(),
    ).toEqual(['failed', 'failed', 'completed']);
    expect(
      await page.locator('[data-testid=attempts] tr[data-attempt] [data-field=error]').allTextContents(),
    ).toEqual([expect.stringMatching(/attempt 1 fails/), expect.stringMatching(/attempt 2 fails/), '']);
  });

  it('shows the running attempt with its node, start and progress, and updates it in place when cancelled', async () => {
    await open(`/tasks/${ids.holder}`);
    const current = page.locator('[data-testid=attempts] tr[data-attempt="1"]');
    expect(await current.locator('[data-state]').textContent()).toBe('running');
    expect(await current.locator('[data-field=node]').textContent()).toBe('pages-node');
    expect(await current.locator('[data-field=started]').textContent()).not.toBe('—');
    expect(await current.locator('[data-field=progress]').textContent()).toBe('{"phase":"holding"}');
    expect(await page.locator('[data-fact=affinity] a').getAttribute('href')).toBe(
      '/keys/affinity?group=accounts&affinity=acct-1',
    );
    await shot('task-running');
    // Mark the page's elements (a property morphdom leaves alone), cancel, and find the same elements
    // with the new state: the refresh changed them in place instead of drawing the page again.
    await page.evaluate(`document.querySelector('[data-testid=attempts]').kept = true;
      document.querySelector('[data-testid=facts]').kept = true;`);
    await page.locator('button[data-action=cancel]').click();
    await page.locator('[data-testid=facts] [data-fact=state]').filter({ hasText: 'cancelled' }).waitFor();
    expect(
      await page.evaluate(`[document.querySelector('[data-testid=attempts]').kept,
        document.querySelector('[data-testid=facts]').kept]`),
    ).toEqual([true, true]);
    await page.locator('button[data-action=cancel]').waitFor({ state: 'detached' });
  });

  it('links a join to the tasks it waits for, and those to it', async () => {
    await open(`/tasks/${ids.join}`);
    expect((await rowIds('waits-for')).sort()).toEqual([...ids.delayed].sort());
    await Promise.all([
      page.waitForURL(`**/tasks/${ids.delayed[0]}`),
      page.locator(`[data-testid=waits-for] a[href="/tasks/${ids.delayed[0]}"]`).click(),
    ]);
    await page.locator('body[data-loaded=true]').waitFor();
    expect((await rowIds('waited-by')).sort()).toEqual([ids.join, ids.dependent].sort());
    await Promise.all([
      page.waitForURL(`**/workflows/${workflowId}`),
      page.locator('[data-fact=workflow] a').click(),
    ]);
    await page.locator('body[data-loaded=true]').waitFor();
  });
});

describe('the workflow page', () => {
  it('draws the 106 tasks of the workflow with their states, children, join and dependency', async () => {
    await open(`/workflows/${workflowId}`);
    const nodes = page.locator('[data-testid=graph] svg a[data-node]');
    expect(await nodes.count()).toBe(106);
    expect(await page.locator('[data-testid=graph] path[data-kind=child]').count()).toBe(101);
    expect(await page.locator('[data-testid=graph] path[data-kind=join]').count()).toBe(2);
    expect(await page.locator('[data-testid=graph] path[data-kind=dependency]').count()).toBe(1);
    expect(await page.locator('[data-testid=legend] [data-state=completed]').textContent()).toBe(
      'completed 101',
    );
    expect(await page.locator('[data-testid=legend] [data-state=dead]').textContent()).toBe('dead 1');
    // Readable: no two nodes overlap, every label at its natural size (no scaling down).
    const boxes =
      (await page.evaluate(`[...document.querySelectorAll('[data-testid=graph] svg a[data-node] rect')]
      .map((r) => { const b = r.getBoundingClientRect(); return [b.x, b.y, b.width, b.height]; })`)) as number[][];
    for (const box of boxes) expect(box.slice(2)).toEqual([190, 34]);
    const overlaps = boxes.filter((a, i) =>
      boxes.some(
        (b, j) =>
          j > i && a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3],
      ),
    );
    expect(overlaps).toEqual([]);
    await shot('workflow');
    // Colors follow states: a dead node and a completed one differ.
    const fill = (state: string) =>
      page.locator(`[data-testid=graph] a[data-state=${state}] rect`).first().getAttribute('fill');
    expect(await fill('dead')).toBe('var(--s-dead, var(--muted))');
    expect(await fill('completed')).toBe('var(--s-completed, var(--muted))');
    const drawn = (await page.evaluate(`['dead', 'completed', 'waiting'].map((s) =>
      getComputedStyle(document.querySelector('[data-testid=graph] a[data-state=' + s + '] rect')).fill)`)) as string[];
    expect(drawn).toEqual(['rgb(138, 63, 252)', 'rgb(46, 157, 98)', 'rgb(201, 162, 39)']);

    await Promise.all([
      page.waitForURL(`**/tasks/${ids.dependent}`),
      page.locator(`[data-testid=graph] a[data-node="${ids.dependent}"]`).click(),
    ]);
    await page.locator('body[data-loaded=true]').waitFor();
    expect(await page.locator('[data-testid=waits-for] tr[data-id] td').last().textContent()).toBe(
      'dependency',
    );
  });

  it('recolors a node in place when its task changes state', async () => {
    await open(`/workflows/${workflowId}`);
    const dependent = page.locator(`[data-testid=graph] a[data-node="${ids.dependent}"]`);
    expect(await dependent.getAttribute('data-state')).toBe('waiting');
    await page.evaluate(`document.querySelector('[data-testid=graph] svg').kept = true`);
    await node.client.cancel(ids.dependent);
    await page.locator(`[data-testid=graph] a[data-node="${ids.dependent}"][data-state=cancelled]`).waitFor();
    expect(await page.evaluate(`document.querySelector('[data-testid=graph] svg').kept`)).toBe(true);
  });
});

describe('the key pages', () => {
  it('list the busiest keys and show what holds a key and what waits on it', async () => {
    const holder = await node.client.schedule(progress, {
      affinityGroup: 'accounts',
      affinity: 'acct-2',
      concurrencyKey: 'tenant-b',
      message: { hold: true },
    });
    await until(async () => (await node.client.getTask(holder))?.progress !== null);
    const waiter = await node.client.schedule(defs.noop, { affinityGroup: 'accounts', affinity: 'acct-2' });
    const queued = await node.client.schedule(defs.noop, { concurrencyKey: 'tenant-b', delayMs: HOUR });

    await open('/keys');
    await page.locator('[data-testid=affinity-keys] tr[data-key=acct-2]').waitFor();
    await shot('keys');
    await Promise.all([
      page.waitForURL(/\/keys\/affinity\?/),
      page.locator('[data-testid=affinity-keys] tr[data-key=acct-2] a').click(),
    ]);
    await page.locator('body[data-loaded=true]').waitFor();
    expect(await rowIds('holders')).toEqual([holder]);
    expect(await rowIds('waiting')).toEqual([waiter]);
    expect(await page.locator('[data-fact="active workflow"] a').getAttribute('title')).toBe(
      (await node.client.getTask(holder))!.workflowId,
    );
    await shot('affinity-key');

    await open(`/keys/concurrency?key=tenant-b`);
    expect(await rowIds('holders')).toEqual([holder]);
    expect(await rowIds('waiting')).toEqual([queued]);
    // The holder ends: the page moves it out of the holders on its next refresh.
    await node.client.cancel(holder);
    await page.locator('[data-testid=holders] td.empty').waitFor();
    await Promise.all([
      page.waitForURL(`**/tasks/${queued}`),
      page.locator(`a[href="/tasks/${queued}"]`).click(),
    ]);
    await page.locator('body[data-loaded=true]').waitFor();
    expect(await page.locator('[data-fact="concurrency key"]').textContent()).toBe('tenant-b');
  });

  it('logged no error in the browser', () => {
    expect(problems).toEqual([]);
  });
});

describe('the attempts log (migration 011)', () => {
  it('records only retried failures, and history retention deletes those of ended tasks', async () => {
    const { rows } = await db.pool.query<{ task_id: string; attempt: number }>(
      'select task_id, attempt from tm_task_attempts order by task_id, attempt',
    );
    // Retried failures only: throws (2), flaky (2) and the failed leaf of the fanout has retry OFF (0).
    expect(rows.filter((r) => r.task_id === ids.dead).map((r) => r.attempt)).toEqual([1, 2]);
    expect(rows.filter((r) => r.task_id === ids.flaky).map((r) => r.attempt)).toEqual([1, 2]);
    expect(rows).toHaveLength(4);
    // A pending task's rows stay; an ended task's go once they are older than the retention.
    const [pending] = await insertTasks(db.pool, [{ notBeforeInMs: HOUR }]);
    await db.pool.query(`update tm_tasks set attempt = attempt + 1, last_error = 'x' where id = $1`, [
      pending.id,
    ]);
    expect(await purgeKeysAndProgress(db.pool, new Date(Date.now() + HOUR))).toBeGreaterThanOrEqual(4);
    const left = await db.pool.query<{ task_id: string }>('select task_id from tm_task_attempts');
    expect(left.rows.map((r) => r.task_id)).toEqual([pending.id]);
    await db.pool.query('delete from tm_tasks where id = $1', [pending.id]);
  });
});

describe('the API behind the pages', () => {
  const get = async (url: string) => {
    const response = await fetch(`${server.url}${url}`);
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };

  it('refuses bad filters with a 400 that says why', async () => {
    for (const [url, message] of [
      ['/api/tasks?from=yesterday', /from must match format "date-time"/],
      ['/api/tasks?affinityGroup=accounts', /needs an affinity filter too/],
      ['/api/tasks?affinity=', /affinity must NOT have fewer than 1 characters/],
      ['/api/tasks?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z', /must be before/],
      ['/api/workflows/0190a5b2-0000-7000-8000-000000000000/graph?limit=0', /limit must be >= 1/],
      ['/api/keys/affinity?group=accounts', /must have required property 'affinity'/],
      ['/api/keys?kind=tenant', /kind must be equal to one of the allowed values/],
      ['/api/tasks/not-a-uuid/details', /id must match format "uuid"/],
    ] as const) {
      const { status, body } = await get(url);
      expect({ url, status }).toEqual({ url, status: 400 });
      expect(body.message, url).toMatch(message);
    }
    expect((await get('/api/tasks/0190a5b2-0000-7000-8000-000000000000/details')).status).toBe(404);
    expect((await get('/api/workflows/0190a5b2-0000-7000-8000-000000000000/graph')).status).toBe(404);
  });

  it('documents the new parameters and routes in the OpenAPI document', async () => {
    const { body } = await get('/openapi.json');
    const paths = body.paths as Record<string, { get: { parameters?: { name: string }[] } }>;
    expect(paths['/api/tasks'].get.parameters!.map((p) => p.name)).toEqual(
      expect.arrayContaining(['state', 'name', 'affinity', 'affinityGroup', 'from', 'to', 'cursor']),
    );
    for (const route of [
      '/api/tasks/{id}/details',
      '/api/workflows/{id}/graph',
      '/api/keys',
      '/api/keys/affinity',
      '/api/keys/concurrency',
    ]) {
      expect(paths[route]?.get, route).toBeDefined();
    }
  });

  it('serves the pages and their two libraries from the server itself', async () => {
    for (const url of ['/assets/morphdom.js', '/assets/dagre.js']) {
      const response = await fetch(`${server.url}${url}`);
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toMatch(/javascript/);
    }
    const css = await fetch(`${server.url}/assets/pages.css`);
    expect(css.status).toBe(200);
    expect(css.headers.get('content-type')).toMatch(/text\/css/);
    expect(await css.text()).toContain('#notice.error');
    expect((await fetch(`${server.url}/assets/other.js`)).status).toBe(404);
    const response = await fetch(`${server.url}/tasks`);
    expect(response.headers.get('content-security-policy')).toMatch(/script-src 'self' 'unsafe-inline'/);
    // With a token, the pages and their scripts still load (they ask for it); their data does not.
    const guarded = await startHttpServer({
      connectionString: db.url,
      port: 0,
      token: 'pages-token-0123456789',
      log: silent,
    });
    try {
      for (const url of [
        '/tasks',
        `/tasks/${ids.echo}`,
        `/workflows/${workflowId}`,
        '/keys',
        '/assets/dagre.js',
      ]) {
        expect((await fetch(`${guarded.url}${url}`)).status, url).toBe(200);
      }
      expect((await fetch(`${guarded.url}/api/tasks/${ids.echo}/details`)).status).toBe(401);
      const other = await browser.newPage();
      try {
        await other.goto(`${guarded.url}/tasks/${ids.echo}`);
        await other.getByTestId('auth').waitFor();
        await other.locator('#token').fill('pages-token-0123456789');
        await other.getByRole('button', { name: 'Use token' }).click();
        await other.locator('body[data-loaded=true]').waitFor();
        expect(await other.getByTestId('task-name').textContent()).toBe('echo');
      } finally {
        await other.close();
      }
    } finally {
      await guarded.close();
    }
  });
});

it('gives every task state a color of its own on the pages', () => {
  const html = readFileSync(new URL('../http/pages.html', import.meta.url), 'utf8');
  const missing = [...TASK_STATES, 'delayed', 'retrying'].filter((s) => !html.includes(`--s-${s}:`));
  expect(missing).toEqual([]);
});
