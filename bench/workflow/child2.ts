/** CHILD2 (at-least-once): reads its parent's c1:i, upserts c2:i:j, messages JOIN2 and JOIN1. */
import type { TaskContext } from '../../index.ts';
import { join1, join2, type Child2Message } from './definitions.ts';
import { expected, perfPool, UPSERT_RESULT } from './store.ts';
import { doWork } from './work.ts';

export default async function child2Task(m: Child2Message, ctx: TaskContext): Promise<number> {
  const startedAt = performance.timeOrigin + performance.now();
  await doWork(m.work);
  const value = m.runtimeOnly || (await parentRowOk(m)) ? expected.c2(m.p, m.i, m.j) : -1;
  if (!m.runtimeOnly) await perfPool().query(UPSERT_RESULT, [m.key, `c2:${m.i}:${m.j}`, m.p, value]);
  ctx.sendToJoin(join2, { j: m.j, v: value });
  ctx.sendToJoin(join1, { k: 'c2', i: m.i, j: m.j, v: value });
  return startedAt;
}

/**
 * Whether the parent's row holds this pipeline's c1:i. Another pipeline's number there means two
 * pipelines of this affinity ran interleaved: the caller passes -1 on, JOIN1 marks the pipeline FAILED.
 */
async function parentRowOk(m: Child2Message): Promise<boolean> {
  const { rows } = await perfPool().query<{ pipeline: number; value: string }>(
    'select pipeline, value from perf_results where affinity = $1 and node = $2',
    [m.key, `c1:${m.i}`],
  );
  return rows.length === 1 && rows[0].pipeline === m.p && Number(rows[0].value) === expected.c1(m.p, m.i);
}
