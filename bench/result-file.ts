/**
 * One benchmark run = one JSON file in `results/` (or `--out-dir`, or TASKMILL_RESULTS_DIR): what ran
 * (bench, parameters), where (machine, PostgreSQL, git commit) and what it measured (figures). Every
 * bench prints one summary line on stdout and writes its full record here.
 *
 * `table` is the row a results table shows for the run (ordered columns, already formatted), so
 * scripts/results-table.ts and scripts/compare.ts need no per-bench knowledge; `headline` is the one
 * figure a sweep or a comparison ranks runs by.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { markdownTable } from './markdown-table.ts';

export const REPO_ROOT = path.resolve(import.meta.dirname, '..');
export const DEFAULT_RESULTS_DIR = path.join(REPO_ROOT, 'results');

export interface Machine {
  cpuModel: string;
  cores: number;
  memoryGb: number;
  platform: string;
  node: string;
  /** 1-minute load average when the run started: a busy machine makes every figure suspect. */
  loadAverage: number;
}

export interface PostgresInfo {
  version: string;
  settings: Record<string, string>;
}

export interface GitInfo {
  commit: string;
  /** Tracked files differ from the commit. */
  dirty: boolean;
}

export interface Target {
  name: string;
  goal: string;
  value: number;
  met: boolean;
}

export interface BenchResult {
  /** e.g. `flat-burn-down`, `workflow`, `compare-peers`, `micro`. */
  bench: string;
  startedAt: string;
  summary: string;
  machine: Machine;
  postgres: PostgresInfo | null;
  git: GitInfo;
  params: Record<string, unknown>;
  figures: Record<string, unknown>;
  headline: { name: string; value: number; unit: string };
  /** Row of the results table for this run: column -> formatted cell. */
  table: Record<string, string | number>;
  /** A run that compares several systems or points also keeps its own table, one row each. */
  rows?: Record<string, string | number>[];
  targets?: Target[];
  notes?: string[];
}

export function machineInfo(): Machine {
  return {
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    cores: availableParallelism(),
    memoryGb: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    platform: `${process.platform} ${release()}`,
    node: process.version,
    loadAverage: Math.round(loadavg()[0] * 100) / 100,
  };
}

export function gitInfo(): GitInfo {
  const git = (...args: string[]) =>
    execFileSync('git', args, { cwd: REPO_ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  try {
    return {
      commit: git('rev-parse', 'HEAD').trim(),
      dirty: git('status', '--porcelain', '--untracked-files=no').trim().length > 0,
    };
  } catch {
    return { commit: 'unknown', dirty: false };
  }
}

const PG_SETTINGS = ['fsync', 'synchronous_commit', 'shared_buffers', 'max_connections', 'work_mem'];

export async function postgresInfo(db: Pick<pg.Pool, 'query'>): Promise<PostgresInfo> {
  const { rows } = await db.query<{ name: string; setting: string; unit: string | null }>(
    `select name, setting, unit from pg_settings where name = any($1::text[])`,
    [PG_SETTINGS],
  );
  const version = await db.query<{ v: string }>(`select current_setting('server_version') as v`);
  return {
    version: version.rows[0].v,
    settings: Object.fromEntries(rows.map((r) => [r.name, r.unit ? `${r.setting} ${r.unit}` : r.setting])),
  };
}

export function resultsDir(outDir?: string): string {
  return path.resolve(outDir ?? process.env.TASKMILL_RESULTS_DIR ?? DEFAULT_RESULTS_DIR);
}

/** `flat-burn-down-2025-01-31T10-20-30-123Z.json`: sortable by name, unique per millisecond. */
export function resultFileName(bench: string, startedAt: string): string {
  return `${bench}-${startedAt.replace(/[:.]/g, '-')}.json`;
}

/**
 * The end of a bench run: its rows as a table on stderr, the result file (unless `save` is off) and the
 * summary line on stdout, with the file's path.
 */
export function reportResult(
  result: BenchResult,
  o: { save: boolean; outDir?: string },
  rows = result.rows ?? [],
): void {
  process.stderr.write(`${markdownTable(rows)}\n`);
  const file = o.save ? writeResult(result, o.outDir) : undefined;
  console.log(`${result.summary}${file ? `; result: ${file}` : ''}`);
}

/** Writes the record and returns its path. */
export function writeResult(result: BenchResult, outDir?: string): string {
  const dir = resultsDir(outDir);
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, resultFileName(result.bench, result.startedAt));
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  return file;
}

export interface RunStart {
  bench: string;
  startedAt: string;
  machine: Machine;
  git: GitInfo;
}

/** Taken when a run starts, so the machine's load average is the one the run met. */
export function startRun(bench: string): RunStart {
  return { bench, startedAt: new Date().toISOString(), machine: machineInfo(), git: gitInfo() };
}

export function finishRun(run: RunStart, fields: Omit<BenchResult, keyof RunStart>): BenchResult {
  return { ...run, ...fields };
}

/** A number with at most `digits` decimals, for tables and summary lines. */
export function round(value: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** Where the time went: node CPU, server CPU, server transactions per task. */
export function costColumns(nodeCpuSeconds: number, postgresCpuSeconds: number | null, xactPerTask: number) {
  return {
    'Node CPU (s)': round(nodeCpuSeconds),
    'PG CPU (s)': postgresCpuSeconds === null ? 'n/a' : round(postgresCpuSeconds),
    'Xact/task': round(xactPerTask, 3),
  };
}

/** Reads a result file written by writeResult. */
export function readResult(file: string): BenchResult {
  const result = JSON.parse(readFileSync(file, 'utf8')) as BenchResult;
  if (typeof result.bench !== 'string' || typeof result.startedAt !== 'string' || !result.headline) {
    throw new Error(`${file} is not a benchmark result file`);
  }
  return result;
}

/** Result files of a directory, oldest first (by start time), optionally of one bench only. */
export function listResults(dir: string, bench?: string): { file: string; result: BenchResult }[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => path.join(dir, f))
    .flatMap((file) => {
      try {
        return [{ file, result: readResult(file) }];
      } catch {
        return [];
      }
    })
    .filter((r) => !bench || r.result.bench === bench)
    .sort((a, b) => a.result.startedAt.localeCompare(b.result.startedAt));
}
