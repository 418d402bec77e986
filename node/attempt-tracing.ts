/**
 * The attempt span of a task on its node (docs/observability.md), opened by the dispatcher on the main
 * thread when it hands the task to a worker thread and ended when the outcome comes back. Opening it on
 * the main thread keeps the OpenTelemetry SDK, its exporters and their connections in one place per
 * process (a worker thread would need an SDK of its own): the thread only receives the span's traceparent
 * in its envelope and stamps it on the children the handler schedules. The span thus measures dispatch to
 * outcome (its `taskmill.run_ms` attribute is the handler's own time in the thread).
 *
 * Children of an at-least-once task get a `schedule` span each under the attempt span, recorded when the
 * outcome reaches the main thread (the completer commits them next), and carry that span's traceparent.
 * An exactly-once task commits its children in its own transaction in the thread: they carry the attempt
 * span's traceparent directly. Main thread only.
 */
import type { FetchedTask } from '../store/tasks.ts';
import { outcomeLabel, type TaskOutcome } from '../task/outcome.ts';
import {
  ATTRIBUTES,
  endWithError,
  startSpan,
  traceparentOf,
  type Span,
  type Tracer,
} from '../log/tracing.ts';

/** Opens the attempt span of a task about to run on this node. */
export function startAttempt(tracer: Tracer, task: FetchedTask, nodeId: string): Span {
  return startSpan(
    tracer,
    'attempt',
    task.name,
    {
      [ATTRIBUTES.taskName]: task.name,
      [ATTRIBUTES.taskId]: task.id,
      [ATTRIBUTES.attempt]: task.attempt + 1,
      [ATTRIBUTES.workflowId]: task.workflowId,
      [ATTRIBUTES.nodeId]: nodeId,
      ...(task.affinity !== null && {
        [ATTRIBUTES.affinityGroup]: task.affinityGroup ?? '',
        [ATTRIBUTES.affinityKey]: task.affinity,
      }),
    },
    task.traceparent,
  );
}

/**
 * Ends an attempt span with the outcome its thread reported; children to be committed by the completer
 * first get their schedule spans under it.
 */
export function endAttempt(tracer: Tracer, span: Span, outcome: TaskOutcome, runMs?: number): void {
  if (runMs !== undefined) span.setAttribute(ATTRIBUTES.runMs, runMs);
  if (outcome.kind === 'done' && outcome.children.length > 0) {
    const parent = traceparentOf(span);
    for (const child of outcome.children) {
      const schedule = startSpan(
        tracer,
        'schedule',
        child.name,
        { [ATTRIBUTES.taskName]: child.name, [ATTRIBUTES.taskId]: child.id, [ATTRIBUTES.taskCount]: 1 },
        parent,
      );
      child.traceparent = traceparentOf(schedule);
      schedule.end();
    }
  }
  span.setAttribute(ATTRIBUTES.outcome, outcomeLabel(outcome));
  if (outcome.kind === 'failed') endWithError(span, outcome.error);
  else span.end();
}

/** Ends an attempt span whose thread died under it: the task runs again, uncharged, in a span of its own. */
export function endRerun(span: Span, error: unknown): void {
  span.setAttribute(ATTRIBUTES.outcome, 'rerun');
  endWithError(span, error as { name?: string; message?: string });
}
