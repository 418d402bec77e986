/**
 * Micro-benchmarks (tinybench) of the hot pieces of a task's path:
 *   - msgpack encode and decode of a task message (task/codec.ts),
 *   - the per-affinity mailboxes: push, take and release 1,000 tasks (node/mailboxes.ts),
 *   - a worker-thread round trip through the dispatcher (node/dispatcher.ts): 1 task, then 100 tasks
 *     in one dispatch (micro-batched),
 *   - one planner pass over 10,000 ready rows, without and with affinity keys (planner/planner.ts),
 *   - one completion (tm_complete, store/tasks.ts completeTasks) of 10, 100 and 500 running tasks from one
 *     session, with the server process's CPU per task (read from /proc when the server runs here).
 * Prints one summary line, writes results/micro-<time>.json. `--time-ms` and `--iterations` bound each
 * benchmark; the planner passes need a database (DATABASE_URL, else the embedded server).
 */
import { randomUUID } from 'node:crypto';
import { Command } from 'commander';
import pg from 'pg';
import { Bench, type Task } from 'tinybench';
import { Planner } from '../planner/planner.ts';
import { decode, encode } from '../task/codec.ts';
import { Dispatcher } from '../node/dispatcher.ts';
import { ConnectionSlots } from '../worker/connection-slots.ts';
import type { Outcome } from '../task/outcome.ts';
import { Mailboxes } from '../node/mailboxes.ts';
import type { FetchedTask } from '../store/tasks.ts';
import { completeTasks, type Completion } from '../store/tasks.ts';
import {
  createBenchDatabase,
  openBenchServer,
  serverProcessCpuSeconds,
  type BenchDatabase,
} from './bench-database.ts';
import { preInsert } from './flat/measure.ts';
import { markdownTable } from './markdown-table.ts';
import { intArg } from './node-options.ts';
import { finishRun, postgresInfo, round, startRun, writeResult, type PostgresInfo } from './result-file.ts';
import { benchNoop } from './tasks/definitions.ts';

interface MicroCli {
  timeMs: number;
  iterations: number;
  plannerRows: number;
  threads: number;
  completionBatches: number[];
  db: boolean;
  outDir?: string;
  save: boolean;
}

interface MicroFigure {
  name: string;
  /** Items (tasks, messages) one iteration handles. */
  itemsPerOp: number;
  samples: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  /** Items per second at the mean. */
  itemsPerSec: number;
  /** Server process CPU per item, µs (the completion benchmarks, when the server runs on this machine). */
  serverCpuUsPerItem?: number;
}

/** A CHILD2 message of the workflow benchmark: what a typical task carries. */
const MESSAGE = { p: 123, key: 'a23', l1: 10, l2: 10, i: 4, j: 7, work: { mode: 'cpu', iterations: 40_000 } };

function command(): Command {
  return new Command('micro')
    .description('Micro-benchmarks of the hot pieces of the runtime')
    .option('--time-ms <ms>', 'time budget per benchmark', intArg('--time-ms', 1), 1_000)
    .option('--iterations <n>', 'minimum iterations per benchmark', intArg('--iterations', 1), 20)
    .option(
      '--planner-rows <n>',
      'ready rows in the planner pass benchmarks',
      intArg('--planner-rows', 1),
      10_000,
    )
    .option('--threads <n>', 'worker threads of the dispatcher', intArg('--threads', 1), 2)
    .option(
      '--completion-batches <list>',
      'batch sizes of the completion benchmarks',
      (v: string) => v.split(',').map((x) => intArg('--completion-batches', 1)(x)),
      [10, 100, 500],
    )
    .option('--no-db', 'skip the planner and completion benchmarks (no database needed)')
    .option('--out-dir <dir>', 'where the result file goes (default: results/, or TASKMILL_RESULTS_DIR)')
    .option('--no-save', 'do not write a result file');
}

async function main(): Promise<void> {
  const o = command().parse().opts<MicroCli>();
  const run = startRun('micro');
  const bench = new Bench({ time: o.timeMs, iterations: o.iterations, warmupIterations: 5, throws: true });
  const items = new Map<string, number>();
  const add = (name: string, per: number, fn: () => unknown, opts?: Parameters<Bench['add']>[2]) => {
    items.set(name, per);
    bench.add(name, fn, opts);
  };

  const bytes = encode(MESSAGE);
  add('msgpack encode (task message)', 1, () => encode(MESSAGE));
  add('msgpack decode (task message)', 1, () => decode(bytes));
  addMailboxes(add);
  const dispatcher = addDispatcher(add, o.threads);

  const server = o.db ? await openBenchServer() : undefined;
  const databases: BenchDatabase[] = [];
  const sessions: pg.Client[] = [];
  const serverCpuOf = new Map<string, () => number | undefined>();
  const serverCpu = new Map<string, number | undefined>();
  let postgres: PostgresInfo | null = null;
  try {
    if (server) {
      for (const affinity of [false, true]) {
        const db = await createBenchDatabase(server.url, `micro_planner${affinity ? '_affinity' : ''}`);
        databases.push(db);
        postgres ??= await postgresInfo(db.pool);
        const name = `planner pass, ${o.plannerRows} ready rows${affinity ? ', with affinity keys' : ''}`;
        await addPlannerPass(add, name, db, o.plannerRows, affinity, (n) => items.set(name, n));
      }
      const db = await createBenchDatabase(server.url, 'micro_completion');
      databases.push(db);
      for (const size of o.completionBatches) {
        const session = new pg.Client({ connectionString: db.url });
        await session.connect();
        sessions.push(session);
        const name = `completion, batch of ${size}`;
        serverCpuOf.set(name, await addCompletion(add, name, db, session, size));
      }
    }
    await bench.run();
    // Read while the sessions' server processes are still there.
    for (const [name, read] of serverCpuOf) serverCpu.set(name, read());
  } finally {
    for (const session of sessions) await session.end();
    await dispatcher.destroy();
    for (const db of databases) await db.drop();
    await server?.stop();
  }

  const figures = bench.tasks.map((t) => ({
    ...figure(t, items.get(t.name) ?? 1),
    ...withCpu(serverCpu.get(t.name)),
  }));
  const rows = figures.map((f) => ({
    Benchmark: f.name,
    'Items/op': f.itemsPerOp,
    'Mean (ms)': round(f.meanMs, 4),
    'p99 (ms)': round(f.p99Ms, 4),
    'Items/s': round(f.itemsPerSec, 0),
    'Server CPU/item (µs)': f.serverCpuUsPerItem ?? '-',
    Samples: f.samples,
  }));
  process.stderr.write(`${markdownTable(rows)}\n`);
  const find = (prefix: string) => figures.find((f) => f.name.startsWith(prefix));
  const one = find('dispatcher round trip, 1 task');
  const hundred = find('dispatcher round trip, 100 tasks');
  const result = finishRun(run, {
    summary:
      `micro: ${figures.length} benchmarks; ` +
      figures
        .map(
          (f) =>
            `${f.name} ${round(f.itemsPerSec, 0)}/s` +
            (f.serverCpuUsPerItem === undefined ? '' : ` (server CPU ${f.serverCpuUsPerItem} µs each)`),
        )
        .join(', '),
    postgres,
    params: {
      timeMs: o.timeMs,
      iterations: o.iterations,
      plannerRows: o.plannerRows,
      threads: o.threads,
      completionBatches: o.completionBatches,
    },
    figures: { benchmarks: figures },
    headline: {
      name: 'dispatcher tasks/s, 100-task dispatch vs 1',
      value: one && hundred ? round(hundred.itemsPerSec / one.itemsPerSec, 1) : 0,
      unit: 'x',
    },
    table: Object.fromEntries(figures.map((f) => [f.name, round(f.itemsPerSec, 0)])),
    rows,
  });
  const file = o.save ? writeResult(result, o.outDir) : undefined;
  console.log(`${result.summary}${file ? `; result: ${file}` : ''}`);
}

function figure(task: Task, itemsPerOp: number): MicroFigure {
  const r = task.result;
  if (r.state !== 'completed') {
    throw new Error(`${task.name}: ${r.state === 'errored' ? r.error.message : r.state}`);
  }
  return {
    name: task.name,
    itemsPerOp,
    samples: r.latency.samplesCount,
    meanMs: r.latency.mean,
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
    itemsPerSec: r.latency.mean > 0 ? (itemsPerOp * 1000) / r.latency.mean : 0,
  };
}

type Add = (name: string, per: number, fn: () => unknown, opts?: Parameters<Bench['add']>[2]) => void;

function fakeTask(affinity?: { key: string; workflow: string }): FetchedTask {
  return {
    id: randomUUID(),
    name: benchNoop.name,
    message: null,
    attempt: 0,
    assignment: 1,
    workflowId: affinity?.workflow ?? randomUUID(),
    workflowCreatedAt: new Date(),
    affinityGroup: affinity ? 'micro' : null,
    affinity: affinity?.key ?? null,
    strictAffinity: false,
    parentId: null,
    createdAt: new Date(),
    cancelRequested: false,
    joinInputs: [],
    traceparent: null,
    waitedMs: 0,
  };
}

/** 1,000 tasks: half free, half over 100 affinity keys (one workflow per key); take 100 at a time. */
function addMailboxes(add: Add): void {
  const workflows = Array.from({ length: 100 }, () => randomUUID());
  const tasks = Array.from({ length: 1_000 }, (_, i) =>
    i % 2 === 0 ? fakeTask() : fakeTask({ key: `k${i % 100}`, workflow: workflows[i % 100] }),
  );
  add('mailboxes push/take/release', tasks.length, () => {
    const boxes = new Mailboxes<FetchedTask>();
    for (const t of tasks) boxes.push(t);
    let left = tasks.length;
    while (left > 0) {
      const taken = boxes.take(100);
      if (taken.length === 0) throw new Error('mailboxes handed out nothing with tasks waiting');
      for (const t of taken) boxes.release(t);
      left -= taken.length;
    }
  });
}

/** Sequential round trips through the worker threads: dispatch, then wait for every outcome. */
function addDispatcher(add: Add, threads: number): Dispatcher {
  let waiting = 0;
  let done: (() => void) | undefined;
  const dispatcher = new Dispatcher({
    handlers: { [benchNoop.name]: benchNoop.handler },
    exactlyOnce: () => false,
    connectionString: '',
    // No-op tasks open no connection: the share is never used.
    connectionSlots: ConnectionSlots.create(1, 2 * threads + 16),
    nodeId: randomUUID(),
    timeoutOf: () => undefined,
    threads,
    maxBatchSize: 100,
    onOutcome: (outcome: Outcome) => {
      if (outcome.kind !== 'done')
        throw new Error(`no-op task ended ${outcome.kind} in the dispatcher benchmark`);
      if (--waiting === 0) done?.();
    },
  });
  const roundTrip = (n: number) => {
    const batch = Array.from({ length: n }, () => fakeTask());
    return () =>
      new Promise<void>((resolve) => {
        waiting = n;
        done = resolve;
        dispatcher.dispatch(batch.map((t) => ({ ...t, id: randomUUID() })));
      });
  };
  add('dispatcher round trip, 1 task', 1, roundTrip(1));
  add('dispatcher round trip, 100 tasks', 100, roundTrip(100));
  return dispatcher;
}

/**
 * One planner pass over `rows` ready tasks and one live node with room for all of them; the rows are
 * made ready again before each pass (not timed). Items per op: the tasks one pass assigned (the
 * planner's batch size). With affinity: 10 tasks per workflow, one workflow per key (rows / 10 keys),
 * so the claim's affinity check runs for every row.
 */
async function addPlannerPass(
  add: Add,
  name: string,
  db: BenchDatabase,
  rows: number,
  affinity: boolean,
  perPass: (assigned: number) => void,
): Promise<void> {
  await db.pool.query(`insert into tm_nodes (id, name, capacity, task_names) values ($1, 'micro', $2, $3)`, [
    randomUUID(),
    rows * 10,
    [benchNoop.name],
  ]);
  const workflows = Array.from({ length: Math.ceil(rows / 10) }, () => randomUUID());
  await preInsert(db.pool, benchNoop, rows, (i) =>
    affinity ? { workflowId: workflows[Math.floor(i / 10)], affinity: `k${Math.floor(i / 10)}` } : {},
  );
  await db.pool.query('analyze');
  const planner = new Planner({
    db: db.pool as pg.Pool,
    isLeader: () => true,
    onError: (error) => {
      throw error;
    },
  });
  add(
    name,
    1,
    async () => {
      const pass = await planner.runOnce();
      if (pass.assigned === 0) throw new Error('the planner pass assigned nothing');
      perPass(pass.assigned);
    },
    {
      beforeEach: async () => {
        await db.pool.query(`update tm_tasks set state = 'ready', node_id = null where state <> 'ready'`);
        await db.pool.query(`update tm_nodes set heartbeat_at = now()`);
      },
    },
  );
}

function withCpu(us: number | undefined): { serverCpuUsPerItem?: number } {
  return us === undefined ? {} : { serverCpuUsPerItem: round(us, 1) };
}

/**
 * One completion of `size` running tasks through `session`, fenced as a node's completer does; the rows
 * are inserted running on the node before each one (through the harness pool, not timed). Returns the
 * server CPU per completed task of `session`'s server process over the whole benchmark (warm-up
 * included), or undefined when that process is not on this machine.
 */
async function addCompletion(
  add: Add,
  name: string,
  db: BenchDatabase,
  session: pg.Client,
  size: number,
): Promise<() => number | undefined> {
  const nodeId = randomUUID();
  const { rows } = await session.query<{ pid: number }>('select pg_backend_pid() as pid');
  const pid = rows[0].pid;
  let batch: Completion[] = [];
  let completed = 0;
  let cpuAtStart: number | null = null;
  add(
    name,
    size,
    async () => {
      cpuAtStart ??= serverProcessCpuSeconds(pid);
      const accepted = await completeTasks(session, nodeId, batch);
      if (accepted.length !== size) throw new Error(`${name}: ${accepted.length} of ${size} tasks completed`);
      completed += size;
    },
    {
      beforeEach: async () => {
        const inserted = await db.pool.query<{ id: string }>(
          `insert into tm_tasks (id, name, workflow_id, workflow_created_at, state, node_id, assignment)
           select gen_random_uuid(), $1, gen_random_uuid(), now(), 'running', $2, 1 from generate_series(1, $3)
           returning id`,
          [benchNoop.name, nodeId, size],
        );
        batch = inserted.rows.map((r) => ({
          kind: 'done',
          task: { id: r.id, assignment: 1 },
          result: null,
          children: [],
          joinMessages: [],
        }));
      },
    },
  );
  return () => {
    const now = serverProcessCpuSeconds(pid);
    if (cpuAtStart === null || now === null || completed === 0) return undefined;
    return ((now - cpuAtStart) / completed) * 1e6;
  };
}

main().catch((error) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
