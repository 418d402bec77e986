/**
 * Runs tasks on a Piscina pool of worker threads, in micro-batches: one `run()` carries many tiny
 * tasks (one run per no-op task tops out near 27,000/s on 2 cores, 100 per run near 460,000/s).
 * Messages travel as one transferred ArrayBuffer per batch; outcomes come back one by one on the batch
 * port (protocol.ts).
 *
 * Tasks with a timeout run alone, so their clock starts when they start and a hard kill (terminating
 * the thread) hits nobody else. Abort is soft first (the handler's signal), then hard after
 * `abortGraceMs`. When a thread dies mid-batch (process.exit, hard abort), the tasks of that batch that
 * had not reported are re-run one per batch, so a poison task ends up failing alone.
 *
 * States per task: dispatched -> (reported | thread died -> isolated rerun | aborted). Main thread only.
 */
import { availableParallelism } from 'node:os';
import { MessageChannel } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { TaskmillError } from './errors.ts';
import type {
  AbortReason,
  BatchRequest,
  BatchStarted,
  SerializedError,
  TaskEnvelope,
  WorkerEvent,
  WorkerInit,
} from './protocol.ts';
import type { NewTask } from './schedule-context.ts';
import type { FetchedTask, JoinMessage } from './task-store.ts';

export const DISPATCHER_DEFAULTS = {
  threads: availableParallelism(),
  /** Most tasks one worker-thread run carries. */
  maxBatchSize: 100,
  abortGraceMs: 1_000,
};

/** `runMs`: time the run took in its worker thread; undefined when the thread died under it. */
export type Outcome = (
  | {
      task: FetchedTask;
      kind: 'done';
      result: Uint8Array | null;
      children: NewTask[];
      joinMessages: JoinMessage[];
    }
  /** Exactly-once: committed in the worker thread (or fenced out there); nothing left to do. */
  | { task: FetchedTask; kind: 'committed'; outcome: 'completed' | 'cancelled' | 'stale' }
  | { task: FetchedTask; kind: 'failed'; error: SerializedError; stopRetry: boolean; reason?: AbortReason }
) & { runMs?: number };

export interface DispatcherOptions {
  handlers: Record<string, string>;
  exactlyOnce: (name: string) => boolean;
  connectionString: string;
  nodeId: string;
  timeoutOf: (name: string) => number | undefined;
  onOutcome: (outcome: Outcome) => void;
  threads?: number;
  maxBatchSize?: number;
  abortGraceMs?: number;
  execArgv?: string[];
  /** Shell task policy for the threads (shell-task.ts); absent: shell tasks are refused. */
  shell?: WorkerInit['shell'];
  /** Concurrent batches one thread may hold (async handlers interleave on its event loop). */
  concurrentBatchesPerThread?: number;
}

/** One worker-thread run. `threadId` is known once the thread has started it. */
interface Batch {
  threadId?: number;
}

interface Running {
  task: FetchedTask;
  port: MessageChannel['port1'];
  batch: Batch;
  reason?: AbortReason;
  timers: NodeJS.Timeout[];
}

export class Dispatcher {
  private readonly pool: Piscina<BatchRequest, number>;
  private readonly running = new Map<string, Running>();
  private readonly maxBatchSize: number;
  private readonly abortGraceMs: number;
  readonly threads: number;

  constructor(private readonly options: DispatcherOptions) {
    this.threads = options.threads ?? DISPATCHER_DEFAULTS.threads;
    this.maxBatchSize = options.maxBatchSize ?? DISPATCHER_DEFAULTS.maxBatchSize;
    this.abortGraceMs = options.abortGraceMs ?? DISPATCHER_DEFAULTS.abortGraceMs;
    const init: WorkerInit = {
      handlers: options.handlers,
      connectionString: options.connectionString,
      nodeId: options.nodeId,
    };
    if (options.shell) init.shell = options.shell;
    this.pool = new Piscina({
      filename: new URL('./worker-entry.mjs', import.meta.url).href,
      minThreads: this.threads,
      maxThreads: this.threads,
      idleTimeout: 60_000,
      concurrentTasksPerWorker: options.concurrentBatchesPerThread ?? 16,
      // Handlers may be asynchronous (timers, I/O): the thread's event loop must keep running between runs.
      atomics: 'disabled',
      execArgv: options.execArgv ?? workerExecArgv(),
      workerData: init,
    });
  }

  /** Tasks started and not yet reported. */
  get inFlight(): number {
    return this.running.size;
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
      if (this.options.timeoutOf(task.name) === undefined) batched.push(task);
      else this.runBatch([task], true);
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
    running.port.postMessage({ type: 'abort', id, reason });
    const hardAbort = () => {
      if (!this.running.has(id)) return;
      // Terminate the thread running the batch (Piscina then fails its run and replaces the thread;
      // batch-mates that had not reported run again alone). A batch still queued has no thread yet:
      // its task sees the abort when it starts, and this checks again later.
      const thread = this.pool.threads.find((t) => t.threadId === running.batch.threadId);
      if (thread) void thread.terminate();
      else running.timers.push(setTimeout(hardAbort, this.abortGraceMs));
    };
    running.timers.push(setTimeout(hardAbort, this.abortGraceMs));
    return true;
  }

  async destroy(): Promise<void> {
    await this.pool.destroy();
  }

  private runBatch(tasks: FetchedTask[], alone: boolean): void {
    let total = 0;
    for (const t of tasks) {
      total += t.message?.length ?? 0;
      for (const p of t.join_payloads ?? []) total += p?.length ?? 0;
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
    const envelopes: TaskEnvelope[] = tasks.map((t) => {
      const { offset: at, length } = put(t.message);
      const joinInputs = (t.join_kinds ?? []).map((kind, i) => ({
        kind: kind as 'r' | 'm',
        from: t.join_from![i],
        ...put(t.join_payloads![i]),
      }));
      return {
        id: t.id,
        name: t.name,
        offset: at,
        length,
        attempt: t.attempt,
        workflowId: t.workflow_id,
        workflowCreatedAt: t.workflow_created_at.toISOString(),
        affinityGroup: t.affinity_group,
        affinity: t.affinity,
        parentId: t.parent_id,
        assignment: t.assignment,
        exactlyOnce: this.options.exactlyOnce(t.name),
        joinInputs,
      } satisfies TaskEnvelope;
    });

    const { port1, port2 } = new MessageChannel();
    const batch: Batch = {};
    for (const task of tasks) this.running.set(task.id, { task, port: port1, batch, timers: [] });
    port1.on('message', (event: WorkerEvent | BatchStarted) => {
      if (event.type === 'started') batch.threadId = event.threadId;
      else this.report(event);
    });

    if (alone) {
      const timeoutMs = this.options.timeoutOf(tasks[0].name);
      if (timeoutMs !== undefined) {
        this.running
          .get(tasks[0].id)!
          .timers.push(setTimeout(() => this.abort(tasks[0].id, 'timeout'), timeoutMs));
      }
    }

    // The batch is over when the run has settled and its port is closed (outcomes posted just before the
    // run resolved are delivered first); a killed thread may never close the port cleanly, hence the cap.
    let portClosed = false;
    let settled: { error: unknown } | undefined;
    let finished = false;
    const finishBatch = () => {
      if (finished || !settled || !portClosed) return;
      finished = true;
      const pending = tasks.filter((t) => this.running.get(t.id)?.port === port1);
      if (pending.length > 0)
        this.batchDied(pending, alone, settled.error ?? new Error('no outcome reported'));
    };
    port1.on('close', () => {
      portClosed = true;
      finishBatch();
    });
    this.pool
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

  private report(event: WorkerEvent): void {
    const running = this.finish(event.id);
    if (!running) return;
    if (event.type === 'done') {
      this.options.onOutcome({
        task: running.task,
        kind: 'done',
        result: event.result,
        children: event.children,
        joinMessages: event.joinMessages,
        runMs: event.runMs,
      });
    } else if (event.type === 'committed') {
      this.options.onOutcome({
        task: running.task,
        kind: 'committed',
        outcome: event.outcome,
        runMs: event.runMs,
      });
    } else if (event.type === 'stale') {
      this.options.onOutcome({ task: running.task, kind: 'committed', outcome: 'stale', runMs: event.runMs });
    } else {
      const cancelled = running.reason === 'cancel';
      this.options.onOutcome({
        task: running.task,
        kind: 'failed',
        error: event.error,
        stopRetry: event.stopRetry || cancelled,
        reason: running.reason,
        runMs: event.runMs,
      });
    }
  }

  private batchDied(tasks: FetchedTask[], alone: boolean, error: unknown): void {
    const pending = tasks.filter((t) => this.running.has(t.id));
    const aborted = pending.filter((t) => this.running.get(t.id)!.reason !== undefined);
    if (!alone || aborted.length > 0) {
      // Aborted tasks end here; for the others it is unknown which one killed the thread: each runs
      // again alone, so only a poison task fails.
      for (const task of aborted) this.died(this.finish(task.id)!, error);
      for (const task of pending) {
        if (aborted.includes(task)) continue;
        this.finish(task.id);
        this.runBatch([task], true);
      }
      return;
    }
    for (const task of pending) this.died(this.finish(task.id)!, error);
  }

  private died(running: Running, error: unknown): void {
    const reason = running.reason;
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
              `The worker thread running task ${running.task.name} died: ${(error as Error)?.message ?? error}`,
            );
    this.options.onOutcome({
      task: running.task,
      kind: 'failed',
      error: { name: failure.name, message: failure.message, code: failure.code, stack: failure.stack },
      stopRetry: reason === 'cancel',
      reason,
    });
  }

  private finish(id: string): Running | undefined {
    const running = this.running.get(id);
    if (!running) return undefined;
    for (const timer of running.timers) clearTimeout(timer);
    this.running.delete(id);
    return running;
  }
}

/** The parent's Node flags, less its TypeScript loader (worker-entry.mjs registers one per thread). */
export function workerExecArgv(): string[] {
  const out: string[] = [];
  const argv = process.execArgv;
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
  return out;
}
