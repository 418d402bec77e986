/**
 * Worker-thread entry (Piscina filename). Runs one batch: decodes each message, runs the handlers
 * concurrently (synchronous ones naturally one after the other), and posts each outcome on the batch
 * port as soon as it is known. Handler modules are imported once per thread and cached.
 *
 * Owned by one worker thread; the main thread talks to it only through protocol.ts messages.
 */
import { workerData } from 'node:worker_threads';
import { decode, encode } from './codec.ts';
import { TaskmillError } from './errors.ts';
import {
  serializeError,
  type AbortMessage,
  type BatchRequest,
  type TaskEnvelope,
  type WorkerEvent,
  type WorkerInit,
} from './protocol.ts';
import { newTask, type NewTask } from './schedule-context.ts';
import type { FailureHook, TaskContext, TaskHandler } from './task-context.ts';
import { isTaskDefinition } from './task-definition.ts';

interface LoadedModule {
  handler: TaskHandler;
  onFailure?: FailureHook;
}

const init = workerData as WorkerInit;
const modules = new Map<string, Promise<LoadedModule>>();

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

export default async function runBatch({ tasks, messages, port }: BatchRequest): Promise<number> {
  const controllers = new Map<string, AbortController>();
  port.on('message', (msg: AbortMessage) => {
    const reason = msg.reason === 'timeout' ? 'TASK_TIMEOUT' : 'TASK_CANCELLED';
    controllers.get(msg.id)?.abort(new TaskmillError(reason, `Task ${msg.id} was aborted (${msg.reason}).`));
  });
  const bytes = new Uint8Array(messages);
  try {
    await Promise.all(
      tasks.map((task) => {
        const controller = new AbortController();
        controllers.set(task.id, controller);
        return runOne(task, bytes, controller.signal).then((event) => {
          controllers.delete(task.id);
          port.postMessage(event);
        });
      }),
    );
  } finally {
    port.close();
  }
  return tasks.length;
}

async function runOne(task: TaskEnvelope, bytes: Uint8Array, signal: AbortSignal): Promise<WorkerEvent> {
  const children: NewTask[] = [];
  const ctx: TaskContext = {
    taskId: task.id,
    name: task.name,
    attempt: task.attempt + 1,
    workflowId: task.workflowId,
    affinityGroup: task.affinityGroup,
    affinity: task.affinity,
    parentId: task.parentId,
    signal,
    schedule(def, scheduleCtx) {
      if (!isTaskDefinition(def)) {
        throw new TaskmillError(
          'INVALID_ARGUMENT',
          'ctx.schedule() needs a definition made by defineTask().',
        );
      }
      const child = newTask(def, scheduleCtx, {
        parentId: task.id,
        workflowId: task.workflowId,
        workflowCreatedAt: task.workflowCreatedAt,
        affinityGroup: task.affinityGroup,
        affinity: task.affinity,
      });
      children.push(child);
      return child.id;
    },
  };
  let message: unknown;
  let mod: LoadedModule | undefined;
  try {
    message = decode(bytes.subarray(task.offset, task.offset + task.length));
    mod = await load(task.name);
    const value = await mod.handler(message, ctx);
    if (signal.aborted) throw signal.reason;
    return {
      type: 'done',
      id: task.id,
      result: value === undefined ? null : encode(value, 'result'),
      children,
    };
  } catch (error) {
    let stopRetry = error instanceof TaskmillError && error.code === 'TASK_CANCELLED';
    try {
      if (mod?.onFailure?.(error, message, ctx) === false) stopRetry = true;
    } catch {
      // A throwing onFailure hook does not change the outcome: the original error is reported.
    }
    return { type: 'failed', id: task.id, error: serializeError(error), stopRetry };
  }
}
