/**
 * OpenTelemetry tracing (log/tracing.ts, node/attempt-tracing.ts): the SDK with an in-memory exporter
 * over a 3-task workflow on two nodes, retries in the scheduler's trace, the caller's span as parent, the
 * traceparent column, and nothing recorded or stored without an SDK.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { context, propagation, trace, SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { defineTask, type TaskmillNode } from '../index.ts';
import { ATTRIBUTES, contextOf, traceparentOf } from '../log/tracing.ts';
import { flaky, noop } from './fixtures/definitions.ts';
import { collect, fanout, leaf } from './fixtures/workflow-definitions.ts';
import { useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';
import { expectOk, run } from './helpers/package-project.ts';

const db = useTestDatabase();
/** `fanout` as an exactly-once task: its children are committed in its worker thread's transaction. */
const fanoutOnce = defineTask<{ width: number }>({
  name: 'fanout-once',
  handler: new URL('./fixtures/fanout.ts', import.meta.url),
  guarantee: 'exactly-once',
});
let exporter = new InMemorySpanExporter();
let provider: NodeTracerProvider | undefined;
/** Runs `fanout` only. */
let first: TaskmillNode;
/** Runs what `fanout` schedules (`leaf`, `collect`) and the retry fixture. */
let second: TaskmillNode;

function register(): NodeTracerProvider {
  exporter = new InMemorySpanExporter();
  provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  provider.register();
  return provider;
}

async function unregister(): Promise<void> {
  await provider?.shutdown();
  provider = undefined;
  trace.disable();
  context.disable();
  propagation.disable();
}

beforeAll(async () => {
  first = await startTestNode(db.url, { tasks: [fanout, fanoutOnce] });
  second = await startTestNode(db.url, { tasks: [leaf, collect, flaky, noop], planner: false });
});
afterEach(unregister);
afterAll(stopAllNodes);

const ended = (id: string) => first.client.waitForTask(id, { timeoutMs: 30_000 });
const traceparentColumn = async (id: string) =>
  (
    await db.pool.query<{ traceparent: string | null }>(`select traceparent from tm_tasks where id = $1`, [
      id,
    ])
  ).rows[0]?.traceparent;

async function spans(): Promise<ReadableSpan[]> {
  await provider!.forceFlush();
  return exporter.getFinishedSpans();
}

const parentOf = (span: ReadableSpan) => span.parentSpanContext?.spanId;
const attr = (span: ReadableSpan, name: keyof typeof ATTRIBUTES) => span.attributes[ATTRIBUTES[name]];

describe('tracing without an SDK', () => {
  it('records nothing and stores no trace context', { timeout: 150_000 }, async () => {
    const id = await first.client.schedule(noop, { delayMs: 3_600_000 });
    expect(await traceparentColumn(id)).toBeNull();
    await first.client.cancel(id);
    // The first run of each node also starts its worker threads, which takes long on a loaded machine.
    const ran = await first.client.schedule(fanout, { message: { width: 1 } });
    const { workflowId } = (await first.client.getTask(ran))!;
    await first.client.waitForWorkflow(workflowId, { timeoutMs: 120_000 });
    // Registered now, the SDK sees none of the spans the run above would have made.
    register();
    expect(await spans()).toEqual([]);
  });
});

describe('tracing with an OpenTelemetry SDK', () => {
  it('puts a 3-task workflow on two nodes in one trace: schedule span, attempts, children under their parent', async () => {
    register();
    const id = await first.client.schedule(fanout, { message: { width: 1 } });
    const { workflowId } = (await first.client.getTask(id))!;
    await first.client.waitForWorkflow(workflowId, { timeoutMs: 30_000 });
    const all = await spans();

    const byName = (name: string) => all.filter((s) => s.name === name);
    const [root] = byName('schedule fanout');
    expect(root).toBeDefined();
    expect(root.kind).toBe(SpanKind.PRODUCER);
    expect(parentOf(root)).toBeUndefined();
    expect(new Set(all.map((s) => s.spanContext().traceId))).toEqual(new Set([root.spanContext().traceId]));

    const [fanoutRun] = byName('run fanout');
    expect(fanoutRun.kind).toBe(SpanKind.CONSUMER);
    expect(parentOf(fanoutRun)).toBe(root.spanContext().spanId);
    expect(fanoutRun.attributes).toMatchObject({
      [ATTRIBUTES.taskName]: 'fanout',
      [ATTRIBUTES.taskId]: id,
      [ATTRIBUTES.attempt]: 1,
      [ATTRIBUTES.nodeId]: first.id,
      [ATTRIBUTES.outcome]: 'completed',
    });

    // The children were scheduled by fanout's handler: their schedule spans hang under its attempt, and
    // their attempts, on the other node, under those.
    for (const child of ['leaf', 'collect']) {
      const [schedule] = byName(`schedule ${child}`);
      const [run] = byName(`run ${child}`);
      expect(parentOf(schedule)).toBe(fanoutRun.spanContext().spanId);
      expect(parentOf(run)).toBe(schedule.spanContext().spanId);
      expect(attr(run, 'taskId')).toBe(attr(schedule, 'taskId'));
      expect(attr(run, 'nodeId')).toBe(second.id);
      expect(attr(run, 'outcome')).toBe('completed');
    }
    expect(all).toHaveLength(6);
  });

  it('puts the children an exactly-once task commits in its thread under its attempt', async () => {
    register();
    const id = await first.client.schedule(fanoutOnce, { message: { width: 1 } });
    const { workflowId } = (await first.client.getTask(id))!;
    await first.client.waitForWorkflow(workflowId, { timeoutMs: 30_000 });
    const all = await spans();
    const [run] = all.filter((s) => s.name === 'run fanout-once');
    expect(attr(run, 'outcome')).toBe('completed');
    for (const child of ['leaf', 'collect']) {
      const [childRun] = all.filter((s) => s.name === `run ${child}`);
      expect(parentOf(childRun)).toBe(run.spanContext().spanId);
      expect(childRun.spanContext().traceId).toBe(run.spanContext().traceId);
    }
    expect(all.filter((s) => s.name.startsWith('schedule ')).map((s) => s.name)).toEqual([
      'schedule fanout-once',
    ]);
  });

  it('keeps every retry of a task under its schedule span, with each attempt and its outcome', async () => {
    register();
    const id = await first.client.schedule(flaky, { message: { succeedOn: 2 } });
    expect((await ended(id)).state).toBe('completed');
    const all = await spans();
    const [root] = all.filter((s) => s.name === 'schedule flaky');
    const runs = all
      .filter((s) => s.name === 'run flaky')
      .sort((a, b) => Number(attr(a, 'attempt')) - Number(attr(b, 'attempt')));
    expect(runs.map((r) => [attr(r, 'attempt'), attr(r, 'outcome'), parentOf(r)])).toEqual([
      [1, 'failed', root.spanContext().spanId],
      [2, 'completed', root.spanContext().spanId],
    ]);
    expect(runs[0].status).toMatchObject({ code: 2, message: 'Error: attempt 1 fails' });
  });

  it("schedules under the caller's active span and stores the schedule span's traceparent with the task", async () => {
    register();
    const tracer = trace.getTracer('app');
    const [request, id] = await tracer.startActiveSpan('request', async (span) => {
      const taskId = await first.client.schedule(noop, { delayMs: 3_600_000 });
      span.end();
      return [span, taskId] as const;
    });
    const all = await spans();
    const [schedule] = all.filter((s) => s.name === 'schedule noop');
    expect(parentOf(schedule)).toBe(request.spanContext().spanId);
    expect(await traceparentColumn(id)).toBe(
      `00-${schedule.spanContext().traceId}-${schedule.spanContext().spanId}-01`,
    );
    await first.client.cancel(id);
  });
});

describe('tracing without @opentelemetry/api', () => {
  it('loads, and has no tracer, when the package cannot be resolved', async () => {
    // npm installs the API with prom-client anyway; a strict layout (pnpm) may leave it out. A resolve
    // hook plays that layout in a child process: the package is not found.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'taskmill-no-otel-'));
    try {
      writeFileSync(
        path.join(dir, 'hooks.mjs'),
        `export async function resolve(specifier, context, next) {
          if (specifier === '@opentelemetry/api')
            throw Object.assign(new Error('not installed'), { code: 'ERR_MODULE_NOT_FOUND' });
          return next(specifier, context);
        }`,
      );
      writeFileSync(
        path.join(dir, 'register.mjs'),
        `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(path.join(dir, 'hooks.mjs')).href)});`,
      );
      const tracing = pathToFileURL(path.resolve(import.meta.dirname, '../log/tracing.ts')).href;
      const script = [
        `console.log(await import('@opentelemetry/api').then(() => 'found', (e) => e.code));`,
        `const t = await import(${JSON.stringify(tracing)});`,
        `console.log(String(t.activeTracer()));`,
      ].join('\n');
      const result = expectOk(
        await run(
          process.execPath,
          [
            '--import',
            'tsx',
            '--import',
            path.join(dir, 'register.mjs'),
            '--input-type=module',
            '-e',
            script,
          ],
          { cwd: path.resolve(import.meta.dirname, '..') },
        ),
      );
      expect(result.stdout).toBe('ERR_MODULE_NOT_FOUND\nundefined\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('traceparent', () => {
  it('round-trips a span context and turns anything else into the root context', () => {
    const spanContext = {
      traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
      spanId: '00f067aa0ba902b7',
      traceFlags: 1,
    };
    const span = trace.wrapSpanContext(spanContext);
    expect(traceparentOf(span)).toBe('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
    expect(trace.getSpanContext(contextOf(traceparentOf(span)))).toEqual({ ...spanContext, isRemote: true });
    for (const bad of [
      '',
      'garbage',
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    ])
      expect(trace.getSpanContext(contextOf(bad))).toBeUndefined();
  });
});
