/**
 * Enqueue over HTTP: accepted tasks per second and request latency of POST /api/tasks.
 * autocannon POSTs tasks to the HTTP API on 127.0.0.1 for a bounded duration.
 * One process runs the API server on its main thread and autocannon in a worker thread, against a
 * fresh database (DATABASE_URL, else the embedded server) where a node registered the `bench-noop`
 * task. By default nothing consumes the tasks, so the figure is the enqueue path alone; `--consume`
 * keeps a node running them meanwhile. Every accepted task is checked in the database afterwards.
 * Prints one summary line and writes results/http-enqueue-<time>.json.
 */
import { createRequire } from 'node:module';
import { Command } from 'commander';
import { startHttpServer } from '../http/server.ts';
import { createLogger } from '../log/logger.ts';
import { startNode, type TaskmillNode } from '../index.ts';
import { createBenchDatabase, openBenchServer } from './bench-database.ts';
import { finishRun, postgresInfo, round, startRun, writeResult } from './result-file.ts';
import { benchNoop } from './tasks/definitions.ts';

interface Histogram {
  average: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}
interface AutocannonResult {
  duration: number;
  requests: Histogram & { total: number };
  latency: Histogram;
  errors: number;
  timeouts: number;
  non2xx: number;
  statusCodeStats: Record<string, { count: number }>;
}
type Autocannon = (options: Record<string, unknown>) => Promise<AutocannonResult>;
// autocannon ships no type declarations; the fields used are listed above.
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

const MAX_DURATION_S = 600;

interface Options {
  duration: number;
  connections: number;
  batch: number;
  consume: boolean;
  outDir?: string;
  save: boolean;
}

function parseArgs(argv: string[]): Options {
  const int = (name: string, min: number, max: number) => (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new Error(`${name} must be an integer in [${min}, ${max}]`);
    return n;
  };
  return new Command('http-enqueue')
    .description('Enqueue tasks through the HTTP API with autocannon')
    .option(
      '--duration <s>',
      `seconds of load (at most ${MAX_DURATION_S})`,
      int('--duration', 1, MAX_DURATION_S),
      10,
    )
    .option('--connections <n>', 'concurrent HTTP connections', int('--connections', 1, 1000), 8)
    .option(
      '--batch <n>',
      'tasks per request (1: object body; more: array body)',
      int('--batch', 1, 10_000),
      1,
    )
    .option('--consume', 'run a node that executes the tasks during the run', false)
    .option('--out-dir <dir>', 'where the result file goes (default results/)')
    .option('--no-save', 'do not write a result file')
    .parse(argv, { from: 'user' })
    .opts<Options>();
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const run = startRun('http-enqueue');
  const server = await openBenchServer();
  const db = await createBenchDatabase(server.url, 'http_enqueue');
  let node: TaskmillNode | undefined;
  const http = await startHttpServer({ connectionString: db.url, port: 0, log: createLogger('warn') });
  try {
    // A node registers bench-noop (scheduling by name needs a registered definition).
    node = await startNode({ connectionString: db.url, tasks: [benchNoop], logLevel: 'warn', threads: 1 });
    if (!o.consume) {
      await node.stop();
      node = undefined;
    }
    const item = { name: benchNoop.name, message: { n: 1 } };
    const body = JSON.stringify(o.batch === 1 ? item : Array.from({ length: o.batch }, () => item));
    const result = await autocannon({
      url: `${http.url}/api/tasks`,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
      connections: o.connections,
      duration: o.duration,
      workers: 1,
    });
    await node?.stop();
    node = undefined;

    const accepted = result.statusCodeStats['201']?.count ?? 0;
    const { rows } = await db.pool.query<{ n: number }>(
      `select ((select count(*) from tm_tasks) + (select count(*) from tm_history)
        + (select count(*) from tm_dead_letters))::int as n`,
    );
    const stored = rows[0].n;
    const figures = {
      requests: accepted,
      tasks: accepted * o.batch,
      stored,
      requestsPerSec: accepted / result.duration,
      tasksPerSec: (accepted * o.batch) / result.duration,
      latencyMs: {
        mean: result.latency.average,
        p50: result.latency.p50,
        p90: result.latency.p90,
        p99: result.latency.p99,
        max: result.latency.max,
      },
      non2xx: result.non2xx,
      errors: result.errors,
      timeouts: result.timeouts,
      durationSeconds: result.duration,
    };
    // Requests in flight when the load stopped may commit without being counted: stored >= accepted.
    const missing = Math.max(0, figures.tasks - stored);
    const summary =
      `http-enqueue: ${round(figures.tasksPerSec, 0)} tasks/s (${round(figures.requestsPerSec, 0)} requests/s, ` +
      `batch ${o.batch}, ${o.connections} connections, ${round(result.duration, 1)} s), latency p50 ` +
      `${figures.latencyMs.p50} ms p99 ${figures.latencyMs.p99} ms, ${result.non2xx} non-2xx, ${result.errors} errors, ` +
      `${stored}/${figures.tasks} tasks stored`;
    console.log(summary);
    const record = finishRun(run, {
      summary,
      postgres: await postgresInfo(db.pool),
      params: { duration: o.duration, connections: o.connections, batch: o.batch, consume: o.consume },
      figures,
      headline: { name: 'enqueue throughput', value: round(figures.tasksPerSec, 0), unit: 'tasks/s' },
      table: {
        Bench: 'http-enqueue',
        'Tasks/s': round(figures.tasksPerSec, 0),
        'Requests/s': round(figures.requestsPerSec, 0),
        Batch: o.batch,
        Connections: o.connections,
        'p50 ms': figures.latencyMs.p50,
        'p99 ms': figures.latencyMs.p99,
        Errors: result.errors + result.non2xx,
      },
      notes: o.consume ? ['a node consumed the tasks during the run'] : [],
    });
    if (o.save) console.log(`result: ${writeResult(record, o.outDir)}`);
    if (missing > 0 || result.errors > 0 || result.non2xx > 0) {
      throw new Error(
        `${missing} accepted tasks missing, ${result.errors} errors, ${result.non2xx} non-2xx responses`,
      );
    }
  } finally {
    await node?.stop();
    await http.close();
    await db.drop();
    await server.stop();
  }
}

main().catch((error) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
