/** The task duration of the workload, really spent: CPU work (calibrated iterations) or a sleep. */
import { burn } from '../tasks/cpu-work.ts';

/** The workload's shape as the benches that run it take it on their command line. */
export interface WorkflowShapeCli {
  pipelines: number;
  affinities?: number;
  l1: number;
  l2: number;
  taskDurationMs: number;
  taskWork: 'cpu' | 'sleep';
}

export type Work = { mode: 'cpu'; iterations: number } | { mode: 'sleep'; ms: number } | { mode: 'none' };

export async function doWork(work: Work): Promise<void> {
  if (work.mode === 'cpu') burn(work.iterations);
  else if (work.mode === 'sleep' && work.ms > 0) await new Promise((r) => setTimeout(r, work.ms));
}
