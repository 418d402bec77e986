/**
 * The steps every flat run shares: warm the nodes up (threads started, handlers loaded, JIT warm),
 * pre-insert tasks while planning is paused, and wait for a number of completions.
 *
 * Pausing holds the planner's advisory lock (PLANNER_LOCK_KEY) on a harness connection: a planning pass
 * that cannot take it does nothing, so inserted tasks stay ready until `resume()` releases it and wakes
 * the planner. The measured window then starts with warm nodes and a full table, without the node
 * start-up cost a long-lived deployment never pays.
 */
import type pg from 'pg';
import { PLANNER_LOCK_KEY } from '../../planner/planner.ts';
import { TaskmillClient, type ScheduleContext, type TaskDefinition } from '../../index.ts';
import { newTask } from '../../task/schedule-context.ts';
import { PLANNER_CHANNEL } from '../../store/channels.ts';
import type { BenchCluster } from '../cluster.ts';
import { Progress } from '../../log/progress.ts';

/** Rows per insert statement when pre-inserting. */
const INSERT_CHUNK = 5_000;
/** A run that completes nothing for this long has failed. */
export const STALL_TIMEOUT_MS = 60_000;

/** Inserts `count` tasks in multi-row statements, without waking the planner. */
export async function preInsert<M>(
  pool: pg.Pool,
  def: TaskDefinition<M>,
  count: number,
  ctx: (i: number) => ScheduleContext<M> = () => ({}),
): Promise<void> {
  const client = new TaskmillClient({ pool, notify: false });
  for (let offset = 0; offset < count; offset += INSERT_CHUNK) {
    const n = Math.min(INSERT_CHUNK, count - offset);
    await client.insert(Array.from({ length: n }, (_, i) => newTask(def, ctx(offset + i))));
  }
}

/** Planning paused until resume(): see the header. */
export interface PlanningPause {
  resume(): Promise<void>;
}

export async function pausePlanning(pool: pg.Pool): Promise<PlanningPause> {
  const client = await pool.connect();
  try {
    await client.query('select pg_advisory_lock($1)', [PLANNER_LOCK_KEY]);
  } catch (error) {
    client.release();
    throw error;
  }
  let released = false;
  return {
    async resume() {
      if (released) return;
      released = true;
      try {
        await client.query(`select pg_advisory_unlock($1), pg_notify($2, '')`, [
          PLANNER_LOCK_KEY,
          PLANNER_CHANNEL,
        ]);
      } finally {
        client.release();
      }
    },
  };
}

/**
 * Resolves when the cluster's completed total reaches `target`; rejects on a node error, a failed
 * or dead-lettered task, or no progress for STALL_TIMEOUT_MS.
 */
export function waitForCompleted(
  cluster: BenchCluster,
  target: number,
  progress?: { label: string; base: number; total: number },
): Promise<void> {
  const bar = progress ? new Progress({ label: progress.label, total: progress.total }) : undefined;
  return new Promise((resolve, reject) => {
    let lastProgress = performance.now();
    const stall = setInterval(() => {
      if (performance.now() - lastProgress > STALL_TIMEOUT_MS) {
        finish(
          new Error(
            `no task completed for ${STALL_TIMEOUT_MS / 1000} s (${cluster.totals.completed} of ${target} done)`,
          ),
        );
      }
    }, 1_000);
    const onFlush = () => {
      lastProgress = performance.now();
      const t = cluster.totals;
      if (t.failed + t.deadLettered + t.retried > 0) {
        finish(
          new Error(
            `tasks failed: ${t.failed} failed, ${t.deadLettered} dead-lettered, ${t.retried} retried`,
          ),
        );
        return;
      }
      bar?.update(t.completed - (progress?.base ?? 0));
      if (t.completed >= target) finish();
    };
    const onError = (error: unknown) => finish(error instanceof Error ? error : new Error(String(error)));
    const finish = (error?: Error) => {
      clearInterval(stall);
      cluster.off('flush', onFlush);
      cluster.off('error', onError);
      bar?.end();
      if (error) reject(error);
      else resolve();
    };
    cluster.on('flush', onFlush);
    cluster.on('error', onError);
    onFlush();
  });
}

/** Runs `count` tasks through the cluster before measuring, so threads and handlers are warm. */
export async function warmUp<M>(
  cluster: BenchCluster,
  pool: pg.Pool,
  def: TaskDefinition<M>,
  count: number,
  ctx?: (i: number) => ScheduleContext<M>,
): Promise<void> {
  if (count <= 0) return;
  const target = cluster.totals.completed + count;
  await preInsert(pool, def, count, ctx);
  await pool.query(`select pg_notify($1, '')`, [PLANNER_CHANNEL]);
  await waitForCompleted(cluster, target);
}
