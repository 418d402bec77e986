/**
 * Fairness across concurrency keys (docs/flow-control.md): one key floods the queue with `flood`
 * pre-inserted tasks, then `samples` tasks of `keys` other keys trickle in, one every `intervalMs`,
 * while the flood drains. Measured twice, with the planner's fairness on and off (a fresh cluster
 * each): the trickling tasks' schedule-to-start latency, and how long the flood took. With fairness a
 * trickling task waits for about one planning pass; without, for the flood ahead of it.
 */
import type pg from 'pg';
import { decode, TaskmillClient } from '../../index.ts';
import { BenchCluster } from '../cluster.ts';
import { preciseNow, summarizeLatencies, type LatencySummary } from '../latency-histogram.ts';
import type { NodeKnobs } from '../node-options.ts';
import { benchStamp } from '../tasks/definitions.ts';
import { FLAT_TASKS } from './burn-down.ts';
import { pausePlanning, preInsert, waitForCompleted, warmUp } from './measure.ts';

export interface FairnessOptions {
  url: string;
  pool: pg.Pool;
  nodes: number;
  spawn: boolean;
  knobs: NodeKnobs;
  /** Tasks of the flooding key, queued before the trickle starts. */
  flood: number;
  /** Trickling tasks, round-robin over `keys` keys. */
  samples: number;
  keys: number;
  intervalMs: number;
}

export interface FairnessRun {
  fairness: boolean;
  /** Trickling tasks: schedule() called -> handler started. */
  trickleStart: LatencySummary;
  /** Resume of planning -> the last flood task's completion. */
  floodSeconds: number;
}

export async function runFairness(o: FairnessOptions): Promise<{ on: FairnessRun; off: FairnessRun }> {
  const on = await runOnce(o, true);
  const off = await runOnce(o, false);
  return { on, off };
}

async function runOnce(o: FairnessOptions, fairness: boolean): Promise<FairnessRun> {
  const planner = o.knobs.planner === false ? {} : (o.knobs.planner ?? {});
  const cluster = await BenchCluster.start({
    url: o.url,
    nodes: o.nodes,
    spawn: o.spawn,
    knobs: { ...o.knobs, planner: { ...planner, fairness } },
    tasks: FLAT_TASKS,
  });
  try {
    await warmUp(cluster, o.pool, benchStamp, 50);
    const base = cluster.totals.completed;
    const pause = await pausePlanning(o.pool);
    try {
      await preInsert(o.pool, benchStamp, o.flood, () => ({ concurrencyKey: 'flood' }));
    } finally {
      await pause.resume();
    }
    const started = preciseNow();
    const client = new TaskmillClient({ pool: o.pool });
    const trickle: { id: string; scheduledAt: number }[] = [];
    for (let i = 0; i < o.samples; i++) {
      const scheduledAt = preciseNow();
      const id = await client.schedule(benchStamp, { concurrencyKey: `trickle:${i % o.keys}` });
      trickle.push({ id, scheduledAt });
      const next = started + (i + 1) * o.intervalMs;
      await new Promise((r) => setTimeout(r, Math.max(0, next - preciseNow())));
    }
    await waitForCompleted(cluster, base + o.flood + o.samples);
    const { rows } = await o.pool.query<{ id: string; result: Buffer }>(
      `select id, result from tm_history where id = any($1::uuid[]) and state = 'completed'`,
      [trickle.map((t) => t.id)],
    );
    const { rows: last } = await o.pool.query<{ ms: number }>(
      `select extract(epoch from max(finished_at)) * 1000 as ms from tm_history where name = $1`,
      [benchStamp.name],
    );
    const startedAt = new Map(rows.map((r) => [r.id, decode<number>(r.result)]));
    if (startedAt.size !== trickle.length) throw new Error('trickling tasks missing from history');
    return {
      fairness,
      trickleStart: summarizeLatencies(trickle.map((t) => startedAt.get(t.id)! - t.scheduledAt)),
      floodSeconds: (Number(last[0].ms) - started) / 1000,
    };
  } finally {
    await cluster.stop();
  }
}
