/**
 * BullMQ 6.7.0 on its first-party PostgreSQL backend (tables in schema `bullmq`, claims with FOR
 * UPDATE SKIP LOCKED, a LISTEN connection for wake-ups) and, when redis-server is installed, on Redis.
 * Both with the settings its docs give for throughput: high concurrency, removeOnComplete, no stalled
 * checks; jobs pre-inserted with addBulk. The worker is created and connected before the clock starts
 * (autorun: false), and run() starts it.
 */
import { Queue, Worker, createPostgresBackend, runMigrations } from 'bullmq';
import { analyze } from '../bench-database.ts';
import { preciseNow, summarizeLatencies } from '../latency-histogram.ts';
import { burnDownFigures, counter, deferred, pollUntil, type Peer } from './peer.ts';
import { redisServerPath, startRedisServer, type RedisServer } from './redis-server.ts';

const INSERT_CHUNK = 1_000;
const JOB_OPTS = { removeOnComplete: true, removeOnFail: true };

type Backend = 'postgres' | 'redis';

/** Queue and Worker for either backend, with BullMQ's constructors typed once here. */
function factory(backend: Backend, url: string, redis: RedisServer | undefined, poolMax: number) {
  if (backend === 'postgres') {
    const connection = { connectionString: url, max: poolMax };
    return {
      queue: (name: string) =>
        new Queue(name, { connection: { connectionString: url, max: 4 } }, createPostgresBackend),
      worker: (name: string, fn: () => Promise<void>, concurrency: number) =>
        new Worker(
          name,
          fn,
          { connection, concurrency, autorun: false, removeOnComplete: { count: 0 }, skipStalledCheck: true },
          createPostgresBackend,
        ),
    };
  }
  const connection = { host: redis!.host, port: redis!.port };
  return {
    queue: (name: string) => new Queue(name, { connection }),
    worker: (name: string, fn: () => Promise<void>, concurrency: number) =>
      new Worker(name, fn, {
        connection,
        concurrency,
        autorun: false,
        removeOnComplete: { count: 0 },
        skipStalledCheck: true,
      }),
  };
}

export function bullmqPeer(backend: Backend, concurrency: number): Peer {
  const onRedis = backend === 'redis';
  return {
    id: onRedis ? 'bullmq-redis' : 'bullmq-postgres',
    label: `BullMQ on ${onRedis ? 'Redis' : 'PostgreSQL'} (concurrency ${concurrency})`,
    settings: { backend, concurrency, removeOnComplete: true, skipStalledCheck: true },
    notes: onRedis ? ['Redis, not PostgreSQL: a different durability model, shown for reference'] : undefined,
    unavailable: () => (onRedis && !redisServerPath() ? 'redis-server is not installed' : undefined),
    async burnDown(db, tasks) {
      const redis = onRedis ? await startRedisServer() : undefined;
      try {
        if (!onRedis) await migrate(db.pool);
        const make = factory(backend, db.url, redis, concurrency + 4);
        const queue = make.queue('noop');
        const handled = counter(tasks);
        let handlersAt: number | undefined;
        void handled.done.then(() => (handlersAt = performance.now()));
        const worker = make.worker('noop', async () => handled.hit(), concurrency);
        worker.on('error', (error) => console.error('BullMQ worker error:', error));
        try {
          const t = performance.now();
          for (let offset = 0; offset < tasks; offset += INSERT_CHUNK) {
            const n = Math.min(INSERT_CHUNK, tasks - offset);
            await queue.addBulk(
              Array.from({ length: n }, () => ({ name: 'noop', data: {}, opts: JOB_OPTS })),
            );
          }
          const insertSeconds = (performance.now() - t) / 1000;
          if (!onRedis) await analyze(db.pool);
          await worker.waitUntilReady();
          const t0 = performance.now();
          void worker.run();
          await handled.done;
          await pollUntil(async () => (await queue.count()) + (await queue.getActiveCount()) === 0);
          return burnDownFigures(tasks, t0, handlersAt, performance.now(), insertSeconds);
        } finally {
          await worker.close();
          await queue.close();
        }
      } finally {
        await redis?.stop();
      }
    },
    async latency(db, samples) {
      const redis = onRedis ? await startRedisServer() : undefined;
      try {
        if (!onRedis) await migrate(db.pool);
        const make = factory(backend, db.url, redis, 5);
        const queue = make.queue('lat');
        let started = deferred<number>();
        const worker = make.worker('lat', async () => started.resolve(preciseNow()), 1);
        worker.on('error', (error) => console.error('BullMQ worker error:', error));
        try {
          await worker.waitUntilReady();
          void worker.run();
          const values: number[] = [];
          for (let i = 0; i < samples + 10; i++) {
            started = deferred<number>();
            const t = preciseNow();
            await queue.add('lat', { i }, JOB_OPTS);
            const s = await started.promise;
            if (i >= 10) values.push(s - t);
          }
          return summarizeLatencies(values);
        } finally {
          await worker.close();
          await queue.close();
        }
      } finally {
        await redis?.stop();
      }
    },
  };
}

async function migrate(pool: import('pg').Pool): Promise<void> {
  const client = await pool.connect();
  try {
    await runMigrations(client);
  } finally {
    client.release();
  }
}
