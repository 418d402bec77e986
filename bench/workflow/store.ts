/**
 * The workload's own tables, in the run's database. Results are keyed by affinity, not by pipeline:
 * two pipelines of one affinity that ran interleaved would overwrite each other's rows, and JOIN1 (or
 * a CHILD2 reading its parent's row) would see the other pipeline's number and mark the run FAILED.
 *
 * At-least-once handlers use a small pool per worker thread (exactly-once ones get the runtime's
 * transaction client); its URL comes from WORKFLOW_DB_ENV, set by the harness before nodes start.
 */
import pg from 'pg';

export const WORKFLOW_DB_ENV = 'TASKMILL_BENCH_DB_URL';

export const WORKFLOW_SCHEMA = `
  create table perf_results (
    affinity text not null,
    node text not null,
    pipeline integer not null,
    value bigint not null,
    primary key (affinity, node)
  );
  create table perf_pipelines (
    pipeline integer primary key,
    affinity text not null,
    state text not null check (state in ('DONE', 'FAILED')),
    detail text,
    finished_at timestamptz not null default clock_timestamp()
  );`;

export const UPSERT_RESULT = `insert into perf_results (affinity, node, pipeline, value) values ($1, $2, $3, $4)
  on conflict (affinity, node) do update set pipeline = excluded.pipeline, value = excluded.value`;

let threadPool: pg.Pool | undefined;

/** This thread's pool (at-least-once handlers). */
export function perfPool(): pg.Pool {
  const url = process.env[WORKFLOW_DB_ENV];
  if (!url)
    throw new Error(`${WORKFLOW_DB_ENV} is not set: the workflow bench sets it before starting nodes`);
  threadPool ??= new pg.Pool({ connectionString: url, max: 10, application_name: 'perf-handler' });
  return threadPool;
}

/** The expected numbers of pipeline p: what every check compares with. */
export const expected = {
  c1: (p: number, i: number) => p * 100_000 + i,
  c2: (p: number, i: number, j: number) => (p * 100_000 + i) * 100 + j,
  j2: (p: number, i: number, l2: number) => {
    let sum = 0;
    for (let j = 0; j < l2; j++) sum += (p * 100_000 + i) * 100 + j;
    return sum;
  },
};
