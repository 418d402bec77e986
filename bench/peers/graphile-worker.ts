/**
 * graphile-worker 0.17.3, in two configurations: its documented fastest (24 concurrent jobs, a local
 * queue of 500 jobs, batched completion) and the same concurrency without local queue and batching.
 * Jobs are pre-inserted with one add_jobs() statement per 10,000 (the fastest insert path), the runner
 * is started when the clock starts (its start-up is a pool, a migration check and a LISTEN).
 */
import { Logger, makeWorkerUtils, run, type RunnerOptions } from 'graphile-worker';
import { analyze } from '../bench-database.ts';
import { preciseNow, summarizeLatencies } from '../latency-histogram.ts';
import { burnDownFigures, counter, deferred, pollUntil, type Peer } from './peer.ts';

const silent = new Logger(() => () => {});
const INSERT_CHUNK = 10_000;

interface Preset {
  id: string;
  label: string;
  concurrency: number;
  localQueue: number;
  batched: boolean;
}

export const GRAPHILE_PRESETS: Preset[] = [
  {
    id: 'graphile-worker-fast',
    label: 'graphile-worker (local queue 500, batched completion)',
    concurrency: 24,
    localQueue: 500,
    batched: true,
  },
  {
    id: 'graphile-worker',
    label: 'graphile-worker (no local queue, unbatched)',
    concurrency: 24,
    localQueue: -1,
    batched: false,
  },
];

function runnerOptions(p: Preset, url: string): RunnerOptions {
  return {
    connectionString: url,
    logger: silent,
    noHandleSignals: true,
    crontab: '',
    concurrency: p.concurrency,
    pollInterval: 2_000,
    preset: {
      worker: {
        concurrentJobs: p.concurrency,
        maxPoolSize: p.concurrency + 2,
        ...(p.localQueue > 0 ? { localQueue: { size: p.localQueue } } : {}),
        ...(p.batched ? { completeJobBatchDelay: 0, failJobBatchDelay: 0 } : {}),
      },
    },
  };
}

export function graphileWorkerPeer(p: Preset): Peer {
  return {
    id: p.id,
    label: p.label,
    settings: { concurrency: p.concurrency, localQueue: p.localQueue, batchedCompletion: p.batched },
    async burnDown(db, tasks) {
      const utils = await makeWorkerUtils({ connectionString: db.url, logger: silent });
      try {
        await utils.migrate();
        const t = performance.now();
        for (let offset = 0; offset < tasks; offset += INSERT_CHUNK) {
          await db.pool.query(
            `select graphile_worker.add_jobs(array(
               select ('noop', '{}'::json, null, null, 1, null, null, null)::graphile_worker.job_spec
               from generate_series(1, $1)))`,
            [Math.min(INSERT_CHUNK, tasks - offset)],
          );
        }
        const insertSeconds = (performance.now() - t) / 1000;
        await analyze(db.pool);
        const handled = counter(tasks);
        let handlersAt: number | undefined;
        void handled.done.then(() => (handlersAt = performance.now()));
        const t0 = performance.now();
        const runner = await run({
          ...runnerOptions(p, db.url),
          taskList: { noop: async () => handled.hit() },
        });
        try {
          await handled.done;
          await pollUntil(async () => {
            const { rows } = await db.pool.query<{ n: number }>(
              'select count(*)::int as n from graphile_worker._private_jobs',
            );
            return rows[0].n === 0;
          });
          return burnDownFigures(tasks, t0, handlersAt, performance.now(), insertSeconds);
        } finally {
          await runner.stop();
        }
      } finally {
        await utils.release();
      }
    },
    async latency(db, samples) {
      let started = deferred<number>();
      const runner = await run({
        ...runnerOptions(p, db.url),
        taskList: { lat: async () => started.resolve(preciseNow()) },
      });
      const client = await db.pool.connect();
      try {
        const values: number[] = [];
        for (let i = 0; i < samples + 10; i++) {
          started = deferred<number>();
          const t = preciseNow();
          await client.query(`select graphile_worker.add_job('lat', json_build_object('id', $1::int))`, [i]);
          const s = await started.promise;
          if (i >= 10) values.push(s - t);
        }
        return summarizeLatencies(values);
      } finally {
        client.release();
        await runner.stop();
      }
    },
  };
}
