/**
 * Parameter sweeps: runs a benchmark once per point of a grid and tabulates its headline figure.
 *
 *   tsx scripts/sweep.ts --batch-size 50,100,200 --plan-factor 1,2,5 -- --tasks 50000
 *   tsx scripts/sweep.ts --bench workflow --batch-size 100,200 -- --pipelines 100
 *
 * Any grid option takes comma-separated values (polling-delay values, which contain commas, are
 * separated by `;`). Arguments after `--` go unchanged to every run. Each point runs in its own process
 * and writes its own result file; the sweep then writes `sweep-<time>.json` (every point), `.md` (a
 * table: rows x columns for a two-dimensional grid) and `.svg` (RPS or tasks/s across the grid) next
 * to them, and prints one summary line. Exits non-zero when a point failed.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { markdownTable } from '../bench/markdown-table.ts';
import { progressWanted } from '../log/progress.ts';
import {
  finishRun,
  readResult,
  REPO_ROOT,
  resultFileName,
  resultsDir,
  round,
  startRun,
  writeResult,
} from '../bench/result-file.ts';
import { groupedBarChart } from '../bench/svg-chart.ts';

/** Options a grid can vary (they are passed to the benchmark as they are). */
const GRID_OPTIONS = [
  'nodes',
  'batch-size',
  'plan-factor',
  'polling-delay',
  'max-parallel-tasks-in-node',
  'threads',
  'micro-batch-size',
  'completer-batch-size',
  'completer-flush-ms',
  'fetch-interval-ms',
  'max-connections',
  'new-batch-size',
  'manage-delay',
  'max-parallel-tasks-in-cluster-default',
  'tasks',
  'pipelines',
  'affinities',
];

const BENCHES: Record<string, string> = {
  flat: 'bench/flat.ts',
  workflow: 'bench/workflow.ts',
};

interface Dimension {
  option: string;
  values: string[];
}

interface SweepArgs {
  bench: string;
  dimensions: Dimension[];
  passThrough: string[];
  outDir?: string;
}

const USAGE = `usage: tsx scripts/sweep.ts [--bench flat|workflow] [--out-dir DIR] --<option> v1,v2,... [...] [-- bench args]
grid options: ${GRID_OPTIONS.join(', ')}`;

export function parseSweepArgs(argv: string[]): SweepArgs {
  const args: SweepArgs = { bench: 'flat', dimensions: [], passThrough: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      args.passThrough = argv.slice(i + 1);
      break;
    }
    if (arg === '--help' || arg === '-h') {
      console.log(USAGE);
      process.exit(0);
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m) throw new Error(`unexpected argument ${arg}\n${USAGE}`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new Error(`--${m[1]} needs a value\n${USAGE}`);
    if (m[1] === 'bench') {
      if (!BENCHES[value]) throw new Error(`--bench must be one of ${Object.keys(BENCHES).join(', ')}`);
      args.bench = value;
    } else if (m[1] === 'out-dir') {
      args.outDir = value;
    } else if (GRID_OPTIONS.includes(m[1])) {
      const values = value
        .split(m[1] === 'polling-delay' ? ';' : ',')
        .map((v) => v.trim())
        .filter(Boolean);
      if (values.length === 0) throw new Error(`--${m[1]} needs at least one value`);
      args.dimensions.push({ option: m[1], values });
    } else {
      throw new Error(`--${m[1]} cannot be swept (pass it after --)\n${USAGE}`);
    }
  }
  if (args.dimensions.length === 0) throw new Error(`no grid given\n${USAGE}`);
  return args;
}

/** Every combination of the dimensions' values, first dimension slowest. */
export function gridPoints(dimensions: Dimension[]): Record<string, string>[] {
  return dimensions.reduce<Record<string, string>[]>(
    (points, d) => points.flatMap((p) => d.values.map((v) => ({ ...p, [d.option]: v }))),
    [{}],
  );
}

interface PointOutcome {
  point: Record<string, string>;
  file?: string;
  value: number | null;
  unit?: string;
  summary?: string;
  error?: string;
}

function runPoint(script: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, path.join(REPO_ROOT, script), ...args], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      process.stderr.write(c);
    });
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

async function main(): Promise<void> {
  const args = parseSweepArgs(process.argv.slice(2));
  const run = startRun('sweep');
  const dir = resultsDir(args.outDir);
  const points = gridPoints(args.dimensions);
  const outcomes: PointOutcome[] = [];
  for (const [i, point] of points.entries()) {
    const gridArgs = Object.entries(point).flatMap(([k, v]) => [`--${k}`, v]);
    if (progressWanted()) process.stderr.write(`point ${i + 1}/${points.length}: ${gridArgs.join(' ')}\n`);
    const { code, stdout, stderr } = await runPoint(BENCHES[args.bench], [
      ...args.passThrough,
      ...gridArgs,
      '--out-dir',
      dir,
    ]);
    const last = stdout.trim().split('\n').pop() ?? '';
    const file = /; result: (.+\.json)$/.exec(last)?.[1];
    if (code !== 0 || !file) {
      const why = stderr.trim().split('\n').filter(Boolean).pop() ?? `exit code ${code}`;
      outcomes.push({ point, value: null, error: why });
      continue;
    }
    const result = readResult(file);
    outcomes.push({
      point,
      file: path.relative(dir, file),
      value: result.headline.value,
      unit: result.headline.unit,
      summary: result.summary,
    });
  }

  const unit = outcomes.find((o) => o.unit)?.unit ?? '';
  const metric = args.bench === 'workflow' ? 'RPS' : unit;
  const { rows, columns } = tableRows(args.dimensions, outcomes, metric);
  const base = resultFileName('sweep', run.startedAt).replace(/\.json$/, '');
  const title = `${args.bench}: ${metric} across ${args.dimensions.map((d) => d.option).join(' x ')}`;
  writeFileSync(path.join(dir, `${base}.md`), `# ${title}\n\n${markdownTable(rows, columns)}\n`);
  writeFileSync(path.join(dir, `${base}.svg`), chart(title, metric, args.dimensions, outcomes));
  const ok = outcomes.filter((o) => o.value !== null);
  const best = ok.reduce<PointOutcome | undefined>((b, o) => (!b || o.value! > b.value! ? o : b), undefined);
  const pointText = (p: Record<string, string>) =>
    Object.entries(p)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ');
  const result = finishRun(run, {
    summary:
      `sweep ${args.bench}: ${points.length} points, ${outcomes.length - ok.length} failed; ` +
      (best ? `best ${round(best.value!, 1)} ${unit} at ${pointText(best.point)}` : 'no point succeeded'),
    postgres: null,
    params: {
      bench: args.bench,
      grid: Object.fromEntries(args.dimensions.map((d) => [d.option, d.values])),
      passThrough: args.passThrough,
    },
    figures: { points: outcomes, markdown: `${base}.md`, chart: `${base}.svg` },
    headline: { name: `best ${metric}`, value: best?.value ?? 0, unit },
    table: { Bench: args.bench, Points: points.length, Best: best ? pointText(best.point) : '-' },
    rows,
  });
  const file = writeResult(result, args.outDir);
  console.log(`${result.summary}; result: ${file}`);
  if (ok.length < outcomes.length) process.exitCode = 1;
}

/**
 * Two dimensions: a matrix (first down, second across); otherwise one row per point. Columns are
 * given explicitly: numeric keys would otherwise come first in an object's key order.
 */
function tableRows(dimensions: Dimension[], outcomes: PointOutcome[], metric: string) {
  const cell = (o: PointOutcome | undefined) => (o?.value === null || !o ? 'FAILED' : round(o.value, 1));
  if (dimensions.length === 2) {
    const [a, b] = dimensions;
    const corner = `${a.option} \\ ${b.option}`;
    const columns = [corner, ...b.values.map((vb) => `${b.option}=${vb}`)];
    const rows = a.values.map((va) => ({
      [corner]: va,
      ...Object.fromEntries(
        b.values.map((vb) => [
          `${b.option}=${vb}`,
          cell(outcomes.find((o) => o.point[a.option] === va && o.point[b.option] === vb)),
        ]),
      ),
    }));
    return { rows, columns };
  }
  const columns = [...dimensions.map((d) => d.option), metric];
  return { rows: outcomes.map((o) => ({ ...o.point, [metric]: cell(o) })), columns };
}

function chart(title: string, metric: string, dimensions: Dimension[], outcomes: PointOutcome[]): string {
  const [first, ...rest] = dimensions;
  const seriesOf = (p: Record<string, string>) =>
    rest.length === 0 ? metric : rest.map((d) => `${d.option}=${p[d.option]}`).join(' ');
  return groupedBarChart({
    title,
    yLabel: metric,
    xLabel: first.option,
    groups: first.values.map((v) => ({
      label: v,
      bars: outcomes
        .filter((o) => o.point[first.option] === v)
        .map((o) => ({ series: seriesOf(o.point), value: o.value })),
    })),
  });
}

main().catch((error) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
