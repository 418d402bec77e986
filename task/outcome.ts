/**
 * How a task's run ended: the one outcome type. The worker thread reports a TaskOutcome (its protocol,
 * worker/protocol.ts, carries it as is); the dispatcher adds the task and why it aborted it, if it did
 * (Outcome); settle() (task/settle.ts) decides what it becomes; the completer commits it, and only the
 * store (store/tasks.ts) turns it into SQL parameters. An exactly-once task commits its own outcome in
 * its worker thread's transaction and reports it as 'committed'.
 */
import type { NewTask } from './schedule-context.ts';

/** A message for the joins of a given name waiting on the sender. */
export interface JoinMessage {
  joinName: string;
  payload: Uint8Array;
}

/** An error as it crosses from a worker thread, and as it is stored (errorText). */
export interface SerializedError {
  name: string;
  message: string;
  stack?: string;
  code?: string;
}

/** The handler returned: its result, children and join messages are to be committed. */
export interface DoneOutcome {
  kind: 'done';
  result: Uint8Array | null;
  children: NewTask[];
  joinMessages: JoinMessage[];
}

/**
 * An exactly-once task committed its completion itself, in its own transaction, or found itself
 * reassigned (fenced out: 'stale') and rolled it back. A durable wait (ctx.sleep, ctx.waitForEvent)
 * ends an attempt the same way: its worker thread committed the task's suspension ('suspended': the
 * task continues in a later attempt, uncharged), or found it cancelled or fenced out.
 */
export interface CommittedOutcome {
  kind: 'committed';
  outcome: 'completed' | 'cancelled' | 'stale' | 'suspended';
}

/** The attempt failed. `stopRetry`: the handler's onFailure hook asked for no more attempts. */
export interface FailedOutcome {
  kind: 'failed';
  error: SerializedError;
  stopRetry: boolean;
}

export type TaskOutcome = DoneOutcome | CommittedOutcome | FailedOutcome;

/**
 * Why an attempt was aborted from outside its handler (node-died: its node stopped heartbeating; lost:
 * its node was declared dead while the attempt ran, the task was taken back, and the node, back in
 * touch with the database, stops the run it no longer owns).
 */
export type AbortReason = 'timeout' | 'cancel' | 'shutdown' | 'node-died' | 'lost';

/** What an outcome carries of its task: which one, under which assignment (the fence), and its age. */
export interface OutcomeTask {
  id: string;
  name: string;
  assignment: number;
  /** Attempts made before this one. */
  attempt: number;
  createdAt: Date;
}

/**
 * A task's outcome on its node: the TaskOutcome, the task, why the node aborted it (if it did) and
 * `runMs`, the time the run took in its worker thread (undefined when the thread died under it).
 */
export type Outcome<T extends OutcomeTask = OutcomeTask> = TaskOutcome & {
  task: T;
  reason?: AbortReason;
  runMs?: number;
};

/** What an ended run is called in the node's events and metrics. */
export function outcomeLabel(
  outcome: TaskOutcome,
): 'completed' | 'failed' | 'cancelled' | 'stale' | 'suspended' {
  return outcome.kind === 'done' ? 'completed' : outcome.kind === 'committed' ? outcome.outcome : 'failed';
}

/** The error as stored: `name [code]: message`, then the stack's frames. */
export function errorText(error: SerializedError): string {
  const frames = error.stack?.split('\n').filter((line) => line.startsWith('    at ')) ?? [];
  return [errorHead(error) + error.message, ...frames].join('\n');
}

/** The start of errorText, before the message. */
export function errorHead(error: SerializedError): string {
  return `${error.name}${error.code ? ` [${error.code}]` : ''}: `;
}
