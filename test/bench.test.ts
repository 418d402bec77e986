/**
 * Every benchmark, once, at a tiny size, through its command line against the test server: the summary
 * line is printed, the result file parses, and the run's invariants hold (every task completed once,
 * figures consistent, the workflow row has exactly the published columns, a broken affinity fails the
 * run loudly). Then the sweep, compare and results-table scripts over those result files.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, inject, it } from 'vitest';
import type { BenchResult } from '../bench/result-file.ts';
import { PUBLISHED_COLUMNS } from '../bench/workflow/columns.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TSX = import.meta.resolve('tsx');
const OUT = mkdtempSync(path.join(tmpdir(), 'taskmill-bench-test-'));

afterAll(() => rmSync(OUT, { recursive: true, force: true }));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  summary: string;
  result?: BenchResult;
}

/**
 * Each benchmark runs alone (they are sized for a quiet machine, and several node processes each would
 * also take more connections at once than a stock server's max_connections = 100 leaves). A run that
 * has not ended by its deadline is killed and fails with its output, before the test's own timeout.
 */
const RUN_DEADLINE_MS = 150_000;
const TEST_TIMEOUT_MS = RUN_DEADLINE_MS + 15_000;

function run(script: string, args: string[], deadlineMs = RUN_DEADLINE_MS): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', TSX, path.join(ROOT, script), ...args], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: inject('serverUrl'), TASKMILL_RESULTS_DIR: OUT, CI: 'true' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new Error(`${script} ${args.join(' ')} still running after ${deadlineMs} ms:\n${stdout}\n${stderr}`),
      );
    }, deadlineMs);
    child.once('error', reject);
    child.once('exit', (code) => {
      clearTimeout(timer);
      const lines = stdout.trim().split('\n');
      const summary = lines[lines.length - 1] ?? '';
      const file = /; result: (.+\.json)$/.exec(summary)?.[1];
      const result = file ? (JSON.parse(readFileSync(file, 'utf8')) as BenchResult) : undefined;
      resolve({ code, stdout, stderr, summary, result });
    });
  });
}

async function bench(script: string, args: string[], deadlineMs?: number): Promise<BenchResult> {
  const r = await run(script, args, deadlineMs);
  if (r.code !== 0 || !r.result)
    throw new Error(`${script} ${args.join(' ')} failed (${r.code}):\n${r.stderr}`);
  // One summary line on stdout, nothing else.
  expect(r.stdout.trim().split('\n')).toHaveLength(1);
  expect(r.result.summary.length).toBeGreaterThan(10);
  expect(r.result.git.commit).toMatch(/^[0-9a-f]{40}$|^unknown$/);
  expect(r.result.machine.cores).toBeGreaterThan(0);
  return r.result;
}

type Reports = { completed: number; cpuSeconds: number }[];

describe('benchmarks at a tiny size', { timeout: TEST_TIMEOUT_MS }, () => {
  it('flat burn-down, in-process: every task completes once', async () => {
    const r = await bench('bench/flat.ts', ['--tasks', '300', '--warmup', '50']);
    const f = r.figures as { tasks: number; seconds: number; tasksPerSec: number; nodeReports: Reports };
    expect(r.bench).toBe('flat-burn-down');
    expect(f.tasks).toBe(300);
    expect(f.tasksPerSec).toBeCloseTo(300 / f.seconds, 3);
    expect(f.nodeReports.reduce((s, n) => s + n.completed, 0)).toBe(350);
    expect(r.postgres?.version).toMatch(/^\d+/);
    expect(r.params).toMatchObject({ nodes: 1, spawn: false, batchSize: expect.any(Number) });
    expect(r.table['Tasks/s']).toBe(r.headline.value);
  });

  it('flat burn-down, two node processes: both report their work and CPU', async () => {
    const r = await bench('bench/flat.ts', [
      '--tasks',
      '300',
      '--warmup',
      '50',
      '--nodes',
      '2',
      '--spawn',
      '--batch-size',
      '100',
    ]);
    const f = r.figures as { nodeReports: Reports; postgres: { transactions: number } };
    expect(f.nodeReports).toHaveLength(2);
    expect(f.nodeReports.reduce((s, n) => s + n.completed, 0)).toBe(350);
    for (const n of f.nodeReports) expect(n.cpuSeconds).toBeGreaterThan(0);
    expect(f.postgres.transactions).toBeGreaterThan(0);
    expect(r.params).toMatchObject({ batchSize: 100, nodes: 2, spawn: true });
  });

  it('continuous load keeps a backlog and counts completions per second', async () => {
    const r = await bench('bench/flat.ts', ['--mode', 'continuous', '--duration', '2', '--backlog', '200']);
    const f = r.figures as { completed: number; perSecond: { samples: number[] }; scheduled: number };
    expect(f.perSecond.samples).toHaveLength(2);
    expect(f.completed).toBeGreaterThan(0);
    expect(f.completed).toBeLessThanOrEqual(f.scheduled);
  });

  it('latency: percentiles of sequential schedule-to-start times', async () => {
    const r = await bench('bench/flat.ts', ['--mode', 'latency', '--samples', '20']);
    const s = (r.figures as { scheduleToStart: Record<string, number> }).scheduleToStart;
    expect(s.count).toBe(20);
    expect(s.minMs).toBeGreaterThanOrEqual(0);
    expect(s.p50Ms).toBeLessThanOrEqual(s.p99Ms);
    expect(s.p99Ms).toBeLessThanOrEqual(s.maxMs);
    expect(r.targets?.map((t) => t.name)).toEqual(['schedule-to-start p50', 'schedule-to-start p99']);
  });

  it('fairness: trickling keys measured with fairness on and off while one key floods', async () => {
    const r = await bench('bench/flat.ts', [
      '--mode',
      'fairness',
      '--tasks',
      '1000',
      '--trickle',
      '10',
      '--trickle-keys',
      '2',
      '--trickle-interval-ms',
      '5',
    ]);
    type Run = { fairness: boolean; trickleStart: Record<string, number>; floodSeconds: number };
    const f = r.figures as { on: Run; off: Run };
    expect(r.bench).toBe('flat-fairness');
    expect([f.on.fairness, f.off.fairness]).toEqual([true, false]);
    for (const run of [f.on, f.off]) {
      expect(run.trickleStart.count).toBe(10);
      expect(run.trickleStart.p50Ms).toBeLessThanOrEqual(run.trickleStart.maxMs);
      expect(run.floodSeconds).toBeGreaterThan(0);
    }
    expect(r.table['Fair p99 (ms)']).toBe(r.headline.value);
  });

  it('cpu: tasks really cost their CPU time', async () => {
    const r = await bench('bench/flat.ts', [
      '--mode',
      'cpu',
      '--tasks',
      '40',
      '--cost-ms',
      '5',
      '--warmup',
      '4',
    ]);
    const f = r.figures as { efficiency: number; nodeCpuSeconds: number };
    // The measured window holds 40 tasks x 5 ms of calibrated work: at least half of it shows as CPU.
    expect(f.nodeCpuSeconds).toBeGreaterThan(40 * 0.005 * 0.5);
    expect(f.efficiency).toBeGreaterThan(0);
    expect(f.efficiency).toBeLessThan(1.2);
    expect((r.params as { iterationsPerTask: number }).iterationsPerTask).toBeGreaterThan(0);
  });

  it('workflow: exactly the published columns, every pipeline DONE, the task duration spent', async () => {
    // A = 1: the two pipelines run one after the other, each a chain of 5 tasks of 30 ms sleep.
    const r = await bench('bench/workflow.ts', [
      ...['--pipelines', '2', '--affinities', '1', '--l1', '2', '--l2', '2'],
      ...['--task-duration-ms', '30', '--task-work', 'sleep'],
    ]);
    expect(Object.keys(r.table)).toEqual([...PUBLISHED_COLUMNS]);
    expect(r.table['Total tasks']).toBe('21');
    const f = r.figures as { pipelinesDone: number; seconds: number; rps: number; totalTasks: number };
    expect(f.pipelinesDone).toBe(2);
    expect(f.seconds).toBeGreaterThan(2 * 5 * 0.03);
    expect(f.rps).toBeCloseTo(f.totalTasks / f.seconds, 3);
    expect(r.table.RPS).toBe(Math.round(f.rps));
    // A = 1: the second pipeline's rows replace the first's (c1:0-1, c2:0-1:0-1, j2:0-1).
    expect((r.figures as { resultRows: number }).resultRows).toBe(8);
    expect(r.summary).toMatch(/PostgreSQL CPU (\d+ µs|n\/a) and [\d.]+ transactions per task/);
  });

  it('workflow: runs to completion on three node processes, every pipeline DONE, runtime-only handlers', async () => {
    const r = await bench('bench/workflow.ts', [
      ...['--pipelines', '6', '--affinities', '3', '--l1', '3', '--l2', '3', '--nodes', '3', '--spawn'],
      ...['--task-work', 'sleep', '--runtime-only'],
    ]);
    expect(r.table.Nodes).toBe(3);
    const f = r.figures as { pipelinesDone: number; totalTasks: number; resultRows: number };
    expect(f.pipelinesDone).toBe(6);
    // The runtime-only variant: the handlers wrote no rows of their own.
    expect(f.resultRows).toBe(0);
    expect(r.params).toMatchObject({ runtimeOnly: true });
    expect(f.totalTasks).toBe(6 * (2 + 2 * 3 + 3 * 3) + 1);
  });

  it('workflow: a broken affinity fails the run loudly', async () => {
    const r = await run('bench/workflow.ts', [
      ...['--pipelines', '4', '--affinities', '1', '--l1', '3', '--l2', '3', '--break-affinity', '--no-save'],
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/pipelines FAILED/);
    const both = await run('bench/workflow.ts', ['--break-affinity', '--runtime-only', '--no-save']);
    expect(both.code).not.toBe(0);
    expect(both.stderr).toMatch(/--break-affinity needs the handlers' rows/);
  });

  it(
    'peers: every system burns down the same jobs and reports a ratio to taskmill',
    { timeout: 2 * TEST_TIMEOUT_MS },
    async () => {
      const r = await bench(
        'bench/compare-peers.ts',
        ['--tasks', '100', '--samples', '3'],
        2 * RUN_DEADLINE_MS,
      );
      const systems = (
        r.figures as {
          systems: {
            id: string;
            error?: string;
            skipped?: string;
            burnDown?: { tasksPerSec: number };
            throughputRatio?: number;
            latency?: { count: number };
          }[];
        }
      ).systems;
      expect(systems.map((s) => s.id)).toEqual([
        'taskmill',
        'graphile-worker-fast',
        'graphile-worker',
        'pg-boss',
        'bullmq-postgres',
        'bullmq-redis',
        'bare-sql',
      ]);
      for (const s of systems) {
        if (s.skipped) continue;
        expect(s.error).toBeUndefined();
        expect(s.burnDown!.tasksPerSec).toBeGreaterThan(0);
        expect(s.latency!.count).toBe(3);
      }
      expect(systems[0].throughputRatio).toBe(1);
      expect(r.rows).toHaveLength(systems.length);
    },
  );

  it('shards: one and two embedded servers behind a ShardedClient, every task run once on its shard', async () => {
    const serversDir = path.join(ROOT, '.taskmill', 'bench-shards');
    const folders = () => (existsSync(serversDir) ? readdirSync(serversDir) : []);
    const before = folders();
    const r = await bench('bench/shards.ts', ['--shards', '1,2', '--tasks', '300', '--warmup', '20']);
    type Shard = { shard: string; tasks: number; seconds: number; nodeReports: Reports };
    type Row = { shards: number; tasks: number; seconds: number; tasksPerSec: number; perShard: Shard[] };
    const rows = (r.figures as { rows: Row[] }).rows;
    expect(r.bench).toBe('shards');
    expect(rows.map((x) => x.shards)).toEqual([1, 2]);
    for (const row of rows) {
      expect(row.perShard).toHaveLength(row.shards);
      // Keyless tasks go to the shards in turn: an even split, each run by its shard's node process.
      expect(row.perShard.map((s) => s.tasks)).toEqual(row.shards === 1 ? [300] : [150, 150]);
      for (const s of row.perShard) {
        expect(s.nodeReports.reduce((n, x) => n + x.completed, 0)).toBe(s.tasks + 20);
        expect(s.seconds).toBeLessThanOrEqual(row.seconds);
      }
      expect(row.tasksPerSec).toBeCloseTo(300 / row.seconds, 3);
    }
    expect(r.rows).toHaveLength(2);
    expect(r.headline.value).toBe(Math.round(rows[1].tasksPerSec));
    // The servers it started are stopped and their data folders removed.
    expect(folders()).toEqual(before);
  });

  it('hosts: node processes behind their own proxies, flat and workflow, with the connections the server saw', async () => {
    const r = await bench('bench/hosts.ts', [
      ...['--nodes-list', '1,2', '--latency-ms', '1', '--tasks', '200'],
      ...['--pipelines', '2', '--affinities', '1', '--l1', '2', '--l2', '2'],
    ]);
    type Row = {
      bench: string;
      nodes: number;
      tasks: number;
      seconds: number;
      tasksPerSec: number;
      postgresCpuMicrosPerTask: number | null;
      connections: { peak: number; samples: number; atPeak: Record<string, number> };
      proxyBytes: number;
    };
    const rows = (r.figures as { rows: Row[] }).rows;
    expect(r.bench).toBe('hosts');
    expect(rows.map((x) => [x.bench, x.nodes])).toEqual([
      ['flat', 1],
      ['flat', 2],
      ['workflow', 1],
      ['workflow', 2],
    ]);
    for (const row of rows) {
      expect(row.tasks).toBe(row.bench === 'flat' ? 200 : 2 * (2 + 2 * 2 + 2 * 2) + 1);
      expect(row.tasksPerSec).toBeCloseTo(row.tasks / row.seconds, 3);
      // Every node went through its proxy, and the server saw at least one session per node.
      expect(row.proxyBytes).toBeGreaterThan(0);
      expect(row.connections.samples).toBeGreaterThan(0);
      expect(row.connections.peak).toBeGreaterThanOrEqual(row.nodes);
      expect(Object.values(row.connections.atPeak).reduce((a, b) => a + b, 0)).toBe(row.connections.peak);
    }
    expect(r.rows).toHaveLength(4);
  });

  it('micro-benchmarks: every piece measured', async () => {
    const r = await bench('bench/micro.ts', [
      '--time-ms',
      '20',
      '--iterations',
      '3',
      '--planner-rows',
      '500',
      '--completion-batches',
      '5,50',
    ]);
    const b = (
      r.figures as {
        benchmarks: { name: string; itemsPerSec: number; samples: number; serverCpuUsPerItem?: number }[];
      }
    ).benchmarks;
    expect(b).toHaveLength(9);
    for (const x of b) {
      expect(x.itemsPerSec).toBeGreaterThan(0);
      expect(x.samples).toBeGreaterThanOrEqual(3);
    }
    // The tests' server runs here: the completions' server CPU is read from /proc.
    const completions = b.filter((x) => x.name.startsWith('completion'));
    expect(completions.map((x) => x.name)).toEqual(['completion, batch of 5', 'completion, batch of 50']);
    for (const x of completions) expect(x.serverCpuUsPerItem).toBeGreaterThanOrEqual(0);
  });
});

describe('scripts over the result files', { timeout: TEST_TIMEOUT_MS }, () => {
  it('sweep: one result per point, a table and a chart', async () => {
    const r = await bench('scripts/sweep.ts', [
      '--batch-size',
      '100,200',
      '--',
      '--tasks',
      '200',
      '--warmup',
      '20',
    ]);
    const f = r.figures as {
      points: { point: Record<string, string>; file?: string; value: number | null }[];
      markdown: string;
      chart: string;
    };
    expect(f.points.map((p) => p.point)).toEqual([{ 'batch-size': '100' }, { 'batch-size': '200' }]);
    for (const p of f.points) {
      expect(p.value).toBeGreaterThan(0);
      expect(existsSync(path.join(OUT, p.file!))).toBe(true);
    }
    expect(readFileSync(path.join(OUT, f.markdown), 'utf8')).toMatch(/\| batch-size \| tasks\/s \|/);
    expect(readFileSync(path.join(OUT, f.chart), 'utf8')).toMatch(
      /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/,
    );
  });

  it('compare: the latest runs side by side with ratios', async () => {
    const r = await run('scripts/compare.ts', ['--latest', '2', '--bench', 'flat-burn-down']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/\| headline: throughput \(tasks\/s\) \| \d+ \| \d+ \| x[\d.]+ \|/);
    expect(r.stdout).toMatch(/throughput: \d+ -> \d+ tasks\/s \(x[\d.]+\)/);
  });

  it('results table: README.md regenerated from every result file', async () => {
    const r = await run('scripts/results-table.ts', []);
    expect(r.code).toBe(0);
    const readme = readFileSync(path.join(OUT, 'README.md'), 'utf8');
    for (const title of [
      '## Targets',
      '## Workflow benchmark',
      '## Flat burn-down',
      '## taskmill and its peers',
      '## Micro-benchmarks',
      '## Sweeps',
    ]) {
      expect(readme).toContain(title);
    }
    const files = readdirSync(OUT).filter((f) => f.endsWith('.json'));
    expect(r.stdout).toContain(`${files.length} runs`);
  });
});
