// resize-image.ts: runs in a worker thread; its return value is the task's result
import type { TaskContext } from '../index.ts';

export default async function resizeImage(message: { url: string; width: number }, ctx: TaskContext) {
  ctx.signal.throwIfAborted();
  return { url: message.url, width: message.width };
}
