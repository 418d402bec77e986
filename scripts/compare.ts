/**
 * Compares benchmark runs side by side, so a change can be judged against the last run:
 *
 *   tsx scripts/compare.ts results/flat-burn-down-A.json results/flat-burn-down-B.json
 *   tsx scripts/compare.ts --latest 2 --bench flat-burn-down
 *
 * Prints a markdown table: one column per run (oldest first) and one ratio column per later run
 * (its value / the first run's), over the headline, the run's table row, the parameters that differ,
 * and every numeric figure. The last line says how the headline moved.
 */
import { Command } from 'commander';
import { markdownTable } from '../bench/markdown-table.ts';
import { intArg } from '../bench/node-options.ts';
import { listResults, readResult, resultsDir, round, type BenchResult } from '../bench/result-file.ts';

interface CompareCli {
  latest?: number;
  bench?: string;
  dir?: string;
}

type Flat = Record<string, string | number | boolean | null>;

/** Nested objects as dotted keys; arrays are left out (per-second samples, per-node reports). */
export function flatten(value: unknown, prefix = '', out: Flat = {}): Flat {
  if (value === null || typeof value !== 'object') {
    if (prefix) out[prefix] = value as Flat[string];
    return out;
  }
  if (Array.isArray(value)) return out;
  for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  return out;
}

function ratio(value: unknown, base: unknown): string {
  if (typeof value !== 'number' || typeof base !== 'number' || base === 0) return '';
  return `x${round(value / base, 2)}`;
}

export function compareRuns(runs: { name: string; result: BenchResult }[]): {
  rows: Record<string, string | number>[];
  columns: string[];
} {
  const names = runs.map((r, i) => `${i + 1}: ${r.name}`);
  const columns = ['', ...names.flatMap((n, i) => (i === 0 ? [n] : [n, `${i + 1} / 1`]))];
  const rows: Record<string, string | number>[] = [];
  const push = (label: string, values: unknown[], withRatio = true) => {
    const row: Record<string, string | number> = { '': label };
    values.forEach((v, i) => {
      row[columns[i === 0 ? 1 : 2 * i]] = v === undefined || v === null ? '-' : String(v);
      if (i > 0) row[columns[2 * i + 1]] = withRatio ? ratio(v, values[0]) : '';
    });
    rows.push(row);
  };
  push(
    'started',
    runs.map((r) => r.result.startedAt),
    false,
  );
  push(
    'commit',
    runs.map((r) => `${r.result.git.commit.slice(0, 10)}${r.result.git.dirty ? '+dirty' : ''}`),
    false,
  );
  push(
    'machine',
    runs.map((r) => `${r.result.machine.cpuModel} x${r.result.machine.cores}`),
    false,
  );
  push(
    'load average at start',
    runs.map((r) => r.result.machine.loadAverage),
    false,
  );
  push(
    `headline: ${runs[0].result.headline.name} (${runs[0].result.headline.unit})`,
    runs.map((r) => r.result.headline.value),
  );
  const tableKeys = [...new Set(runs.flatMap((r) => Object.keys(r.result.table)))];
  for (const key of tableKeys)
    push(
      key,
      runs.map((r) => r.result.table[key]),
    );
  const params = runs.map((r) => flatten(r.result.params));
  for (const key of [...new Set(params.flatMap((p) => Object.keys(p)))]) {
    const values = params.map((p) => p[key]);
    if (new Set(values.map((v) => JSON.stringify(v))).size > 1) push(`param ${key}`, values, false);
  }
  const figures = runs.map((r) => flatten(r.result.figures));
  for (const key of [...new Set(figures.flatMap((f) => Object.keys(f)))]) {
    const values = figures.map((f) => f[key]);
    if (values.some((v) => typeof v === 'number')) {
      push(
        key,
        values.map((v) => (typeof v === 'number' ? round(v, 3) : v)),
      );
    }
  }
  return { rows, columns };
}

async function main(): Promise<void> {
  const program = new Command('compare')
    .description('Side-by-side table of benchmark runs with ratios to the first')
    .argument('[files...]', 'result files (oldest first)')
    .option('--latest <n>', 'the latest N result files instead of naming them', intArg('--latest', 2))
    .option('--bench <name>', 'with --latest: only runs of this bench (e.g. flat-burn-down, workflow)')
    .option('--dir <dir>', 'with --latest: results directory (default: results/, or TASKMILL_RESULTS_DIR)')
    .parse();
  const o = program.opts<CompareCli>();
  const files = program.args;
  let runs: { name: string; result: BenchResult }[];
  if (o.latest !== undefined) {
    if (files.length > 0) throw new Error('give result files or --latest, not both');
    const all = listResults(resultsDir(o.dir), o.bench);
    runs = all.slice(-o.latest).map((r) => ({ name: r.file.split('/').pop()!, result: r.result }));
    if (runs.length < 2) {
      throw new Error(
        `need at least 2 results${o.bench ? ` of ${o.bench}` : ''} in ${resultsDir(o.dir)}, found ${runs.length}`,
      );
    }
  } else {
    if (files.length < 2) throw new Error('give at least two result files, or --latest N');
    runs = files.map((f) => ({ name: f.split('/').pop()!, result: readResult(f) }));
  }
  const benches = new Set(runs.map((r) => r.result.bench));
  if (benches.size > 1)
    process.stderr.write(`note: comparing different benches (${[...benches].join(', ')})\n`);
  const { rows, columns } = compareRuns(runs);
  console.log(markdownTable(rows, columns));
  const first = runs[0].result.headline;
  const last = runs[runs.length - 1].result.headline;
  console.log(
    `\n${first.name}: ${first.value} -> ${last.value} ${last.unit} (${ratio(last.value, first.value) || 'n/a'})`,
  );
}

main().catch((error) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
