/**
 * JOIN1 (exactly-once): checks every message of the pipeline (L1 c1, L1 x L2 c2, L1 j2, each with the
 * expected number) and every row of its affinity (all written by this pipeline, with the expected
 * numbers), then marks the pipeline DONE or FAILED with the first problem found.
 */
import type { TaskContext } from '../../index.ts';
import type { PipelineMessage } from './definitions.ts';
import { expected } from './store.ts';
import { doWork } from './work.ts';

type Input =
  | { k: 'c1'; i: number; v: number }
  | { k: 'c2'; i: number; j: number; v: number }
  | { k: 'j2'; i: number; v: number; n: number };

export default async function join1Task(m: PipelineMessage, ctx: TaskContext): Promise<number> {
  const startedAt = performance.timeOrigin + performance.now();
  await doWork(m.work);
  const db = ctx.db!;
  const problems: string[] = [];
  const want = new Map<string, number>();
  for (let i = 0; i < m.l1; i++) {
    want.set(`c1:${i}`, expected.c1(m.p, i));
    want.set(`j2:${i}`, expected.j2(m.p, i, m.l2));
    for (let j = 0; j < m.l2; j++) want.set(`c2:${i}:${j}`, expected.c2(m.p, i, j));
  }
  const seen = new Map<string, number>();
  for (const x of ctx.joinMessages as Input[]) {
    const node = x.k === 'c2' ? `c2:${x.i}:${x.j}` : `${x.k}:${x.i}`;
    if (seen.has(node)) problems.push(`message ${node} twice`);
    seen.set(node, x.v);
    if (x.k === 'j2' && x.n !== m.l2) problems.push(`JOIN2 ${x.i} summed ${x.n} inputs, not ${m.l2}`);
  }
  for (const [node, value] of want) {
    if (!seen.has(node)) problems.push(`no message for ${node}`);
    else if (seen.get(node) !== value)
      problems.push(`message ${node} = ${seen.get(node)}, expected ${value}`);
  }
  if (!m.runtimeOnly) {
    const { rows } = await db.query<{ node: string; pipeline: number; value: string }>(
      'select node, pipeline, value from perf_results where affinity = $1',
      [m.key],
    );
    for (const r of rows) {
      if (r.pipeline !== m.p)
        problems.push(`row ${r.node} written by pipeline ${r.pipeline} while ${m.p} ran`);
      else if (Number(r.value) !== want.get(r.node))
        problems.push(`row ${r.node} = ${r.value}, expected ${want.get(r.node)}`);
    }
    if (rows.length !== want.size)
      problems.push(`${rows.length} rows for the affinity, expected ${want.size}`);
  }
  await db.query(`insert into perf_pipelines (pipeline, affinity, state, detail) values ($1, $2, $3, $4)`, [
    m.p,
    m.key,
    problems.length === 0 ? 'DONE' : 'FAILED',
    problems.slice(0, 5).join('; ') || null,
  ]);
  return startedAt;
}
