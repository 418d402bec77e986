/**
 * The typed protocol between the main thread (dispatcher.ts) and worker threads (worker.ts).
 *
 * A batch goes to a thread as one Piscina `run()`: task envelopes plus one ArrayBuffer holding every
 * message back to back (transferred, not copied; only the worker decodes), and a MessagePort. The
 * worker reports each task's outcome on the port as soon as that task ends, so a slow task does not
 * hold back the others; the run() resolves when the whole batch has ended. The main thread sends
 * aborts (timeout, cancel, shutdown) for single tasks on the same port, and pings to learn whether the
 * thread's event loop still turns (a thread blocked by a synchronous handler cannot answer).
 *
 * Child processes: a handler that spawns one (shell tasks) reports its process group on the port of
 * the batch running it (`reportProcessGroup`), alive and then gone, before the task's outcome; the main
 * thread kills every group still alive when the task ends in any other way (its thread died or was
 * terminated), so a command never outlives its task nor runs twice.
 */
import { isMainThread, type MessagePort } from 'node:worker_threads';
import type { SerializedError, TaskOutcome } from '../task/outcome.ts';

/** A task's outcome travels as the one outcome type of task/outcome.ts. */
export type { SerializedError, TaskOutcome } from '../task/outcome.ts';

/** workerData of every thread: how to load each task the node runs. */
export interface WorkerInit {
  handlers: Record<string, string>;
  /** Shell task policy (shell-task.ts); absent: shell tasks are refused in this thread. */
  shell?: import('../task/shell-task.ts').ShellPolicy;
  /** For exactly-once tasks, which open their own transaction in the thread, and durable steps. */
  connectionString: string;
  /**
   * The threads' share of the node's connection budget: a ConnectionSlots semaphore
   * (connection-slots.ts) every thread of the node shares.
   */
  connectionSlots: SharedArrayBuffer;
  nodeId: string;
  /** Size limits of what handlers produce (node option `limits`); absent: unbounded. */
  limits?: { maxResultBytes: number; maxMessageBytes: number };
  /** Longest ctx.sleep() or waitForEvent() timeout, ms (the node's history retention); absent: unbounded. */
  maxWaitMs?: number;
  /** The node's network settings for the threads' connections (store/network.ts); absent: none. */
  network?: import('../store/network.ts').WorkerNetworkOptions;
}

/** One input of a join task, its bytes in BatchRequest.messages. */
export interface JoinInput {
  kind: 'r' | 'm';
  from: string;
  offset: number;
  length: number;
}

export interface TaskEnvelope {
  id: string;
  name: string;
  /** Byte range of the message in BatchRequest.messages. */
  offset: number;
  length: number;
  attempt: number;
  workflowId: string;
  workflowCreatedAt: string;
  affinityGroup: string | null;
  affinity: string | null;
  parentId: string | null;
  assignment: number;
  exactlyOnce: boolean;
  joinInputs: JoinInput[];
  /**
   * W3C traceparent of the task's attempt span, which the main thread opened around this run (node/
   * attempt-tracing.ts); the handler's children are scheduled under it. null: untraced.
   */
  traceparent: string | null;
}

export interface BatchRequest {
  tasks: TaskEnvelope[];
  messages: ArrayBuffer;
  port: MessagePort;
}

/** First message of every batch: which thread runs it (the main thread terminates it to hard-abort). */
export interface BatchStarted {
  type: 'started';
  threadId: number;
}

/** A task's outcome with the time its run took in the thread (decode, handler, encode, own commit). */
export interface OutcomeMessage {
  type: 'outcome';
  id: string;
  outcome: TaskOutcome;
  runMs: number;
}

export type AbortReason = 'timeout' | 'cancel' | 'shutdown' | 'lost';

export interface AbortMessage {
  type: 'abort';
  id: string;
  reason: AbortReason;
}

/** Main thread -> worker: answer with a Pong as soon as the thread's event loop turns. */
export interface PingMessage {
  type: 'ping';
}

/** What the main thread posts on a batch port. */
export type MainMessage = AbortMessage | PingMessage;

export interface Pong {
  type: 'pong';
}

/** Worker -> main: a task's child process group started (alive) or is gone (its whole group killed). */
export interface ProcessGroupEvent {
  type: 'group';
  id: string;
  pgid: number;
  alive: boolean;
}

/** Everything a worker thread posts on a batch port. */
export type ThreadMessage = OutcomeMessage | BatchStarted | Pong | ProcessGroupEvent;

/** Worker-thread side: the port of the batch running each task of this thread (worker.ts keeps it). */
const taskPorts = new Map<string, MessagePort>();

export function bindTaskPort(id: string, port: MessagePort): void {
  taskPorts.set(id, port);
}

export function unbindTaskPort(id: string): void {
  taskPorts.delete(id);
}

/**
 * Called in a worker thread by a handler that started (alive) or ended (gone) a process group for the
 * task `id`. Outside a worker thread (a handler called directly) there is nobody to tell.
 */
export function reportProcessGroup(id: string, pgid: number, alive: boolean): void {
  if (isMainThread) return;
  const event: ProcessGroupEvent = { type: 'group', id, pgid, alive };
  taskPorts.get(id)?.postMessage(event);
}

export function serializeError(error: unknown): SerializedError {
  if (error instanceof Error) {
    return {
      name: error.name,
      message: error.message,
      stack: error.stack,
      code:
        (error as { code?: unknown }).code === undefined
          ? undefined
          : String((error as { code?: unknown }).code),
    };
  }
  return { name: 'Error', message: `non-Error value thrown: ${safeString(error)}` };
}

function safeString(value: unknown): string {
  try {
    return typeof value === 'string' ? value : JSON.stringify(value);
  } catch {
    return String(value);
  }
}
