/**
 * `taskmill bench [name] [args...]` and `taskmill results <compare|table> [args...]`: run the
 * benchmark scripts of bench/ and the results scripts of scripts/ as child processes (same Node, with
 * the TypeScript loader), passing the remaining arguments through and their exit code back. Both work
 * from a checkout of the taskmill repository only: the package ships neither folder, and there they
 * say so (exit code 5) and in their --help. A bench is
 * a top-level file of bench/ that runs `main()` when executed; `sweep` (scripts/sweep.ts) runs one
 * over a grid of parameters.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { CliError, EXIT, print, table, type CliIo } from '../output.ts';
import type { CommandContext } from '../main.ts';

const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');
const BENCH_DIR = path.join(REPO_ROOT, 'bench');
const RESULT_SCRIPTS: Record<string, string> = {
  compare: 'scripts/compare.ts',
  table: 'scripts/results-table.ts',
};
/** Runnable like a bench, though it lives in scripts/: runs a bench over a grid of parameters. */
const SWEEP = path.join(REPO_ROOT, 'scripts/sweep.ts');
const CHECKOUT_ONLY =
  'From a checkout of the taskmill repository only: the installed package has neither bench/ nor scripts/.';

function notInCheckout(what: string): CliError {
  return new CliError(
    EXIT.UNAVAILABLE,
    `${what} is not here: the benchmarks run from a checkout of the taskmill repository, which the ` +
      'installed package leaves out (clone it, run `npm ci`, then `npx taskmill bench`).',
  );
}

export function registerBenchCommands(program: Command, ctx: CommandContext): void {
  program
    .command('bench')
    .description(
      'Run a benchmark of bench/ (without a name: list them); options after the name go to the bench. ' +
        CHECKOUT_ONLY,
    )
    .argument('[name]', 'benchmark name, e.g. flat')
    .argument('[args...]', 'arguments of the benchmark (try: taskmill bench flat --help)')
    .allowUnknownOption()
    .helpOption(false)
    .option('--json', 'with no name: list as JSON')
    .action(async (name: string | undefined, _args: string[], opts: { json?: boolean }, command: Command) => {
      if (name === undefined) {
        print(ctx.io, opts.json, listBenches(), (benches) =>
          table(
            ['bench', 'what it measures'],
            benches.map((b) => [b.name, b.description]),
          ),
        );
        return;
      }
      const bench = listBenches().find((b) => b.name === name);
      if (!bench) {
        throw new CliError(
          EXIT.USAGE,
          `No bench ${JSON.stringify(name)}; available: ${listBenches()
            .map((b) => b.name)
            .join(', ')}.`,
        );
      }
      ctx.exit(await runScript(ctx.io, bench.file, command.args.slice(1), command.optsWithGlobals()));
    });

  program
    .command('results')
    .description(
      `Work on benchmark results: ${Object.keys(RESULT_SCRIPTS).join(', ')} (options go to the script). ` +
        CHECKOUT_ONLY,
    )
    .argument(
      '<action>',
      Object.entries(RESULT_SCRIPTS)
        .map(([a, f]) => `${a} (${f})`)
        .join(', '),
    )
    .argument('[args...]', 'arguments of the script (try: taskmill results compare --help)')
    .allowUnknownOption()
    .helpOption(false)
    .action(async (action: string, _args: string[], _opts: unknown, command: Command) => {
      const script = RESULT_SCRIPTS[action];
      if (!script)
        throw new CliError(
          EXIT.USAGE,
          `Unknown action ${JSON.stringify(action)}; use ${Object.keys(RESULT_SCRIPTS).join(' or ')}.`,
        );
      const file = path.join(REPO_ROOT, script);
      if (!existsSync(file)) throw notInCheckout(script);
      ctx.exit(await runScript(ctx.io, file, command.args.slice(1), command.optsWithGlobals()));
    });
}

export function listBenches(): { name: string; file: string; description: string }[] {
  if (!existsSync(BENCH_DIR)) throw notInCheckout('bench/');
  const files = readdirSync(BENCH_DIR)
    .filter((f) => f.endsWith('.ts'))
    .map((f) => path.join(BENCH_DIR, f));
  if (existsSync(SWEEP)) files.push(SWEEP);
  return files
    .map((file) => ({ file, source: readFileSync(file, 'utf8') }))
    .filter(({ source }) => /^main\(\)/m.test(source))
    .map(({ file, source }) => ({
      name: path.basename(file, '.ts'),
      file,
      description: summary(source),
    }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** The opening sentence of a file's header comment (up to the first line ending in `.` or `:`). */
function summary(source: string): string {
  const header = /^\/\*\*([\s\S]*?)\*\//m.exec(source)?.[1] ?? '';
  const lines = header.split('\n').map((l) => l.replace(/^\s*\*\s?/, '').trim());
  const words: string[] = [];
  for (const line of lines.filter(Boolean)) {
    words.push(line);
    if (/[.:]$/.test(line)) break;
  }
  return words.join(' ').replace(/[.:]$/, '');
}

/** Runs a TypeScript script in a child Node process; resolves with its exit code. */
function runScript(
  io: CliIo,
  file: string,
  args: string[],
  globals: { databaseUrl?: string },
): Promise<number> {
  return new Promise((resolve, reject) => {
    const env = globals.databaseUrl ? { ...io.env, DATABASE_URL: globals.databaseUrl } : io.env;
    const child = spawn(process.execPath, ['--import', 'tsx', file, ...args], {
      cwd: io.cwd,
      env,
      stdio: ['inherit', 'pipe', 'pipe'],
    });
    child.stdout.on('data', (chunk: Buffer) => io.out(chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => io.err(chunk.toString()));
    const onAbort = () => child.kill('SIGINT');
    io.signal.addEventListener('abort', onAbort, { once: true });
    child.once('error', reject);
    child.once('close', (code, signal) => {
      io.signal.removeEventListener('abort', onAbort);
      resolve(code ?? (signal === 'SIGINT' ? 130 : EXIT.FAILURE));
    });
  });
}
