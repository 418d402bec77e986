/**
 * OpenTelemetry tracing through `@opentelemetry/api`, an optional peer dependency (docs/observability.md).
 * Without the package, or with it but no SDK registered, nothing here allocates: `activeTracer()` is one
 * global read and answers undefined, and callers skip their spans. An SDK registered after a node or a
 * client started is picked up by the next call.
 *
 * A task carries the trace context it was scheduled under as a W3C traceparent string (tm_tasks.traceparent,
 * migrations/010): written by the scheduling client (its schedule span) or by the node that ran the parent
 * (the parent's attempt span), read by the node that runs the task to parent its attempt span. Main
 * thread only: worker threads copy the string, they never load the API.
 */
import type * as Otel from '@opentelemetry/api';

type Api = typeof Otel;
export type { Span, Tracer } from '@opentelemetry/api';

/** The API when the application installed it, else undefined (one import at load, never retried). */
const api: Api | undefined = await import('@opentelemetry/api').catch((error: { code?: string }) => {
  if (error.code === 'ERR_MODULE_NOT_FOUND') return undefined;
  throw error;
});

/** The instrumentation scope of every taskmill span. */
export const TRACER_NAME = 'taskmill';

/** Span attribute names (the `taskmill.` namespace). */
export const ATTRIBUTES = {
  taskName: 'taskmill.task.name',
  taskId: 'taskmill.task.id',
  /** How many tasks one schedule call inserted. */
  taskCount: 'taskmill.task.count',
  /** 1 for the first attempt. */
  attempt: 'taskmill.task.attempt',
  workflowId: 'taskmill.workflow.id',
  nodeId: 'taskmill.node.id',
  affinityGroup: 'taskmill.affinity.group',
  affinityKey: 'taskmill.affinity.key',
  /** How the attempt ended on its node: completed, failed, cancelled, stale, rerun. */
  outcome: 'taskmill.outcome',
  /** Time the handler's run took in its worker thread. */
  runMs: 'taskmill.run_ms',
} as const;

/**
 * taskmill's tracer while an SDK is registered, else undefined. Cheap enough for once per batch: the
 * global provider is a proxy without a delegate until an SDK registers one.
 */
export function activeTracer(): Otel.Tracer | undefined {
  if (!api) return undefined;
  const provider = api.trace.getTracerProvider();
  if (provider instanceof api.ProxyTracerProvider && !provider.getDelegateTracer(TRACER_NAME))
    return undefined;
  return api.trace.getTracer(TRACER_NAME);
}

export type SpanRole = 'schedule' | 'attempt';

/**
 * Starts a span: `schedule` spans are PRODUCER spans under the caller's active context (or under
 * `parent`), `attempt` spans CONSUMER spans under the task's stored traceparent (a root span when it has
 * none or it does not parse).
 */
export function startSpan(
  tracer: Otel.Tracer,
  role: SpanRole,
  name: string,
  attributes: Otel.Attributes,
  parent?: string | null,
): Otel.Span {
  const kind = role === 'schedule' ? api!.SpanKind.PRODUCER : api!.SpanKind.CONSUMER;
  const context = parent
    ? contextOf(parent)
    : role === 'schedule'
      ? api!.context.active()
      : api!.ROOT_CONTEXT;
  return tracer.startSpan(
    `${role === 'schedule' ? 'schedule' : 'run'} ${name}`,
    { kind, attributes },
    context,
  );
}

/** Ends a span as failed, with the error's text as its status message. */
export function endWithError(span: Otel.Span, error: { name?: string; message?: string }): void {
  span.setStatus({
    code: api!.SpanStatusCode.ERROR,
    message: `${error.name ?? 'Error'}: ${error.message ?? ''}`,
  });
  span.end();
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** A span's context as a W3C traceparent (version 00): `00-<trace id>-<span id>-<flags>`. */
export function traceparentOf(span: Otel.Span): string {
  const { traceId, spanId, traceFlags } = span.spanContext();
  return `00-${traceId}-${spanId}-${(traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

/** The remote parent a traceparent names, or the root context when it is not a valid one. */
export function contextOf(traceparent: string): Otel.Context {
  const match = TRACEPARENT.exec(traceparent);
  const root = api!.ROOT_CONTEXT;
  if (!match) return root;
  const spanContext = {
    traceId: match[1],
    spanId: match[2],
    traceFlags: parseInt(match[3], 16),
    isRemote: true,
  };
  return api!.isSpanContextValid(spanContext) ? api!.trace.setSpanContext(root, spanContext) : root;
}
