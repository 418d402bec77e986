/**
 * pg-boss 10.4.2 (the newest line that runs on Node 20). v10 has no LISTEN/NOTIFY and no per-worker
 * concurrency: each work() call is one polling loop fetching up to batchSize jobs per poll, with a
 * 0.5 s minimum poll interval, so the fast configuration is several loops with large batches, and its
 * latency is bounded below by the poll interval (labelled "polling, no NOTIFY").
 */
import PgBoss from 'pg-boss';
import { analyze } from '../bench-database.ts';
import { preciseNow, summarizeLatencies } from '../latency-histogram.ts';
import { burnDownFigures, counter, deferred, pollUntil, type Peer } from './peer.ts';

const INSERT_CHUNK = 10_000;
const MIN_POLL_SECONDS = 0.5;

export function pgBossPeer(options: { loops: number; batchSize: number }): Peer {
  const open = async (url: string) => {
    const boss = new PgBoss({
      connectionString: url,
      max: options.loops + 4,
      supervise: false,
      schedule: false,
    });
    boss.on('error', (error) => console.error('pg-boss error:', error));
    await boss.start();
    return boss;
  };
  return {
    id: 'pg-boss',
    label: `pg-boss (${options.loops} work loops x batch ${options.batchSize}, polling, no NOTIFY)`,
    settings: { ...options, pollingIntervalSeconds: MIN_POLL_SECONDS },
    maxLatencySamples: 50,
    notes: ['latency is one 0.5 s poll interval by design (pg-boss 10 has no NOTIFY): at most 50 samples'],
    async burnDown(db, tasks) {
      const boss = await open(db.url);
      try {
        await boss.createQueue('noop');
        const t = performance.now();
        for (let offset = 0; offset < tasks; offset += INSERT_CHUNK) {
          const n = Math.min(INSERT_CHUNK, tasks - offset);
          await boss.insert(Array.from({ length: n }, () => ({ name: 'noop', data: {} })));
        }
        const insertSeconds = (performance.now() - t) / 1000;
        await analyze(db.pool);
        const handled = counter(tasks);
        let handlersAt: number | undefined;
        void handled.done.then(() => (handlersAt = performance.now()));
        const t0 = performance.now();
        for (let i = 0; i < options.loops; i++) {
          await boss.work(
            'noop',
            { batchSize: options.batchSize, pollingIntervalSeconds: MIN_POLL_SECONDS, priority: false },
            async (jobs) => {
              for (let j = 0; j < jobs.length; j++) handled.hit();
            },
          );
        }
        await handled.done;
        await pollUntil(async () => (await boss.getQueueSize('noop', { before: 'completed' })) === 0);
        const figures = burnDownFigures(tasks, t0, handlersAt, performance.now(), insertSeconds);
        await boss.offWork('noop');
        return figures;
      } finally {
        await boss.stop({ graceful: false, wait: true });
      }
    },
    async latency(db, samples) {
      const boss = await open(db.url);
      try {
        await boss.createQueue('lat');
        let started = deferred<number>();
        await boss.work('lat', { batchSize: 1, pollingIntervalSeconds: MIN_POLL_SECONDS }, async () => {
          started.resolve(preciseNow());
        });
        const values: number[] = [];
        for (let i = 0; i < samples + 2; i++) {
          started = deferred<number>();
          const t = preciseNow();
          await boss.send('lat', { i });
          const s = await started.promise;
          if (i >= 2) values.push(s - t);
        }
        await boss.offWork('lat');
        return summarizeLatencies(values);
      } finally {
        await boss.stop({ graceful: false, wait: true });
      }
    },
  };
}
