/**
 * Worker-thread entry (Piscina filename). Runs one batch: decodes each message, runs the handlers
 * concurrently (synchronous ones naturally one after the other), and posts each outcome on the batch
 * port as soon as it is known. Handler modules are imported once per thread and cached.
 *
 * Owned by one worker thread; the main thread talks to it only through protocol.ts messages.
 */
import { threadId, workerData } from 'node:worker_threads';
import { assertWithinLimit, decode, encode } from '../task/codec.ts';
import { TaskmillError } from '../task/errors.ts';
import {
  bindTaskPort,
  serializeError,
  unbindTaskPort,
  type MainMessage,
  type Pong,
  type BatchStarted,
  type BatchRequest,
  type TaskEnvelope,
  type OutcomeMessage,
  type TaskOutcome,
  type WorkerInit,
} from './protocol.ts';
import { newTask, type NewTask } from '../task/schedule-context.ts';
import type { FailureHook, TaskContext, TaskHandler } from './task-context.ts';
import { isTaskDefinition, type TaskDefinition } from '../task/task-definition.ts';
import { completeTasks, lockHeldTask } from '../store/tasks.ts';
import { workerConnectionConfig } from '../store/network.ts';
import type { JoinMessage } from '../task/outcome.ts';
import { ConnectionSlots } from './connection-slots.ts';
import { ThreadPool } from './thread-pool.ts';
import { ProgressReporter } from './progress-channel.ts';
import { DurableRun } from './durable-run.ts';

interface LoadedModule {
  handler: TaskHandler;
  onFailure?: FailureHook;
}

const init = workerData as WorkerInit;
const YIELD_EVERY_MS = 1;
const maxResultBytes = init.limits?.maxResultBytes ?? Infinity;
const maxMessageBytes = init.limits?.maxMessageBytes ?? Infinity;
const modules = new Map<string, Promise<LoadedModule>>();
const progress = new ProgressReporter(init.nodeId);

function load(name: string): Promise<LoadedModule> {
  let loaded = modules.get(name);
  if (!loaded) {
    const url = init.handlers[name];
    loaded = url
      ? import(url).then((mod: { default?: unknown; onFailure?: unknown }) => {
          if (typeof mod.default !== 'function') {
            throw new TaskmillError(
              'INVALID_CONFIG',
              `Handler module of task ${name} (${url}) has no default export function.`,
            );
          }
          return {
            handler: mod.default as TaskHandler,
            onFailure: typeof mod.onFailure === 'function' ? (mod.onFailure as FailureHook) : undefined,
          };
        })
      : Promise.reject(new TaskmillError('UNKNOWN_TASK', `This node has no handler for task ${name}.`));
    modules.set(name, loaded);
  }
  return loaded;
}

// Load every handler module as the thread starts, so the first task does not pay for it; a module that
// fails to load fails its tasks with the loader's error when they run.
const preloaded = Promise.allSettled(Object.keys(init.handlers).map((name) => load(name)));

/**
 * How long the first batches wait for the other handler modules to finish loading. A handler that ends
 * its thread (process.exit) while another module of the thread is still being evaluated can abort the
 * whole process in V8 (nodejs/node#43182, #53238: "Check failed: (location_) != nullptr" in
 * SourceTextModule::ExecuteAsyncModule); seen once in CI, a poison task exiting on a fresh thread. A
 * module that never finishes loading holds up the others' tasks only this long.
 */
const PRELOAD_WAIT_MS = 10_000;
let preloadWait: Promise<unknown> | undefined = Promise.race([
  preloaded,
  new Promise((resolve) => setTimeout(resolve, PRELOAD_WAIT_MS).unref()),
]).then(() => (preloadWait = undefined));

export default async function runBatch({ tasks, messages, port }: BatchRequest): Promise<number> {
  if (preloadWait) await preloadWait;
  const aborts = new Map<string, TaskAbort>();
  port.on('message', (msg: MainMessage) => {
    if (msg.type === 'ping') {
      port.postMessage({ type: 'pong' } satisfies Pong);
      return;
    }
    const reason =
      msg.reason === 'timeout'
        ? 'TASK_TIMEOUT'
        : msg.reason === 'shutdown'
          ? 'NODE_STOPPED'
          : 'TASK_CANCELLED';
    aborts.get(msg.id)?.abort(new TaskmillError(reason, `Task ${msg.id} was aborted (${msg.reason}).`));
  });
  const started: BatchStarted = { type: 'started', threadId };
  port.postMessage(started);
  const bytes = new Uint8Array(messages);
  try {
    const runs: Promise<void>[] = [];
    let sinceYield = performance.now();
    for (const task of tasks) {
      // Synchronous handlers of a batch would otherwise run back to back in one turn of the event loop,
      // holding up the I/O of everything else on this thread (an exactly-once task waiting to COMMIT
      // keeps its row locks meanwhile). Yield after each millisecond of such work.
      if (performance.now() - sinceYield > YIELD_EVERY_MS) {
        await new Promise((resolve) => setImmediate(resolve));
        sinceYield = performance.now();
      }
      const abort = new TaskAbort();
      aborts.set(task.id, abort);
      bindTaskPort(task.id, port);
      const started = performance.now();
      progress.begin(task.id);
      runs.push(
        runOne(task, bytes, abort).then((outcome) => {
          progress.ended(task.id);
          aborts.delete(task.id);
          unbindTaskPort(task.id);
          const message: OutcomeMessage = {
            type: 'outcome',
            id: task.id,
            outcome,
            runMs: performance.now() - started,
          };
          port.postMessage(message);
        }),
      );
    }
    await Promise.all(runs);
  } finally {
    port.close();
  }
  return tasks.length;
}

let dbPool: ThreadPool | undefined;
/** This thread's connections, within the worker threads' share of the node's connection budget. */
function pool(): ThreadPool {
  dbPool ??= new ThreadPool({
    connectionString: init.connectionString,
    clientConfig: init.network ? workerConnectionConfig(init.network) : {},
    slots: ConnectionSlots.from(init.connectionSlots),
    threadId,
  });
  return dbPool;
}

/**
 * A task's abort: its AbortSignal is made only when the handler asks for it (ctx.signal), since most
 * handlers never do and an AbortController per task was a tenth of a worker thread's time on no-op
 * tasks (CPU profile of bench:flat). An abort before that makes the signal already aborted.
 */
class TaskAbort {
  private controller: AbortController | undefined;
  private why: unknown;
  aborted = false;

  get signal(): AbortSignal {
    this.controller ??= new AbortController();
    if (this.aborted && !this.controller.signal.aborted) this.controller.abort(this.why);
    return this.controller.signal;
  }

  get reason(): unknown {
    return this.why;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.why = reason;
    this.controller?.abort(reason);
  }
}

async function runOne(task: TaskEnvelope, bytes: Uint8Array, abort: TaskAbort): Promise<TaskOutcome> {
  const children: NewTask[] = [];
  const joinMessages: JoinMessage[] = [];
  const inherited = {
    parentId: task.id,
    workflowId: task.workflowId,
    workflowCreatedAt: task.workflowCreatedAt,
    affinityGroup: task.affinityGroup,
    affinity: task.affinity,
    traceparent: task.traceparent,
  };
  const slice = (offset: number, length: number) => bytes.subarray(offset, offset + length);
  const durable = new DurableRun({
    db: pool,
    fence: { taskId: task.id, nodeId: init.nodeId, assignment: task.assignment },
    exactlyOnce: task.exactlyOnce,
    maxWaitMs: init.maxWaitMs ?? Infinity,
    maxResultBytes,
  });
  const ctx: TaskContext = {
    taskId: task.id,
    name: task.name,
    attempt: task.attempt + 1,
    workflowId: task.workflowId,
    affinityGroup: task.affinityGroup,
    affinity: task.affinity,
    parentId: task.parentId,
    get signal() {
      return abort.signal;
    },
    db: undefined,
    joinMessages: [],
    joinResults: [],
    schedule(def, scheduleCtx) {
      const child = newTask(definition(def, 'schedule'), scheduleCtx, inherited);
      assertWithinLimit(child.message, maxMessageBytes, 'message');
      children.push(child);
      return child.id;
    },
    scheduleJoin(def, scheduleCtx, taskIds) {
      if (!Array.isArray(taskIds) || taskIds.length === 0) {
        throw new TaskmillError('INVALID_ARGUMENT', 'ctx.scheduleJoin() needs the ids of the tasks to join.');
      }
      const mine = new Set(children.map((c) => c.id));
      const unknown = taskIds.filter((id) => !mine.has(id));
      if (unknown.length > 0) {
        throw new TaskmillError(
          'INVALID_ARGUMENT',
          `ctx.scheduleJoin() joins tasks scheduled by this handler; unknown ids: ${unknown.join(', ')}.`,
        );
      }
      const join = newTask(definition(def, 'scheduleJoin'), scheduleCtx, inherited);
      assertWithinLimit(join.message, maxMessageBytes, 'message');
      join.state = 'waiting';
      join.joinOf = [...new Set(taskIds)];
      children.push(join);
      return join.id;
    },
    progress(value) {
      progress.report(task.id, value);
    },
    step: (name, fn) => durable.step(name, fn),
    sleep: (ms) => durable.sleep(ms),
    waitForEvent: (name, options) => durable.waitForEvent(name, options),
    sendToJoin(def, message) {
      joinMessages.push({
        joinName: definition(def, 'sendToJoin').name,
        payload: encode(message, 'join message', maxMessageBytes),
      });
    },
  };
  let message: unknown;
  let mod: LoadedModule | undefined;
  try {
    for (const input of task.joinInputs) {
      const value = decode(slice(input.offset, input.length));
      if (input.kind === 'm') ctx.joinMessages.push(value);
      else ctx.joinResults.push({ taskId: input.from, result: value });
    }
    message = decode(slice(task.offset, task.length));
    mod = await load(task.name);
    if (task.exactlyOnce) return await runExactlyOnce(task, mod, message, ctx, abort, children, joinMessages);
    // A durable wait ends the run with its suspension; the handler's promise then never settles.
    const ran = await Promise.race([
      Promise.resolve(mod.handler(message, ctx)).then((value) => ({ value })),
      durable.suspended,
    ]);
    if (!('value' in ran)) return ran;
    const { value } = ran;
    throwIfAbortedForGood(abort);
    const result = value === undefined ? null : encode(value, 'result', maxResultBytes);
    return { kind: 'done', result, children, joinMessages };
  } catch (error) {
    // Whether the error stops the retries is decided by settle() (task/settle.ts); onFailure can only
    // ask for no more attempts.
    let stopRetry = false;
    try {
      if (mod?.onFailure?.(error, message, ctx) === false) stopRetry = true;
    } catch {
      // A throwing onFailure hook does not change the outcome: the original error is reported.
    }
    return { kind: 'failed', error: serializeError(error), stopRetry };
  }
}

/**
 * Exactly-once: check the task is still ours (node and assignment) under a KEY SHARE lock
 * (lockHeldTask), run the handler with the transaction's client, and commit its completion, children
 * and join messages in that same transaction; tm_complete fences again at commit. A task taken back
 * meanwhile fails the fence and everything rolls back. A crash leaves nothing behind.
 */
async function runExactlyOnce(
  task: TaskEnvelope,
  mod: LoadedModule,
  message: unknown,
  ctx: TaskContext,
  abort: TaskAbort,
  children: NewTask[],
  joinMessages: JoinMessage[],
): Promise<TaskOutcome> {
  // A connection that breaks while the handler holds it fails this task (its query rejects) instead of
  // ending the thread, and is closed rather than kept (thread-pool.ts).
  const { client, release, brokenBy } = await pool().connect();
  let open = false;
  let broken = false;
  const idleMs = init.network?.exactlyOnceIdleTimeoutMs ?? 0;
  try {
    // One round trip; SET LOCAL ends with the transaction (and passes through PgBouncer).
    await client.query(
      idleMs > 0 ? `begin; set local idle_in_transaction_session_timeout = ${Math.trunc(idleMs)}` : 'begin',
    );
    open = true;
    if (!(await lockHeldTask(client, init.nodeId, task.id, task.assignment))) {
      await client.query('rollback');
      open = false;
      return { kind: 'committed', outcome: 'stale' };
    }
    ctx.db = client;
    const value = await mod.handler(message, ctx);
    throwIfAbortedForGood(abort);
    const result = value === undefined ? null : encode(value, 'result', maxResultBytes);
    const done = await completeTasks(client, init.nodeId, [
      { kind: 'done', task, result, children, joinMessages },
    ]);
    if (done.length !== 1) throw new Error(`exactly-once completion of ${task.id} was not accepted`);
    // A cancellation that arrived first wins: the row ends cancelled and the handler's writes are undone.
    if (done[0].outcome === 'cancelled') {
      await client.query('rollback');
      open = false;
      // On the same connection: a second one could wait for ever on a budget of one.
      await completeTasks(client, init.nodeId, [
        { kind: 'done', task, result: null, children: [], joinMessages: [] },
      ]);
      return { kind: 'committed', outcome: 'cancelled' };
    }
    await client.query('commit');
    open = false;
    return { kind: 'committed', outcome: 'completed' };
  } catch (error) {
    // Outside a transaction (its begin or commit failed) the connection's state is unknown: a terminated
    // backend rejects the statement before its socket closes, so the client still looks usable.
    if (!open) broken = true;
    throw whyBroken(brokenBy(), idleMs) ?? error;
  } finally {
    ctx.db = undefined;
    let destroy = broken;
    if (open) await client.query('rollback').catch(() => (destroy = true));
    release(destroy);
  }
}

/**
 * The server's own error when it ended the session under the handler (pg's later "not queryable" says
 * nothing of why), explained when it was the idle bound of the transaction.
 */
function whyBroken(cause: Error | undefined, idleMs: number): Error | undefined {
  if (!cause) return undefined;
  // 25P03: idle_in_transaction_session_timeout.
  if ((cause as { code?: string }).code !== '25P03') return cause;
  return new Error(
    `the handler paused longer than network.exactlyOnceIdleTimeoutMs (${idleMs} ms) between two statements ` +
      `of its exactly-once transaction; the server ended it and rolled its writes back (${cause.message})`,
    { cause },
  );
}

/**
 * A handler that returned after its abort still fails on a timeout or a cancellation; after a node
 * shutdown abort its success stands (handing it back would run it a second time).
 */
function throwIfAbortedForGood(abort: TaskAbort): void {
  if (!abort.aborted) return;
  if (abort.reason instanceof TaskmillError && abort.reason.code === 'NODE_STOPPED') return;
  throw abort.reason;
}

function definition(def: unknown, call: string): TaskDefinition {
  if (!isTaskDefinition(def)) {
    throw new TaskmillError('INVALID_ARGUMENT', `ctx.${call}() needs a definition made by defineTask().`);
  }
  return def;
}
