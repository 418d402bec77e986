/**
 * The distributed-task-framework perf workload's tasks. Per pipeline p (affinity `a{p mod A}`):
 *   PARENT (exactly-once) -> L1 x CHILD1 + JOIN1 over them
 *   CHILD1 (at-least-once) -> upserts c1:i, messages JOIN1, L2 x CHILD2 + JOIN2 over them
 *   CHILD2 (at-least-once) -> reads c1:i, upserts c2:i:j, messages JOIN2 and JOIN1
 *   JOIN2 (exactly-once)   -> sums its inputs, upserts j2:i, messages JOIN1
 *   JOIN1 (exactly-once)   -> checks every result and message, marks the pipeline DONE or FAILED
 * plus one GENERATED task that schedules the P parents. 2 + 2 L1 + L1 L2 tasks per pipeline.
 *
 * Handlers import these constants to schedule children (only the name and mode matter there); nodes
 * get them from `workflowTasks()`, which also applies the cluster-wide limit.
 */
import { defineTask, type TaskDefinition, type TaskDefinitionInput } from '../../index.ts';
import { benchNoop } from '../tasks/definitions.ts';
import type { Work } from './work.ts';

const here = (file: string) => new URL(`./${file}`, import.meta.url);
/** A failure must fail the run (dead letter, missing completion), not be retried into success. */
const noRetry = { mode: 'OFF' } as const;

export interface Shape {
  l1: number;
  l2: number;
  work: Work;
  /**
   * The runtime-only variant: handlers do no SQL of their own (no result rows, no reads), so a run
   * measures the runtime's cost apart from the workload's. JOIN1 still writes its pipeline's row, the
   * end the harness waits for (one row per 2 + 2 L1 + L1 L2 tasks). The row-based affinity check goes
   * with the rows; the message checks stay.
   */
  runtimeOnly?: boolean;
}
export interface GeneratedMessage extends Shape {
  pipelines: number;
  affinities: number;
  /** Self-test of the checks: schedule pipelines without affinity, so sharing ones interleave. */
  breakAffinity?: boolean;
}
export interface PipelineMessage extends Shape {
  p: number;
  /** The pipeline's affinity, also the key of its result rows. */
  key: string;
}
export interface Child1Message extends PipelineMessage {
  i: number;
}
export interface Child2Message extends Child1Message {
  j: number;
}

const inputs = {
  generated: { name: 'perf-generated', handler: here('generated.ts'), retry: noRetry },
  parent: { name: 'perf-parent', handler: here('parent.ts'), retry: noRetry, guarantee: 'exactly-once' },
  child1: { name: 'perf-child1', handler: here('child1.ts'), retry: noRetry },
  child2: { name: 'perf-child2', handler: here('child2.ts'), retry: noRetry },
  join2: { name: 'perf-join2', handler: here('join2.ts'), retry: noRetry, guarantee: 'exactly-once' },
  join1: { name: 'perf-join1', handler: here('join1.ts'), retry: noRetry, guarantee: 'exactly-once' },
} satisfies Record<string, TaskDefinitionInput>;

export const generated = defineTask<GeneratedMessage>(inputs.generated);
export const parent = defineTask<PipelineMessage>(inputs.parent);
export const child1 = defineTask<Child1Message>(inputs.child1);
export const child2 = defineTask<Child2Message>(inputs.child2);
export const join2 = defineTask<Child1Message>(inputs.join2);
export const join1 = defineTask<PipelineMessage>(inputs.join1);

export const PIPELINE_TASKS = [parent, child1, child2, join2, join1] as const;

/**
 * The definitions a node runs; `maxParallelInCluster` is the framework's cluster-wide default limit,
 * `warmup` adds the flat no-op task the harness warms the nodes with.
 */
export function workflowTasks(
  args: { maxParallelInCluster?: number; warmup?: boolean } = {},
): TaskDefinition[] {
  const defs = Object.values(inputs).map((input) =>
    defineTask({ ...input, maxParallelInCluster: args.maxParallelInCluster }),
  );
  return args.warmup ? [...defs, benchNoop] : defs;
}

/** Tasks per pipeline and in a whole run. */
export function taskCounts(pipelines: number, l1: number, l2: number) {
  const perPipeline = 2 + 2 * l1 + l1 * l2;
  return {
    perPipeline,
    total: perPipeline * pipelines + 1,
    byName: {
      [generated.name]: 1,
      [parent.name]: pipelines,
      [child1.name]: pipelines * l1,
      [join2.name]: pipelines * l1,
      [child2.name]: pipelines * l1 * l2,
      [join1.name]: pipelines,
    } as Record<string, number>,
  };
}
