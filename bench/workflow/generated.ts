/** GENERATED: opens one workflow per pipeline, with affinity `a{p mod A}`, by scheduling its PARENT. */
import { randomUUID } from 'node:crypto';
import type { TaskContext } from '../../index.ts';
import { parent, type GeneratedMessage } from './definitions.ts';

export default function generatedTask(m: GeneratedMessage, ctx: TaskContext): number {
  const startedAt = performance.timeOrigin + performance.now();
  for (let p = 0; p < m.pipelines; p++) {
    const key = `a${p % m.affinities}`;
    const affinity = m.breakAffinity ? {} : { affinityGroup: 'perf', affinity: key };
    ctx.schedule(parent, {
      workflowId: randomUUID(),
      ...affinity,
      message: { p, key, l1: m.l1, l2: m.l2, work: m.work, runtimeOnly: m.runtimeOnly },
    });
  }
  return startedAt;
}
