/** CHILD1 (at-least-once): upserts c1:i, messages JOIN1, L2 CHILD2 tasks and one JOIN2 over them. */
import type { TaskContext } from '../../index.ts';
import { child2, join1, join2, type Child1Message } from './definitions.ts';
import { expected, perfPool, UPSERT_RESULT } from './store.ts';
import { doWork } from './work.ts';

export default async function child1Task(m: Child1Message, ctx: TaskContext): Promise<number> {
  const startedAt = performance.timeOrigin + performance.now();
  await doWork(m.work);
  const value = expected.c1(m.p, m.i);
  if (!m.runtimeOnly) await perfPool().query(UPSERT_RESULT, [m.key, `c1:${m.i}`, m.p, value]);
  ctx.sendToJoin(join1, { k: 'c1', i: m.i, v: value });
  const ids: string[] = [];
  for (let j = 0; j < m.l2; j++) ids.push(ctx.schedule(child2, { message: { ...m, j } }));
  ctx.scheduleJoin(join2, { message: m }, ids);
  return startedAt;
}
