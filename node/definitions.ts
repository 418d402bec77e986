/**
 * The task definitions a node runs, made known to the cluster as the node starts: their options (for
 * dead-node recovery and operators) and cluster limits in tm_task_defs, and their cron schedules.
 */
import type pg from 'pg';
import { registerCronTasks } from '../planner/cron.ts';
import { registerDefinitions } from '../store/task-defs.ts';
import { definitionRecord, type TaskDefinition } from '../task/task-definition.ts';

export async function registerTaskDefinitions(db: pg.Pool, defs: TaskDefinition[]): Promise<void> {
  await registerDefinitions(
    db,
    defs.map((d) => ({
      name: d.name,
      maxParallelInCluster: d.maxParallelInCluster ?? null,
      options: definitionRecord(d),
    })),
  );
  await registerCronTasks(db, defs);
}
