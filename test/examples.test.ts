/**
 * The docs' TypeScript cannot drift: the examples/ programs run here as real processes, from the
 * checkout, and every ```ts block of README.md and docs/*.md that shows a file of examples/ is an exact
 * excerpt of it (as a user writes it: importing 'taskmill'). The other blocks name a file of their own
 * (`// cron-tasks.ts`), which test/docs-walkthrough.test.ts writes and runs in a project that installs
 * the package, or are marked `// fragment` on their first line (type-checked there in context).
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { useTestDatabase } from './helpers/database.ts';
import { FRAGMENT_MARK, asDocumented, tsBlocks } from './helpers/doc-examples.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const TSX = import.meta.resolve('tsx');
/** The examples/ files the tests run: quickstart.ts, and the modules it loads. */
const RUN_BY_TESTS = ['examples/quickstart.ts', 'examples/tasks.ts', 'examples/resize-image.ts'];

const db = useTestDatabase();

it('the README quick start runs as written: prints the completed result and exits', async () => {
  const child = spawn(process.execPath, ['--import', TSX, 'examples/quickstart.ts'], {
    cwd: ROOT,
    env: { ...process.env, DATABASE_URL: db.url },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d));
  child.stderr.on('data', (d: Buffer) => (out += d));
  // A process that does not exit by itself fails the test at its timeout.
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  expect(code, out).toBe(0);
  expect(out).toBe(`completed { url: 'https://example.com/cat.png', width: 320 }\n`);
});

it('every ts block of README.md and docs/*.md is an excerpt of an example the tests run, names a file of its own, or is a marked fragment', () => {
  const examples = RUN_BY_TESTS.map((file) => asDocumented(readFileSync(path.join(ROOT, file), 'utf8')));
  const docs = [
    'README.md',
    ...readdirSync(path.join(ROOT, 'docs'))
      .filter((f) => f.endsWith('.md'))
      .map((f) => `docs/${f}`),
  ];
  const drifted: string[] = [];
  let excerpts = 0;
  for (const doc of docs) {
    for (const block of tsBlocks(readFileSync(path.join(ROOT, doc), 'utf8'))) {
      if (block.startsWith(`${FRAGMENT_MARK}\n`)) continue;
      if (examples.some((source) => source.includes(block))) excerpts++;
      else if (!namesOwnFile(block)) drifted.push(`${doc}:\n${block}`);
    }
  }
  expect(
    drifted,
    'blocks that match no example (update examples/, name a file of their own, or mark them `// fragment`)',
  ).toEqual([]);
  // The quick start's three files are shown whole.
  expect(excerpts).toBeGreaterThanOrEqual(3);
});

/** A block whose first line names a file that is not one of examples/ (`// cron-tasks.ts: ...`). */
function namesOwnFile(block: string): boolean {
  const name = /^\/\/ ([\w.-]+\.(?:ts|mjs|js))(?::|$)/m.exec(block.split('\n')[0])?.[1];
  return name !== undefined && !existsSync(path.join(ROOT, 'examples', name));
}
