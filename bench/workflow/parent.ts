/** PARENT (exactly-once): L1 CHILD1 tasks and one JOIN1 over them. */
import type { TaskContext } from '../../index.ts';
import { child1, join1, type PipelineMessage } from './definitions.ts';
import { doWork } from './work.ts';

export default async function parentTask(m: PipelineMessage, ctx: TaskContext): Promise<number> {
  const startedAt = performance.timeOrigin + performance.now();
  await doWork(m.work);
  const ids: string[] = [];
  for (let i = 0; i < m.l1; i++) ids.push(ctx.schedule(child1, { message: { ...m, i } }));
  ctx.scheduleJoin(join1, { message: m }, ids);
  return startedAt;
}
