/**
 * Awaiting results and progress: waitForTask's signal, timeout and onProgress, scheduleAndWait, the
 * HTTP long poll (GET /api/tasks/:id?wait=), `taskmill task wait` and its exit codes, ctx.progress
 * seen by getTask, the HTTP API and onProgress, and its writes batched and throttled.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineTask, type TaskmillNode } from '../index.ts';
import { runCliCaptured } from './helpers/cli.ts';
import { EXIT } from '../cli/output.ts';
import { startHttpServer, type HttpServer } from '../http/server.ts';
import { createLogger } from '../log/logger.ts';
import { ProgressRecorder } from '../node/progress-recorder.ts';
import { TASK_PROGRESS_CHANNEL } from '../store/channels.ts';
import type { Queryable } from '../store/queryable.ts';
import { until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';
import { all, echo, rejects } from './fixtures/definitions.ts';
import type { ProgressMessage } from './fixtures/progress.ts';

const progressTask = defineTask<ProgressMessage>({
  name: 'progress',
  handler: new URL('./fixtures/progress.ts', import.meta.url),
  retry: { mode: 'OFF' },
});

const db = useTestDatabase();
let node: TaskmillNode;
let server: HttpServer;

beforeAll(async () => {
  node = await startTestNode(db.url, { tasks: [...all, progressTask] });
  server = await startHttpServer({ connectionString: db.url, port: 0, log: createLogger('silent') });
});
afterAll(async () => {
  await server?.close();
  await stopAllNodes();
});

/** A task that reports progress and runs until it is cancelled; cancelled by the caller. */
async function holding(): Promise<string> {
  const id = await node.client.schedule(progressTask, { message: { hold: true } });
  await until(async () => (await node.client.getTask(id))?.progress !== null);
  return id;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked field by field
async function get(path: string): Promise<{ status: number; body: any }> {
  const response = await fetch(server.url + path);
  return { status: response.status, body: await response.json() };
}

describe('waitForTask and scheduleAndWait', () => {
  it('scheduleAndWait resolves with the ended task and its result', async () => {
    const task = await node.client.scheduleAndWait(echo, { message: 'hi' }, { timeoutMs: 30_000 });
    expect(task.state).toBe('completed');
    expect(task.result).toEqual({ message: 'hi', attempt: 1 });
  });

  it('scheduleAndWait with bad wait options schedules nothing', async () => {
    await expect(
      node.client.scheduleAndWait(echo, { idempotencyKey: 'never-scheduled' }, { timeoutMs: -1 }),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    const id = await node.client.schedule(echo, { idempotencyKey: 'never-scheduled' });
    expect((await node.client.getTask(id))?.state).not.toBeUndefined();
  });

  it('an aborted signal ends the wait (ABORTED), not the task', async () => {
    const id = await holding();
    const controller = new AbortController();
    const waiting = node.client.waitForTask(id, { timeoutMs: 60_000, signal: controller.signal });
    controller.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'ABORTED' });
    expect((await node.client.getTask(id))?.state).toBe('running');
    await expect(node.client.waitForTask(id, { signal: AbortSignal.abort() })).rejects.toMatchObject({
      code: 'ABORTED',
    });
    await node.client.cancel(id);
    expect((await node.client.waitForTask(id, { timeoutMs: 30_000 })).state).toBe('cancelled');
  });

  it('times out with TIMEOUT naming the state; unknown options are refused', async () => {
    const id = await holding();
    await expect(node.client.waitForTask(id, { timeoutMs: 50 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    await expect(node.client.waitForTask(id, { timeout: 5 } as object)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    await node.client.cancel(id);
  });
});

describe('progress', () => {
  it('onProgress sees the values in order; getTask and the HTTP API show the last one', async () => {
    const seen: unknown[] = [];
    const task = await node.client.scheduleAndWait(
      progressTask,
      { message: { steps: 4, stepMs: 300 } },
      { timeoutMs: 30_000, onProgress: (value) => seen.push(value) },
    );
    expect(task.state).toBe('completed');
    expect(seen.length).toBeGreaterThan(0);
    const steps = seen.map((v) => (v as { step: number }).step);
    expect(steps).toEqual([...steps].sort((a, b) => a - b));
    expect(new Set(steps).size).toBe(steps.length);
    // The last value is written when the attempt ends, beside (not before) the completion.
    await until(async () => (await node.client.getTask(task.id))?.progress !== null, 10_000);
    await until(async () => ((await node.client.getTask(task.id))?.progress as { step: number }).step === 4);
    const { status, body } = await get(`/api/tasks/${task.id}`);
    expect(status).toBe(200);
    expect(body.progress).toEqual({ step: 4, of: 4 });
    const list = await get(`/api/tasks?name=progress&limit=50`);
    expect(list.body.tasks.find((t: { id: string }) => t.id === task.id).progress).toEqual({
      step: 4,
      of: 4,
    });
  });

  it('a burst of calls is throttled: few writes, last value wins', async () => {
    const listener = new pg.Client({ connectionString: db.url });
    await listener.connect();
    const notified: string[] = [];
    listener.on('notification', (n) => notified.push(n.payload ?? ''));
    await listener.query(`listen ${TASK_PROGRESS_CHANNEL}`);
    try {
      const task = await node.client.scheduleAndWait(
        progressTask,
        { message: { burst: 100_000 } },
        { timeoutMs: 30_000 },
      );
      expect(task.result).toBe(100_000);
      await until(async () => (await node.client.getTask(task.id))?.progress === 100_000);
      await until(() => notified.some((p) => p.includes(task.id)));
      expect(notified.filter((p) => p.includes(task.id)).length).toBeLessThanOrEqual(3);
    } finally {
      await listener.end();
    }
  });

  it('a node writes the progress of many tasks in one statement', async () => {
    const statements: unknown[][] = [];
    const fake: Queryable = {
      query: (async (_text: string, values: unknown[]) => {
        statements.push(values);
        return { rows: [{ n: (values[0] as unknown[]).length }] };
      }) as unknown as Queryable['query'],
    };
    const recorder = new ProgressRecorder({ db: fake, nodeId: 'n', onError: () => {} });
    const ids = Array.from(
      { length: 500 },
      (_, i) => `00000000-0000-7000-8000-${String(i).padStart(12, '0')}`,
    );
    for (let round = 0; round < 10; round++) {
      recorder.receive({ values: ids.map((id) => ({ id, json: String(round) })), final: false });
    }
    expect(await recorder.runOnce()).toEqual({ written: 500 });
    expect(statements).toHaveLength(1);
    expect((statements[0][1] as string[]).every((json) => json === '9')).toBe(true);
    await recorder.stop();
    expect(statements).toHaveLength(1);
  });

  it('bad values are refused in the handler with INVALID_ARGUMENT', async () => {
    for (const bad of ['nan', 'big', 'function'] as const) {
      const task = await node.client.scheduleAndWait(
        progressTask,
        { message: { bad } },
        { timeoutMs: 30_000 },
      );
      expect(task.result, bad).toBe('INVALID_ARGUMENT');
    }
  });
});

describe('HTTP long poll', () => {
  it('answers when the task ends', async () => {
    const id = await node.client.schedule(echo, { message: 'polled', delayMs: 300 });
    const { status, body } = await get(`/api/tasks/${id}?wait=30s`);
    expect(status).toBe(200);
    expect(body.state).toBe('completed');
    expect(body.result).toEqual({ message: 'polled', attempt: 1 });
  });

  it('answers with the task as it is when the wait is over', async () => {
    const id = await holding();
    const { status, body } = await get(`/api/tasks/${id}?wait=200ms`);
    expect(status).toBe(200);
    expect(body.state).toBe('running');
    expect(body.progress).toEqual({ phase: 'holding' });
    await node.client.cancel(id);
  });

  it('refuses a bad or too long wait with 400, and an unknown task with 404', async () => {
    const id = await node.client.schedule(echo, {});
    for (const wait of ['-1s', '2h', '90s', 'soon', '1.5s']) {
      const { status, body } = await get(`/api/tasks/${id}?wait=${wait}`);
      expect(status, wait).toBe(400);
      expect(body.code).toBe('INVALID_ARGUMENT');
    }
    expect((await get(`/api/tasks/00000000-0000-7000-8000-000000000000?wait=1s`)).status).toBe(404);
  });
});

describe('taskmill task wait', () => {
  const cli = (args: string[]) => runCliCaptured(args, { url: db.url });

  it('exits 0 when the task completed, 6 when it failed, 7 on timeout, 3 when unknown, 2 on bad input', async () => {
    const ok = await node.client.schedule(echo, { message: 1 });
    const run = await cli(['task', 'wait', ok, '--timeout', '30s', '--json']);
    expect(run.code, run.err).toBe(EXIT.OK);
    expect(JSON.parse(run.out).state).toBe('completed');

    const failed = await node.client.schedule(rejects, {});
    expect((await cli(['task', 'wait', failed, '--timeout', '30s'])).code).toBe(EXIT.TASK_FAILED);

    const held = await holding();
    const late = await cli(['task', 'wait', held, '--timeout', '200ms']);
    expect(late.code).toBe(EXIT.TIMEOUT);
    expect(late.err).toContain('progress: {"phase":"holding"}');
    await node.client.cancel(held);

    expect((await cli(['task', 'wait', '00000000-0000-7000-8000-000000000000'])).code).toBe(EXIT.NOT_FOUND);
    expect((await cli(['task', 'wait', ok, '--timeout', 'later'])).code).toBe(EXIT.USAGE);
  });

  it('schedule --idempotency-key prints the first task id again; --debounce-key needs --debounce', async () => {
    // The task may complete before the second schedule: the retention keeps its key meanwhile.
    const key = ['--idempotency-key', 'cli-key', '--idempotency-retention', '3600000'];
    const first = await cli(['schedule', 'echo', ...key]);
    const second = await cli(['schedule', 'echo', ...key]);
    expect(first.code, first.err).toBe(0);
    expect(second.out).toBe(first.out);
    const bad = await cli(['schedule', 'echo', '--debounce-key', 'k']);
    expect(bad.code).toBe(EXIT.USAGE);
  });
});
