/**
 * Runs tasks on a Piscina pool of worker threads, in micro-batches: one `run()` carries many tiny
 * tasks (one run per no-op task tops out near 27,000/s on 2 cores, 100 per run near 460,000/s).
 * Messages travel as one transferred ArrayBuffer per batch; outcomes come back one by one on the batch
 * port (protocol.ts). A thread holds several batches at once (`concurrentBatchesPerThread`).
 *
 * Blame: a crashed or terminated thread charges only the task that caused it.
 * - Tasks with a timeout run in batches of one; the clock starts when the thread starts the task
 *   (never while it waits in a queue). On timeout the task's signal is aborted and its thread pinged;
 *   after `abortGraceMs` a task still running gets its thread terminated. If the thread answered the
 *   ping, the task ignores its abort on a live thread: it is charged (TASK_TIMEOUT) and every other
 *   task of that thread runs again, uncharged. If the thread did not answer, something synchronous
 *   blocks it and nobody knows what: every task of the thread, the timed-out one too, runs again alone.
 * - A thread that dies by itself (process.exit, out of memory, an uncaught error) fails every batch
 *   on it; nobody knows which task did it, so each runs again alone, uncharged.
 * - Alone means on the isolation pool, whose threads run one task at a time: there a thread's death
 *   or timeout is its task's own doing, and is charged. A task charged so is remembered and runs alone
 *   on its retries on this node.
 * Each thread's V8 heap is capped (`threadHeapLimitMb`), so a handler that allocates without end ends
 * its own thread (ERR_WORKER_OUT_OF_MEMORY), not the process.
 *
 * Process groups a task reports (shell tasks) are killed when the task ends in a way its thread could
 * not clean up after (the thread died or was terminated), before the task runs again.
 *
 * States per task: dispatched -> started (its clock runs) -> reported | thread died -> (charged |
 * run again, uncharged). Main thread only.
 */
import type { WorkerNetworkOptions } from '../store/network.ts';
import { availableParallelism } from 'node:os';
import { MessageChannel, Worker } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { TaskmillError } from '../task/errors.ts';
import type {
  AbortReason,
  BatchRequest,
  MainMessage,
  TaskEnvelope,
  ThreadMessage,
  OutcomeMessage,
  WorkerInit,
} from '../worker/protocol.ts';
import type { Outcome } from '../task/outcome.ts';
import type { FetchedTask } from '../store/tasks.ts';
import { activeTracer, traceparentOf, type Span, type Tracer } from '../log/tracing.ts';
import { endAttempt, endRerun, startAttempt } from './attempt-tracing.ts';
import type { ConnectionSlots } from '../worker/connection-slots.ts';

export const DISPATCHER_DEFAULTS = {
  threads: availableParallelism(),
  /** Most tasks one worker-thread run carries. */
  maxBatchSize: 100,
  abortGraceMs: 1_000,
  concurrentBatchesPerThread: 16,
  /**
   * V8 heap (old generation) of each worker thread, MiB. A handler that allocates more ends its own
   * thread with ERR_WORKER_OUT_OF_MEMORY. Keep threads x this (plus the main thread) within the
   * machine's memory.
   */
  threadHeapLimitMb: 1_024,
};
/** Bounds the memory of tasks that crashed or hung a thread here (they run alone on retries). */
const UNTRUSTED_MAX = 10_000;
/** Idle isolation threads end after this. */
const ISOLATION_IDLE_MS = 60_000;
/** Uncharged reruns of one task after threads died under it, before it is charged anyway. */
const MAX_RERUNS = 8;

export interface DispatcherOptions {
  handlers: Record<string, string>;
  exactlyOnce: (name: string) => boolean;
  connectionString: string;
  /** Timeouts and keepalive of the threads' connections (store/network.ts). */
  network?: WorkerNetworkOptions;
  /** The threads' share of the node's connection budget (worker/connection-slots.ts). */
  connectionSlots: ConnectionSlots;
  nodeId: string;
  timeoutOf: (name: string) => number | undefined;
  /** Each task's outcome (task/outcome.ts), with the task and why it was aborted, if it was. */
  onOutcome: (outcome: Outcome<FetchedTask>) => void;
  threads?: number;
  maxBatchSize?: number;
  abortGraceMs?: number;
  execArgv?: string[];
  /** Shell task policy for the threads (shell-task.ts); absent: shell tasks are refused. */
  shell?: WorkerInit['shell'];
  /** Result and message size limits enforced in the threads. */
  limits?: WorkerInit['limits'];
  /** Longest durable wait a handler may ask for (WorkerInit.maxWaitMs). */
  maxWaitMs?: number;
  /** Concurrent batches one thread may hold (async handlers interleave on its event loop). */
  concurrentBatchesPerThread?: number;
  /** V8 heap limit of each worker thread, MiB (DISPATCHER_DEFAULTS.threadHeapLimitMb). */
  threadHeapLimitMb?: number;
}

/** One worker-thread run. `threadId` is known once the thread has started it. */
interface Batch {
  tasks: FetchedTask[];
  /** On the isolation pool: one task, alone on its thread. */
  isolated: boolean;
  port: MessageChannel['port1'];
  threadId?: number;
  /** performance.now() of the last ping sent and of the last pong received. */
  pingAt?: number;
  pongAt?: number;
}

interface Running {
  task: FetchedTask;
  batch: Batch;
  reason?: AbortReason;
  timers: NodeJS.Timeout[];
  /** Process groups the task started and that may still be alive. */
  groups: Set<number>;
  /** Its attempt span (attempt-tracing.ts) while an OpenTelemetry SDK is registered. */
  span: Span | undefined;
  tracer: Tracer | undefined;
}

/** Why the dispatcher terminated a thread: the task to charge, or none (a blocked thread, blame unknown). */
interface Termination {
  culprit: string | undefined;
}

type Pool = Piscina<BatchRequest, number>;

export class Dispatcher {
  private readonly pool: Pool;
  /** Threads that run one task at a time: suspects and untrusted tasks. Created on first use. */
  private isolationPool: Pool | undefined;
  private readonly running = new Map<string, Running>();
  private readonly terminated = new Map<number, Termination>();
  /** Tasks that crashed or hung a thread of this node: they run alone from now on. */
  private readonly untrusted = new Set<string>();
  /** Uncharged reruns of a task in this dispatch (bounded, so a run that fails for other reasons ends). */
  private readonly reruns = new WeakMap<FetchedTask, number>();
  private readonly maxBatchSize: number;
  private readonly abortGraceMs: number;
  private readonly poolOptions: ConstructorParameters<typeof Piscina>[0];
  private destroyed = false;
  readonly threads: number;

  constructor(private readonly options: DispatcherOptions) {
    this.threads = options.threads ?? DISPATCHER_DEFAULTS.threads;
    this.maxBatchSize = options.maxBatchSize ?? DISPATCHER_DEFAULTS.maxBatchSize;
    this.abortGraceMs = options.abortGraceMs ?? DISPATCHER_DEFAULTS.abortGraceMs;
    const init: WorkerInit = {
      handlers: options.handlers,
      connectionString: options.connectionString,
      connectionSlots: options.connectionSlots.buffer,
      nodeId: options.nodeId,
    };
    if (options.shell) init.shell = options.shell;
    if (options.limits) init.limits = options.limits;
    if (options.maxWaitMs !== undefined) init.maxWaitMs = options.maxWaitMs;
    if (options.network) init.network = options.network;
    const refused = options.execArgv ? refusedWorkerFlags(options.execArgv) : new Set<string>();
    if (refused.size > 0) {
      throw new TaskmillError(
        'INVALID_CONFIG',
        `workerExecArgv holds flags Node refuses for worker threads: ${[...refused].join(', ')}. ` +
          'Give them to the node process itself (they apply to every thread).',
      );
    }
    this.poolOptions = {
      filename: new URL('../worker/worker-entry.mjs', import.meta.url).href,
      // Handlers may be asynchronous (timers, I/O): the thread's event loop must keep running between runs.
      atomics: 'disabled',
      execArgv: options.execArgv ?? workerExecArgv(),
      workerData: init,
      resourceLimits: {
        maxOldGenerationSizeMb: options.threadHeapLimitMb ?? DISPATCHER_DEFAULTS.threadHeapLimitMb,
      },
    };
    this.pool = new Piscina({
      ...this.poolOptions,
      minThreads: this.threads,
      maxThreads: this.threads,
      idleTimeout: 60_000,
      concurrentTasksPerWorker:
        options.concurrentBatchesPerThread ?? DISPATCHER_DEFAULTS.concurrentBatchesPerThread,
    });
    this.reclaimSlotsOf(this.pool);
  }

  /**
   * A thread that ended (terminated, crashed, idle) never releases its connection slots: take them back
   * when it exits. (Piscina's workerDestroy comes too late: an exited thread's threadId is -1 by then.)
   */
  private reclaimSlotsOf(pool: Pool): void {
    const watched = new WeakSet<Worker>();
    pool.on('workerCreate', () => {
      for (const thread of pool.threads) {
        if (watched.has(thread)) continue;
        watched.add(thread);
        const id = thread.threadId;
        thread.once('exit', () => this.options.connectionSlots.reclaim(id));
      }
    });
  }

  /** Tasks started and not yet reported. */
  get inFlight(): number {
    return this.running.size;
  }

  /** The tasks started and not yet reported. */
  runningTasks(): FetchedTask[] {
    return [...this.running.values()].map((r) => r.task);
  }

  /** The task started under this id and not yet reported, if any. */
  runningTask(id: string): FetchedTask | undefined {
    return this.running.get(id)?.task;
  }

  /** Ids of the tasks started and not yet reported. */
  runningIds(): string[] {
    return [...this.running.keys()];
  }

  get utilization(): number {
    return this.pool.utilization;
  }

  /** Splits tasks into micro-batches over the threads and starts them. */
  dispatch(tasks: FetchedTask[]): void {
    const batched: FetchedTask[] = [];
    for (const task of tasks) {
      if (this.untrusted.has(task.id)) this.runBatch([task], true);
      else if (this.options.timeoutOf(task.name) === undefined) batched.push(task);
      else this.runBatch([task], false);
    }
    if (batched.length === 0) return;
    const size = Math.min(this.maxBatchSize, Math.ceil(batched.length / this.threads));
    for (let i = 0; i < batched.length; i += size) this.runBatch(batched.slice(i, i + size), false);
  }

  /** Aborts one running task: its signal first, then its thread. False when it is not running here. */
  abort(id: string, reason: AbortReason): boolean {
    const running = this.running.get(id);
    if (!running) return false;
    running.reason ??= reason;
    const { batch } = running;
    this.post(batch, { type: 'abort', id, reason });
    this.post(batch, { type: 'ping' });
    batch.pingAt = performance.now();
    const hardAbort = () => {
      if (this.running.get(id) !== running) return;
      // A batch still queued has no thread yet: its task sees the abort when it starts; check again later.
      const thread = this.threadOf(batch);
      if (!thread || batch.threadId === undefined) {
        running.timers.push(setTimeout(hardAbort, this.abortGraceMs));
        return;
      }
      // Already being terminated for another task's abort: its exit ends this batch as well, blamed as
      // decided then. Terminating it again would change the blame and add one more exit listener per
      // task (a blocked thread with ten timed-out tasks went past Node's listener limit).
      if (this.terminated.has(batch.threadId)) return;
      // The thread answered the ping: its loop turns and this task ignores its abort, its own doing.
      // No answer: a synchronous handler blocks the thread, maybe another one; nobody is charged.
      const responsive = batch.pongAt !== undefined && batch.pongAt >= batch.pingAt!;
      const culprit = responsive || batch.isolated || running.reason !== 'timeout' ? id : undefined;
      this.terminated.set(batch.threadId, { culprit });
      if (this.terminated.size > 1_000) this.terminated.delete(this.terminated.keys().next().value!);
      void thread.terminate();
    };
    running.timers.push(setTimeout(hardAbort, this.abortGraceMs));
    return true;
  }

  async destroy(): Promise<void> {
    this.destroyed = true;
    await Promise.all([this.pool.destroy(), this.isolationPool?.destroy()]);
    for (const running of this.running.values()) killGroups(running);
  }

  private isolation(): Pool {
    if (this.isolationPool) return this.isolationPool;
    this.isolationPool = new Piscina({
      ...this.poolOptions,
      // At least one thread: Piscina replaces a thread that died only to keep minThreads, and a run
      // queued while none is left would otherwise wait for ever.
      minThreads: 1,
      maxThreads: this.threads,
      idleTimeout: ISOLATION_IDLE_MS,
      concurrentTasksPerWorker: 1,
    });
    // Once per pool: a watch added on every isolated run would pile up listeners without bound.
    this.reclaimSlotsOf(this.isolationPool);
    return this.isolationPool;
  }

  private threadOf(batch: Batch): Worker | undefined {
    const pool = batch.isolated ? this.isolationPool : this.pool;
    return pool?.threads.find((t) => t.threadId === batch.threadId);
  }

  private post(batch: Batch, message: MainMessage): void {
    try {
      batch.port.postMessage(message);
    } catch {
      // The port is closed: the batch has ended.
    }
  }

  private runBatch(tasks: FetchedTask[], isolated: boolean): void {
    let total = 0;
    for (const t of tasks) {
      total += t.message?.length ?? 0;
      for (const j of t.joinInputs) total += j.payload?.length ?? 0;
    }
    const messages = new ArrayBuffer(total);
    const view = new Uint8Array(messages);
    let offset = 0;
    const put = (bytes: Buffer | null) => {
      const at = offset;
      if (bytes) {
        view.set(bytes, offset);
        offset += bytes.length;
      }
      return { offset: at, length: bytes?.length ?? 0 };
    };
    // Once per batch: without an SDK no span and no allocation per task.
    const tracer = activeTracer();
    const spans = tracer && tasks.map((t) => startAttempt(tracer, t, this.options.nodeId));
    const envelopes: TaskEnvelope[] = tasks.map((t, i) => {
      const { offset: at, length } = put(t.message);
      const joinInputs = t.joinInputs.map((j) => ({ kind: j.kind, from: j.from, ...put(j.payload) }));
      return {
        id: t.id,
        name: t.name,
        offset: at,
        length,
        attempt: t.attempt,
        workflowId: t.workflowId,
        workflowCreatedAt: t.workflowCreatedAt.toISOString(),
        affinityGroup: t.affinityGroup,
        affinity: t.affinity,
        parentId: t.parentId,
        assignment: t.assignment,
        exactlyOnce: this.options.exactlyOnce(t.name),
        joinInputs,
        traceparent: spans ? traceparentOf(spans[i]) : null,
      } satisfies TaskEnvelope;
    });

    const { port1, port2 } = new MessageChannel();
    const batch: Batch = { tasks, isolated, port: port1 };
    tasks.forEach((task, i) => {
      this.running.set(task.id, { task, batch, timers: [], groups: new Set(), span: spans?.[i], tracer });
    });
    port1.on('message', (event: ThreadMessage) => {
      if (event.type === 'started') {
        batch.threadId = event.threadId;
        this.startClocks(batch);
      } else if (event.type === 'pong') {
        batch.pongAt = performance.now();
      } else if (event.type === 'group') {
        const running = this.running.get(event.id);
        if (running?.batch !== batch) return;
        if (event.alive) running.groups.add(event.pgid);
        else running.groups.delete(event.pgid);
      } else {
        this.report(event);
      }
    });

    // The batch is over when the run has settled and its port is closed (outcomes posted just before the
    // run resolved are delivered first); a killed thread may never close the port cleanly, hence the cap.
    let portClosed = false;
    let settled: { error: unknown } | undefined;
    let finished = false;
    const finishBatch = () => {
      if (finished || !settled || !portClosed) return;
      finished = true;
      const pending = tasks.filter((t) => this.running.get(t.id)?.batch === batch);
      if (pending.length > 0)
        this.batchDied(batch, pending, settled.error ?? new Error('no outcome reported'));
    };
    port1.on('close', () => {
      portClosed = true;
      finishBatch();
    });
    (isolated ? this.isolation() : this.pool)
      .run(
        { tasks: envelopes, messages, port: port2 },
        // No AbortSignal here: Piscina runs only one signal-carrying task per thread at a time, which
        // would cap a node's concurrency at its thread count. Hard aborts terminate the thread instead.
        { transferList: [messages, port2] },
      )
      .then(
        () => (settled = { error: undefined }),
        (error: unknown) => (settled = { error }),
      )
      .then(() => {
        finishBatch();
        setTimeout(() => {
          port1.close();
          portClosed = true;
          finishBatch();
        }, 200).unref();
      });
  }

  /** A task's timeout measures its own run: the clock starts when its thread starts its batch. */
  private startClocks(batch: Batch): void {
    for (const task of batch.tasks) {
      const running = this.running.get(task.id);
      const timeoutMs = this.options.timeoutOf(task.name);
      if (running?.batch !== batch || timeoutMs === undefined) continue;
      running.timers.push(setTimeout(() => this.abort(task.id, 'timeout'), timeoutMs));
    }
  }

  private report(event: OutcomeMessage): void {
    const running = this.finish(event.id);
    if (!running) return;
    if (running.span) endAttempt(running.tracer!, running.span, event.outcome, event.runMs);
    this.options.onOutcome({
      ...event.outcome,
      task: running.task,
      reason: running.reason,
      runMs: event.runMs,
    });
  }

  /**
   * The thread of `batch` died (or the run failed) before these tasks reported. Charges the one task
   * that is known to have caused it, and runs every other one again without charging it.
   */
  private batchDied(batch: Batch, pending: FetchedTask[], error: unknown): void {
    const termination = batch.threadId === undefined ? undefined : this.terminated.get(batch.threadId);
    for (const task of pending) {
      const running = this.finish(task.id)!;
      const reruns = (this.reruns.get(task) ?? 0) + 1;
      this.reruns.set(task, reruns);
      if (
        this.destroyed ||
        reruns > MAX_RERUNS ||
        running.reason === 'cancel' ||
        running.reason === 'shutdown' ||
        running.reason === 'lost'
      ) {
        this.died(running, error);
      } else if (termination) {
        if (termination.culprit === task.id) {
          this.distrust(task.id);
          this.died(running, error);
        } else if (termination.culprit === undefined) {
          this.rerun(running, error, () => this.runBatch([task], true));
        } else {
          this.rerun(running, error, () => this.dispatch([task]));
        }
      } else if (batch.isolated && batch.threadId !== undefined) {
        // Alone on its thread, which died by itself: this task did it.
        this.distrust(task.id);
        this.died(running, error);
      } else {
        this.rerun(running, error, () => this.runBatch([task], true));
      }
    }
  }

  /** Runs a task again, uncharged, after its thread died; its attempt span ends here, the rerun opens one. */
  private rerun(running: Running, error: unknown, again: () => void): void {
    if (running.span) endRerun(running.span, error);
    again();
  }

  private distrust(id: string): void {
    this.untrusted.add(id);
    if (this.untrusted.size > UNTRUSTED_MAX) this.untrusted.delete(this.untrusted.values().next().value!);
  }

  private died(running: Running, error: unknown): void {
    const reason = running.reason;
    const cause = error as { code?: string; message?: string } | undefined;
    const failure =
      reason === 'timeout'
        ? new TaskmillError(
            'TASK_TIMEOUT',
            `Task ${running.task.name} exceeded its timeout and its worker thread was terminated.`,
          )
        : reason
          ? new TaskmillError(
              'TASK_CANCELLED',
              `Task ${running.task.name} was aborted (${reason}) and its worker thread terminated.`,
            )
          : new TaskmillError(
              'WORKER_EXITED',
              `The worker thread running task ${running.task.name} alone died: ` +
                `${cause?.code ? `${cause.code}: ` : ''}${cause?.message ?? String(error)}` +
                (cause?.code === 'ERR_WORKER_OUT_OF_MEMORY'
                  ? ' (the thread heap limit is the node option threadHeapLimitMb)'
                  : ''),
            );
    const outcome = {
      kind: 'failed' as const,
      error: { name: failure.name, message: failure.message, code: failure.code, stack: failure.stack },
      stopRetry: false,
    };
    if (running.span) endAttempt(running.tracer!, running.span, outcome);
    this.options.onOutcome({ ...outcome, task: running.task, reason });
  }

  /** Ends a task's presence here: its timers stop and the process groups it left behind are killed. */
  private finish(id: string): Running | undefined {
    const running = this.running.get(id);
    if (!running) return undefined;
    for (const timer of running.timers) clearTimeout(timer);
    killGroups(running);
    this.running.delete(id);
    return running;
  }
}

function killGroups(running: Running): void {
  for (const pgid of running.groups) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // ESRCH: the group is already gone.
    }
  }
  running.groups.clear();
}

/**
 * The parent's Node flags that worker threads accept: less its TypeScript loader (worker-entry.mjs
 * registers one per thread), the inspector, and per-process flags such as V8 options
 * (`--max-old-space-size`, `--stack-size`), which Node refuses for a thread
 * (ERR_WORKER_INVALID_EXEC_ARGV) and which already apply to the whole process anyway.
 */
export function workerExecArgv(argv: readonly string[] = process.execArgv): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (
      (flag === '--import' || flag === '--require' || flag === '--loader') &&
      /tsx/.test(argv[i + 1] ?? '')
    ) {
      i++;
      continue;
    }
    if (flag.startsWith('--inspect') || /tsx/.test(flag)) continue;
    out.push(flag);
  }
  const refused = refusedWorkerFlags(out);
  return out.filter((flag) => !refused.has(flag));
}

const refusedCache = new Map<string, Set<string>>();

/**
 * The flags of `argv` Node refuses for a worker thread. Node has no list of them, but its Worker
 * constructor checks execArgv before it starts a thread and names every refused flag; asked with a
 * thread that is terminated at once when the flags are all accepted.
 */
export function refusedWorkerFlags(argv: readonly string[]): Set<string> {
  if (argv.length === 0) return new Set();
  const key = argv.join('\0');
  let refused = refusedCache.get(key);
  if (refused) return refused;
  refused = new Set();
  try {
    void new Worker('', { eval: true, execArgv: [...argv], stdout: true, stderr: true }).terminate();
  } catch (error) {
    const e = error as { code?: string; message?: string };
    if (e.code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw error;
    const listed = (e.message ?? '').replace(/^[^:]*:\s*/, '').split(', ');
    for (const flag of argv) if (listed.includes(flag)) refused.add(flag);
  }
  refusedCache.set(key, refused);
  return refused;
}
