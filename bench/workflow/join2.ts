/** JOIN2 (exactly-once): sums what its CHILD2 tasks sent, upserts j2:i, messages JOIN1. */
import type { TaskContext } from '../../index.ts';
import { join1, type Child1Message } from './definitions.ts';
import { UPSERT_RESULT } from './store.ts';
import { doWork } from './work.ts';

export default async function join2Task(m: Child1Message, ctx: TaskContext): Promise<number> {
  const startedAt = performance.timeOrigin + performance.now();
  await doWork(m.work);
  const inputs = ctx.joinMessages as { j: number; v: number }[];
  const sum = inputs.some((x) => x.v < 0) ? -1 : inputs.reduce((s, x) => s + x.v, 0);
  if (!m.runtimeOnly) await ctx.db!.query(UPSERT_RESULT, [m.key, `j2:${m.i}`, m.p, sum]);
  ctx.sendToJoin(join1, { k: 'j2', i: m.i, v: sum, n: inputs.length });
  return startedAt;
}
