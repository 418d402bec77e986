/**
 * The layout rules of the code base, checked by reading the source:
 * - SQL on taskmill's tables (tm_*) lives in store/ (TypeScript) and migrations/ (SQL) only. Grep-level:
 *   a string or template literal naming a tm_* relation together with an SQL keyword. Tests and bench/
 *   are left out: tests write rows in any state and read them back to check what the runtime did, and
 *   bench/ runs SQL only to set up and measure runs (pre-inserting tasks, pausing the planner, reading
 *   counts), never as part of the runtime.
 * - Dependencies run one way: no import cycle between top-level folders. From the top: cli/, http/,
 *   scripts/ and bench/; the public API (index.ts); node/ (a node's wiring and main-thread parts);
 *   client/ (the scheduling application's API); worker/ (what runs on a worker thread); planner/;
 *   store/ and migrations/; task/ (what a task is: definitions, messages, states, retry policy,
 *   errors); loop/ (the lifecycle every long-lived part shares) and log/.
 * - The planner's NOTIFY channel is named once on each side: store/channels.ts for LISTEN, and
 *   tm_planner_channel() in the database, which every plpgsql wake-up goes through.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PLANNER_CHANNEL, TASK_ENDED_CHANNEL } from '../store/channels.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
/** Folders whose SQL is allowed (store/, migrations/) or not checked (see the header). */
const EXEMPT = new Set([
  'store',
  'migrations',
  'test',
  'bench',
  'node_modules',
  'dist',
  'results',
  '.git',
  '.taskmill',
]);

function sourceFiles(dir: string, top = true, exempt: Set<string> = EXEMPT): string[] {
  return readdirSync(dir).flatMap((entry) => {
    const full = path.join(dir, entry);
    if (statSync(full).isDirectory()) {
      if (entry.startsWith('.') || (top && exempt.has(entry)) || entry === 'node_modules') return [];
      return sourceFiles(full, false, exempt);
    }
    return /\.(ts|mts|mjs|js)$/.test(entry) ? [full] : [];
  });
}

const LITERAL = /`(?:[^`\\]|\\.)*`|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"/gs;
const TABLE = /\btm_[a-z_]+\b/;
const SQL_KEYWORD =
  /\b(?:(?:select|insert\s+into|update\s+\w+\s+set|delete\s+from|truncate|returning|pg_notify|lock\s+table)\b|(?:update\s+(?:only\s+)?|from\s+|join\s+|into\s+)tm_)/i;

/** Literals of a source file that look like SQL on taskmill's tables, with their line numbers. */
export function sqlOnTaskmillTables(source: string): { line: number; text: string }[] {
  const found: { line: number; text: string }[] = [];
  for (const match of source.matchAll(LITERAL)) {
    const text = match[0];
    if (TABLE.test(text) && SQL_KEYWORD.test(text)) {
      found.push({ line: source.slice(0, match.index).split('\n').length, text: text.slice(0, 80) });
    }
  }
  return found;
}

describe('SQL on taskmill tables', () => {
  it('the detector finds SQL in literals and ignores prose', () => {
    expect(sqlOnTaskmillTables('q(`select id from tm_tasks where id = $1`)')).toHaveLength(1);
    expect(sqlOnTaskmillTables("q('delete from tm_nodes where id = $1')")).toHaveLength(1);
    expect(sqlOnTaskmillTables("q('update tm_tasks t set state = $1 where id = $2')")).toHaveLength(1);
    expect(
      sqlOnTaskmillTables('q(`with a as (update tm_tasks t set state = $1 returning t.id) select 1`)'),
    ).toHaveLength(1);
    expect(
      sqlOnTaskmillTables("log('identity sequence of tm_tasks; counts rolled-back inserts too')"),
    ).toEqual([]);
    expect(sqlOnTaskmillTables('// select id from tm_tasks (a comment)\nconst x = 1;')).toEqual([]);
  });

  it('appears only in store/ and migrations/', () => {
    const offenders = sourceFiles(ROOT).flatMap((file) =>
      sqlOnTaskmillTables(readFileSync(file, 'utf8')).map(
        (f) => `${path.relative(ROOT, file)}:${f.line}: ${f.text}`,
      ),
    );
    expect(offenders).toEqual([]);
  });
});

/** Relative imports (static and dynamic) of a source file, as repository paths. */
function importsOf(file: string): string[] {
  const source = readFileSync(file, 'utf8');
  const specs = [
    ...source.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm),
  ].map((m) => m[1]);
  return specs.map((s) => path.relative(ROOT, path.resolve(path.dirname(file), s)));
}

const topFolder = (file: string) => file.split(path.sep)[0];

/** The top-level folders each folder imports from, with one import that shows each edge. */
export function folderGraph(files: string[]): Map<string, Map<string, string>> {
  const graph = new Map<string, Map<string, string>>();
  for (const file of files) {
    const from = topFolder(path.relative(ROOT, file));
    for (const target of importsOf(file)) {
      const to = topFolder(target);
      if (to === from || to.startsWith('..') || !statSafe(path.join(ROOT, to))) continue;
      if (!graph.has(from)) graph.set(from, new Map());
      if (!graph.get(from)!.has(to)) graph.get(from)!.set(to, `${path.relative(ROOT, file)} -> ${target}`);
    }
  }
  return graph;
}

function statSafe(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** Every cycle of the graph, each as the folders on it and the imports that close it. */
export function cycles(graph: Map<string, Map<string, string>>): string[][] {
  const found: string[][] = [];
  const seen = new Set<string>();
  const visit = (node: string, stack: string[]) => {
    const at = stack.indexOf(node);
    if (at >= 0) {
      const loop = stack.slice(at);
      const key = [...loop].sort().join(',');
      if (!seen.has(key)) {
        seen.add(key);
        found.push(loop.map((n, i) => graph.get(n)!.get(loop[(i + 1) % loop.length])!));
      }
      return;
    }
    for (const next of graph.get(node)?.keys() ?? []) visit(next, [...stack, node]);
  };
  for (const node of graph.keys()) visit(node, []);
  return found;
}

describe('dependencies between top-level folders', () => {
  it('the cycle finder finds a cycle and its imports', () => {
    const graph = new Map([
      ['a', new Map([['b', 'a/x.ts -> b/y.ts']])],
      ['b', new Map([['a', 'b/y.ts -> a/z.ts']])],
    ]);
    expect(cycles(graph)).toEqual([['a/x.ts -> b/y.ts', 'b/y.ts -> a/z.ts']]);
  });

  it('run one way: no folder imports, directly or not, a folder that imports it', () => {
    const all = sourceFiles(ROOT, true, new Set(['node_modules', 'dist', 'results', '.git', '.taskmill']));
    expect(cycles(folderGraph(all))).toEqual([]);
  });
});

describe('the NOTIFY channels', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
  });

  it('the planner channel is the same name in TypeScript and in the database', async () => {
    const { rows } = await db.pool.query<{ channel: string }>(`select tm_planner_channel() as channel`);
    expect(rows[0].channel).toBe(PLANNER_CHANNEL);
  });

  it('the planner channel is written in no function but tm_planner_channel()', async () => {
    const { rows } = await db.pool.query<{ name: string }>(
      `select p.proname as name from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'public' and p.prosrc like '%' || $1 || '%' order by 1`,
      [PLANNER_CHANNEL],
    );
    expect(rows.map((r) => r.name)).toEqual(['tm_planner_channel']);
  });

  it('the task-ended channel: the one function that notifies it names the same channel', async () => {
    const { rows } = await db.pool.query<{ name: string }>(
      `select p.proname as name from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'public' and p.prosrc like '%pg_notify(''' || $1 || '''%' order by 1`,
      [TASK_ENDED_CHANNEL],
    );
    expect(rows.map((r) => r.name)).toEqual(['tm_notify_task_ended']);
  });
});
