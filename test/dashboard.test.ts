import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHttpServer, type HttpServer } from '../http/server.ts';
import { createLogger } from '../log/logger.ts';
import type { TaskmillNode } from '../index.ts';
import * as defs from './fixtures/definitions.ts';
import { launchChromium } from './helpers/browser.ts';
import { insertTask } from './helpers/factory.ts';
import { DEPTH_STATES } from '../task/task-states.ts';
import { waitForTasks, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const OUTPUT = path.resolve(import.meta.dirname, '../.taskmill/test-output');
const silent = createLogger('silent');
const db = useTestDatabase();
let node: TaskmillNode;
let server: HttpServer;
let browser: Browser;
let page: Page;
const problems: string[] = [];
let deadId: string;
let pendingIds: string[];
const workflowId = '0190a5b2-0000-7000-8000-00000000da5b';

beforeAll(async () => {
  node = await startTestNode(db.url, { name: 'dash-node' });
  server = await startHttpServer({
    connectionString: db.url,
    port: 0,
    node,
    log: silent,
    nodeTimeoutMs: 1_000,
  });
  // Something to show: completed tasks, a dead letter, pending (delayed) tasks, one workflow of two.
  const done = await node.client.scheduleMany(
    defs.noop,
    Array.from({ length: 30 }, () => ({})),
  );
  deadId = await node.client.schedule(defs.throws);
  pendingIds = await node.client.scheduleMany(defs.sleep, [{ delayMs: 3_600_000 }, { delayMs: 3_600_000 }]);
  await node.client.scheduleMany(defs.noop, [
    { delayMs: 3_600_000, workflowId },
    { delayMs: 3_600_000, workflowId },
  ]);
  await waitForTasks(node.client, [...done, deadId]);
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
  page.on('pageerror', (e) => problems.push(e.message));
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  await stopAllNodes();
});

const row = (table: string, attr: string, value: string) =>
  page.locator(`[data-testid=${table}] tr[${attr}="${value}"]`);

describe('the dashboard', () => {
  it('shows nodes, leader, queue depths, throughput, pending tasks and failures', async () => {
    // A progress value, as a handler's ctx.progress() leaves it.
    await db.pool.query(
      `insert into tm_task_progress (task_id, value) values ($1, '{"page": 3, "of": 10}')`,
      [pendingIds[1]],
    );
    await page.goto(`${server.url}/`);
    await page.locator('body[data-loaded=true]').waitFor();
    expect(await page.getByTestId('leader').textContent()).toBe('leader: dash-node');
    const nodeRow = row('nodes', 'data-node', 'dash-node');
    expect(await nodeRow.textContent()).toMatch(/alive.*leader/);
    expect(await page.locator('[data-testid=totals] [data-state=delayed] b').textContent()).toBe('4');
    expect(await page.locator('[data-testid=totals] [data-state=dead] b').textContent()).toBe('1');
    // The states are the library's, in its order: the totals, and the columns after `task`.
    expect(
      await page
        .locator('[data-testid=totals] [data-state]')
        .evaluateAll((els) => els.map((e) => e.getAttribute('data-state'))),
    ).toEqual([...DEPTH_STATES]);
    expect(await page.locator('[data-testid=depths] th').allTextContents()).toEqual([
      'task',
      ...DEPTH_STATES,
    ]);
    expect(await row('depths', 'data-task', 'sleep').locator('td').allTextContents()).toEqual([
      'sleep',
      ...DEPTH_STATES.map((s) => (s === 'delayed' ? '2' : '0')),
    ]);
    // The chart: one bar segment per non-empty bucket and series, completed tasks among them.
    expect(await page.locator('[data-testid=chart] svg rect[data-series=completed]').count()).toBeGreaterThan(
      0,
    );
    expect(await page.getByTestId('throughput-title').textContent()).toMatch(/last 15 min/);
    expect(await page.locator('[data-testid=pending] tr[data-id]').count()).toBe(4);
    expect(
      await row('pending', 'data-id', pendingIds[1]).locator('[data-field=progress]').textContent(),
    ).toBe('{"of":10,"page":3}'); // jsonb's key order
    const failure = row('failures', 'data-id', deadId);
    expect(await failure.textContent()).toMatch(/throws.*dead letter.*Error/);
  });

  it('cancels a task and a workflow with its buttons', async () => {
    await row('pending', 'data-id', pendingIds[0]).locator('button[data-action=cancel]').click();
    expect(await node.client.waitForTask(pendingIds[0], { timeoutMs: 10_000 })).toMatchObject({
      state: 'cancelled',
    });
    await page.getByTestId('notice').filter({ hasText: 'cancel task' }).waitFor();
    expect(await page.getByTestId('notice').textContent()).toContain('"outcome":"cancelled"');
    await row('pending', 'data-id', pendingIds[0]).waitFor({ state: 'detached' });

    const inWorkflow = page.locator('[data-testid=pending] tr[data-id]').filter({ hasText: 'noop' }).first();
    await inWorkflow.locator('button[data-action=cancel-workflow]').click();
    expect(await node.client.waitForWorkflow(workflowId, { timeoutMs: 10_000 })).toMatchObject({
      pending: 0,
    });
    await page.getByTestId('notice').filter({ hasText: 'cancel workflow' }).waitFor();
    // The list refreshes after the notice: wait for it rather than read it at once.
    await expect
      .poll(() => page.locator('[data-testid=pending] tr[data-id]').count(), { timeout: 10_000 })
      .toBe(1);
  });

  it('requeues a dead letter with its button', async () => {
    const failedAt = await db.pool.query(`select failed_at from tm_dead_letters where id = $1`, [deadId]);
    await row('failures', 'data-id', deadId).locator('button[data-action=requeue]').click();
    await page.getByTestId('notice').filter({ hasText: 'requeue' }).waitFor();
    expect(await page.getByTestId('notice').textContent()).toContain(`{"requeued":["${deadId}"]}`);
    // It ran again (and, as `throws` always fails, came back with a newer failure time).
    expect(await node.client.waitForTask(deadId, { timeoutMs: 10_000 })).toMatchObject({ state: 'dead' });
    const { rows } = await db.pool.query(`select failed_at from tm_dead_letters where id = $1`, [deadId]);
    expect(rows[0].failed_at.getTime()).toBeGreaterThan(failedAt.rows[0].failed_at.getTime());
  });

  it('leaves a screenshot and logs no error in the browser', async () => {
    await page.reload();
    await page.locator('body[data-loaded=true]').waitFor();
    mkdirSync(OUTPUT, { recursive: true });
    await page.screenshot({ path: path.join(OUTPUT, 'dashboard.png'), fullPage: true });
    expect(problems).toEqual([]);
  });

  it('fits every table in the viewport at 1,280 and 1,920 px (no horizontal scrolling)', async () => {
    // A long task name with a count in every column is the widest row the depths table gets.
    await insertTask(db.pool, {
      name: 'reports.monthly-invoice-aggregation-for-every-customer',
      attempt: 2,
      notBeforeInMs: 3_600_000,
    });
    mkdirSync(OUTPUT, { recursive: true });
    for (const width of [1280, 1920]) {
      await page.setViewportSize({ width, height: 1000 });
      await page.goto(`${server.url}/`);
      await page.locator('body[data-loaded=true]').waitFor();
      await row('depths', 'data-task', 'reports.monthly-invoice-aggregation-for-every-customer').waitFor();
      await page.screenshot({ path: path.join(OUTPUT, `dashboard-${width}.png`), fullPage: true });
      // Evaluated in the page (a string: the test project compiles without the DOM library).
      const layout = (await page.evaluate(`({
        viewport: document.documentElement.clientWidth,
        pageWidth: document.documentElement.scrollWidth,
        tables: [...document.querySelectorAll('section table')].map((t) => ({
          table: t.getAttribute('data-testid'),
          right: t.getBoundingClientRect().right,
          overflow: t.closest('section').scrollWidth - t.closest('section').clientWidth,
        })),
      })`)) as {
        viewport: number;
        pageWidth: number;
        tables: { table: string; right: number; overflow: number }[];
      };
      expect(layout.pageWidth, `page width at ${width} px`).toBeLessThanOrEqual(layout.viewport);
      for (const t of layout.tables) {
        expect(t.right, `right edge of ${t.table} at ${width} px`).toBeLessThanOrEqual(layout.viewport);
        expect(t.overflow, `horizontal overflow of ${t.table} at ${width} px`).toBeLessThanOrEqual(0);
      }
    }
    await page.setViewportSize({ width: 1280, height: 1000 });
  });

  it('asks for the token when the API needs one', async () => {
    const token = 'dashboard-token-0123456789';
    const guarded = await startHttpServer({ connectionString: db.url, port: 0, token, log: silent });
    const other = await browser.newPage();
    try {
      await other.goto(`${guarded.url}/`);
      await other.getByTestId('auth').waitFor();
      expect(await other.getByTestId('notice').textContent()).toMatch(/token is missing or wrong/);
      await other.locator('#token').fill(token);
      await other.getByRole('button', { name: 'Use token' }).click();
      await other.locator('body[data-loaded=true]').waitFor();
      expect(await other.getByTestId('leader').textContent()).toBe('leader: dash-node');
    } finally {
      await other.close();
      await guarded.close();
    }
  });
});
