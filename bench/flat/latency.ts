/**
 * Schedule-to-start latency on an idle node: tasks scheduled one at a time, each after the previous
 * one completed. The handler returns its start time (wall clock with sub-millisecond precision,
 * comparable across threads and processes of one machine); the harness notes the time just before
 * `schedule()` and when the completion flush arrives (end-to-end).
 */
import type pg from 'pg';
import { decode, TaskmillClient } from '../../index.ts';
import { BenchCluster } from '../cluster.ts';
import { preciseNow, summarizeLatencies, type LatencySummary } from '../latency-histogram.ts';
import type { NodeKnobs } from '../node-options.ts';
import { Progress } from '../../log/progress.ts';
import { benchStamp } from '../tasks/definitions.ts';
import { FLAT_TASKS } from './burn-down.ts';
import { waitForCompleted } from './measure.ts';

export interface LatencyOptions {
  url: string;
  pool: pg.Pool;
  samples: number;
  nodes: number;
  spawn: boolean;
  knobs: NodeKnobs;
  /** Sequential tasks run first and not measured. */
  warmup?: number;
}

export interface LatencyFigures {
  samples: number;
  /** schedule() called -> handler started. */
  scheduleToStart: LatencySummary;
  /** schedule() called -> completion committed and reported. */
  endToEnd: LatencySummary;
}

export async function runLatency(o: LatencyOptions): Promise<LatencyFigures> {
  const cluster = await BenchCluster.start({
    url: o.url,
    nodes: o.nodes,
    spawn: o.spawn,
    knobs: o.knobs,
    tasks: FLAT_TASKS,
  });
  try {
    const client = new TaskmillClient({ pool: o.pool });
    const one = async () => {
      const target = cluster.totals.completed + 1;
      const scheduledAt = preciseNow();
      const id = await client.schedule(benchStamp);
      await waitForCompleted(cluster, target);
      return { id, scheduledAt, endedAt: preciseNow() };
    };
    for (let i = 0; i < (o.warmup ?? 20); i++) await one();
    const runs: { id: string; scheduledAt: number; endedAt: number }[] = [];
    const bar = new Progress({ label: 'latency', total: o.samples });
    for (let i = 0; i < o.samples; i++) {
      runs.push(await one());
      bar.update(i + 1);
    }
    bar.end();
    const { rows } = await o.pool.query<{ id: string; result: Buffer }>(
      `select id, result from tm_history where id = any($1::uuid[]) and state = 'completed'`,
      [runs.map((r) => r.id)],
    );
    if (rows.length !== runs.length)
      throw new Error(`${runs.length - rows.length} latency tasks missing from history`);
    const startedAt = new Map(rows.map((r) => [r.id, decode<number>(r.result)]));
    return {
      samples: runs.length,
      scheduleToStart: summarizeLatencies(runs.map((r) => startedAt.get(r.id)! - r.scheduledAt)),
      endToEnd: summarizeLatencies(runs.map((r) => r.endedAt - r.scheduledAt)),
    };
  } finally {
    await cluster.stop();
  }
}
