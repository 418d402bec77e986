import type { TaskContext } from '../runtime/index.ts';

/** The handler of `resize-image`: runs in a worker thread; its return value is the task's result. */
export default async function resizeImage(message: { url: string; width: number }, ctx: TaskContext) {
  ctx.signal.throwIfAborted();
  return { url: message.url, width: message.width, resizedBy: ctx.name, attempt: ctx.attempt };
}
