/**
 * The docs walk-through (issue #15): README.md and docs/*.md followed the way a newcomer follows them,
 * in a new, empty project that installs the packed package. Each doc is walked block by block, in order:
 *
 * - a ```ts or ```js block whose first line names a file (`// tasks.ts`) is written to that file; when
 *   that line also gives a command naming the file (`` // quickstart.ts: `npx tsx quickstart.ts` ``),
 *   the command runs, and must print what the `console.log(...); // <output>` comments of the block say;
 * - a ```ts block marked `// fragment` (an excerpt that cannot run alone) is type-checked in the
 *   context FRAGMENT_CONTEXTS gives it, and run in it unless it only declares a type;
 * - each command of a ```sh block runs as written with sh in the project (its node_modules/.bin on
 *   PATH, as after a global install), and must exit with 0. `taskmill node` and `taskmill serve` keep
 *   running in the background until the doc is done, then get Ctrl-C and must stop gracefully. `db` and
 *   `migrate` commands manage the project's embedded PostgreSQL (no DATABASE_URL, as the docs describe);
 *   every other command runs against the test database (DATABASE_URL: the embedded test server, or the
 *   stock PostgreSQL CI names). `# => ID` takes a command's output (`# => ID=id`: a field of its JSON)
 *   as `$ID` for the next ones. `curl` fails on HTTP errors (`fail-with-body` in the project's curlrc);
 * - a ```sql block runs on the test database;
 * - a plain ``` block is output shown for reading: not run.
 *
 * TypeScript runs with tsx, which the README has the project install from the npm registry (its cache
 * here); the repository's tsc type-checks every .ts file and fragment (strict, nodenext) against the
 * declarations the package publishes, and every file is imported with tsx. The last test checks that
 * every block and command of the docs was run, or is excluded in EXCLUDED with its reason, so a doc
 * edit that adds a step or breaks one fails here.
 */
import { randomUUID } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { v7 as uuidv7 } from 'uuid';
import { encode } from '../task/codec.ts';
import { freePort } from '../store/database.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { codeBlocks, FRAGMENT_MARK, shellCommands, type CodeBlock } from './helpers/doc-examples.ts';
import {
  expectOk,
  NPM_ENV,
  packPackage,
  run,
  TARBALL,
  typeCheck,
  type Run,
} from './helpers/package-project.ts';
import { interrupt, killAll, startShell, type ShellProcess } from './helpers/shell-process.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
/** The docs, in the order a newcomer reads them: README.md first (it installs the package). */
const DOCS = [
  'README.md',
  'docs/operations.md',
  'docs/cron.md',
  'docs/shell-tasks.md',
  'docs/dead-letters.md',
  'docs/limits.md',
  'docs/history.md',
  'docs/awaiting-and-dedup.md',
  'docs/flow-control.md',
  'docs/observability.md',
  'docs/durable-waits.md',
  'docs/connections.md',
  'docs/scaling.md',
  'docs/network-faults.md',
];
// A whole document on a loaded 2-core machine: README took 144 s beside two other test files and
// three builds, so the deadline leaves room for more.
const DOC_MS = 480_000;
const READY_MS = 60_000;
const STOP_MS = 60_000;

/** Lines of the docs not run here, each with its reason; every rule must match some line. */
const EXCLUDED: { match: RegExp; reason: string }[] = [
  {
    match: /^npm (install && npm run demo|test)\b/,
    reason:
      'development commands of a checkout of this repository: the demo runs bench/ and `npm test` is the ' +
      'suite this test belongs to; the package ships neither',
  },
  {
    match: /\btaskmill bench\b/,
    reason:
      'benchmarks run from a checkout (the package does not ship bench/, as the docs say); ' +
      'test/cli.test.ts and test/bench.test.ts run them there',
  },
];

/** How a line is changed before it runs, and why (`port()` gives a free port). */
const SUBSTITUTIONS: {
  match: RegExp;
  replace: (matched: string, port: () => number) => string;
  reason: string;
}[] = [
  {
    match: /^npm install taskmill\b/,
    replace: () => `npm install ./${TARBALL}`,
    reason: "the registry's taskmill is not the build under test: the line's comment gives this form",
  },
  {
    match: /\b(?:127\.0\.0\.1|0\.0\.0\.0):8080\b/g,
    replace: (matched, port) => matched.replace(/8080$/, String(port())),
    reason: 'port 8080 may be taken on the machine that runs the tests',
  },
];

const SAME = 'type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;';
const DEAD_LETTERS = `import pg from 'pg';
import { getDeadLetter, listDeadLetters, purgeDeadLetters, requeueDeadLetters } from 'taskmill';
interface InvoiceMessage { invoice: string }
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
// Three dead letters of send-invoice, written by the test.
const [a, b, id] = process.env.DEAD_LETTERS!.split(',');`;

interface FragmentContext {
  doc: string;
  /** The first line of the fragment's code. */
  first: string;
  before: string;
  after?: string;
  /** Whether the fragment, in its context, also runs (with tsx, DATABASE_URL set); else it is only type-checked. */
  run?: boolean;
  /** Writes what the fragment works on before it runs; returns variables of its environment. */
  setup?: () => Promise<Record<string, string>>;
}

/**
 * What each `// fragment` block needs around it to type-check and, where it can, to run (its doc, and
 * the first line of its code). A fragment that declares a type of the package must declare the
 * published one: those only type-check.
 */
const FRAGMENT_CONTEXTS: FragmentContext[] = [
  {
    doc: 'docs/cron.md',
    first: 'interface CronMessage {',
    before: `import type * as taskmill from 'taskmill';\n${SAME}`,
    after: 'export const same: Same<CronMessage, taskmill.CronMessage> = true;',
  },
  {
    doc: 'docs/shell-tasks.md',
    first: "import { shellTask, startNode } from 'taskmill';",
    before: "const connectionString = process.env.DATABASE_URL!;\nconst secret = 'not-a-secret';",
    after: 'await node.stop();',
    run: true,
  },
  {
    doc: 'docs/shell-tasks.md',
    first: 'interface ShellResult {',
    before: `import type * as taskmill from 'taskmill';\n${SAME}`,
    after: 'export const same: Same<ShellResult, taskmill.ShellResult> = true;',
  },
  ...[
    'const page = await listDeadLetters(',
    'const dead = await getDeadLetter<',
    'await requeueDeadLetters(',
    'await purgeDeadLetters(',
  ].map((first) => ({
    doc: 'docs/dead-letters.md',
    first,
    before: DEAD_LETTERS,
    after: 'await pool.end();',
    run: true,
    setup: sendInvoiceDeadLetters,
  })),
  {
    doc: 'docs/limits.md',
    first: 'const node = await startNode({',
    before: "import { startNode, type TaskDefinition } from 'taskmill';\nconst tasks: TaskDefinition[] = [];",
    after: 'await node.stop();',
    run: true,
  },
  {
    // Through a PgBouncer and a server the walk-through does not have: type-checked only.
    doc: 'docs/connections.md',
    first: 'const node = await startNode({',
    before: "import { startNode, type TaskDefinition } from 'taskmill';\nconst tasks: TaskDefinition[] = [];",
  },
  {
    doc: 'docs/scaling.md',
    first: "import { ShardedClient } from 'taskmill';",
    before:
      "import { defineTask } from 'taskmill';\n" +
      "const sendInvoice = defineTask<{ invoice: string }>({ name: 'send-invoice', handler: new URL('./send-invoice.ts', import.meta.url) });",
  },
  {
    doc: 'docs/flow-control.md',
    first: "await client.setConcurrencyLimit('tenant:*', 5);",
    before: "import { TaskmillClient } from 'taskmill';\nconst client = new TaskmillClient();",
    after:
      "await client.setConcurrencyLimit('tenant:*', null);\nawait client.setRateLimit('api:github', null);\nawait client.close();",
    run: true,
  },
];

/** Three dead letters of `send-invoice` (none of an earlier run left): their ids, as DEAD_LETTERS. */
async function sendInvoiceDeadLetters(): Promise<Record<string, string>> {
  await db.pool.query(`delete from tm_dead_letters where name = 'send-invoice'`);
  await db.pool.query(`delete from tm_tasks where name = 'send-invoice'`);
  const ids = [uuidv7(), uuidv7(), uuidv7()];
  await db.pool.query(
    `insert into tm_dead_letters (id, name, workflow_id, workflow_created_at, strict_affinity, message, priority,
       attempts, error, created_at, failed_at)
     select id, 'send-invoice', gen_random_uuid(), now(), false, $2, 0, 3, 'Error: SMTP 550', now(), now()
     from unnest($1::uuid[]) as id`,
    [ids, encode({ invoice: 'INV-1' })],
  );
  return { DEAD_LETTERS: ids.join(',') };
}

/** What became of each block and command of the docs, for the coverage check and the summary. */
interface Step {
  where: string;
  what: string;
  outcome: string;
}

let tmp: string;
let project: string;
let db: TestDatabase;
const steps: Step[] = [];
/** Variables of the commands: the ones the docs leave to the reader, and those `# => X` captured. */
const vars: Record<string, string> = {};
/** Files the docs name, in the order written; fragments, as files to type-check. */
const files: { name: string; runBy?: string }[] = [];
const fragments: { name: string; context: FragmentContext }[] = [];
const usedContexts = new Set<FragmentContext>();
/** The docs walked to their end. */
const walked = new Set<string>();
const usedExclusions = new Set<(typeof EXCLUDED)[number]>();
/** The doc's commands that run in the background, as run (after substitutions). */
let background: { command: string; shell: ShellProcess }[] = [];

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'taskmill-docs-'));
  // Run as root, the embedded server runs as the user postgres, which must reach the project.
  chmodSync(tmp, 0o755);
  project = path.join(tmp, 'app');
  mkdirSync(project);
  // `npm pack` in this repository stands in for the registry: the README installs the tarball.
  copyFileSync(await packPackage(inject('templateDb'), baseEnv()), path.join(project, TARBALL));
  mkdirSync(path.join(tmp, 'curl'));
  writeFileSync(path.join(tmp, 'curl', '.curlrc'), 'fail-with-body\nshow-error\n');
  db = await createTestDatabase();
  Object.assign(vars, {
    DATABASE_URL: db.url,
    TASKMILL_HTTP_TOKEN: `walkthrough-${randomUUID()}`,
    WORKFLOW: randomUUID(),
  });
}, DOC_MS);

afterAll(async () => {
  await killAll();
  if (project && existsSync(path.join(project, '.taskmill', 'pg.pid'))) {
    await run(path.join(project, 'node_modules', '.bin', 'taskmill'), ['db', 'stop'], {
      cwd: project,
      env: baseEnv(),
    });
  }
  await db?.drop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
}, DOC_MS);

/** A user's environment in the project: no DATABASE_URL, no loader flags, no variables of vitest. */
function baseEnv(): NodeJS.ProcessEnv {
  return {
    PATH: `${project ? `${path.join(project, 'node_modules', '.bin')}:` : ''}${process.env.PATH}`,
    HOME: process.env.HOME,
    CURL_HOME: tmp && path.join(tmp, 'curl'),
    ...NPM_ENV,
  };
}

describe('the docs, followed in a new project that installs the package', () => {
  for (const doc of DOCS) {
    it(`walks ${doc}`, () => walk(doc), DOC_MS);
  }

  it(
    'type-checks every TypeScript file and fragment against the published declarations',
    async () => {
      const tsFiles = files.map((f) => f.name).filter((name) => name.endsWith('.ts'));
      const result = await typeCheck(
        project,
        { files: [...tsFiles, ...fragments.map((f) => f.name)] },
        // The declarations themselves are checked by test/consumer.test.ts; here, the docs' code.
        { allowImportingTsExtensions: true, skipLibCheck: true },
      );
      expect(result.stdout + result.stderr).toBe('');
      expect(result.code).toBe(0);
    },
    DOC_MS,
  );

  it(
    'runs the fragments that can run in their context',
    async () => {
      for (const { name, context } of fragments.filter((f) => f.context.run)) {
        const env = { ...baseEnv(), DATABASE_URL: db.url, ...(await context.setup?.()) };
        const result = await run(process.execPath, ['--import', 'tsx', name], { cwd: project, env });
        expect(
          result.code,
          `${name} (${context.doc}: ${context.first})\n${result.stdout}\n${result.stderr}`,
        ).toBe(0);
      }
    },
    DOC_MS,
  );

  it('loads every file the docs name that no command of theirs runs', async () => {
    const loaded = files.filter((f) => !f.runBy).map((f) => pathToFileURL(path.join(project, f.name)).href);
    const script = `for (const file of ${JSON.stringify(loaded)}) await import(file);`;
    expectOk(
      await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        cwd: project,
        env: { ...baseEnv(), DATABASE_URL: db.url },
      }),
    );
  });

  it('ran every block and command of the docs, or excludes it with its reason', () => {
    const excluded = steps.filter((s) => s.outcome.startsWith('excluded'));
    console.log(
      `docs walk-through: ${steps.length - excluded.length} blocks and commands run or checked, ` +
        `${excluded.length} excluded:\n` +
        steps.map((s) => `  ${s.where}  ${s.what.split('\n')[0].slice(0, 90)}  -> ${s.outcome}`).join('\n'),
    );
    const docsNow = [
      'README.md',
      ...readdirSync(path.join(ROOT, 'docs'))
        .filter((f) => f.endsWith('.md'))
        .map((f) => `docs/${f}`),
    ];
    expect([...DOCS].sort(), 'every doc is walked').toEqual(docsNow.sort());
    // A doc whose walk failed has not met all its lines: its failure is the one to read.
    if (walked.size < DOCS.length) return;
    expect(
      EXCLUDED.filter((rule) => !usedExclusions.has(rule)).map((r) => String(r.match)),
      'exclusions that match no line of the docs any more',
    ).toEqual([]);
    expect(
      FRAGMENT_CONTEXTS.filter((c) => !usedContexts.has(c)).map((c) => `${c.doc}: ${c.first}`),
      'fragment contexts that match no fragment any more',
    ).toEqual([]);
  });
});

async function walk(doc: string): Promise<void> {
  const markdown = readFileSync(path.join(ROOT, doc), 'utf8');
  try {
    for (const block of codeBlocks(markdown)) await walkBlock(doc, block);
  } catch (error) {
    // The step that failed is the error; what the doc's nodes said meanwhile helps to read it.
    for (const { command, shell: process } of background) console.log(`--- ${command}\n${process.output()}`);
    background = [];
    await killAll();
    throw error;
  } finally {
    delete vars.TASKMILL_URL;
  }
  await stopBackground();
  walked.add(doc);
}

async function walkBlock(doc: string, block: CodeBlock): Promise<void> {
  const where = `${doc}:${block.line}`;
  const record = (what: string, outcome: string) => steps.push({ where, what, outcome });
  if (block.lang === 'sh') {
    for (const command of shellCommands(block.body)) {
      await runCommand(`${doc}:${block.line + 1 + command.line}`, command.text);
    }
  } else if (block.lang === 'ts' || block.lang === 'js') {
    const [first] = block.body.split('\n');
    if (first === FRAGMENT_MARK) {
      const code = block.body.slice(first.length + 1);
      const context = FRAGMENT_CONTEXTS.find((c) => c.doc === doc && code.startsWith(c.first));
      if (!context) throw new Error(`${where}: a fragment with no context in FRAGMENT_CONTEXTS:\n${code}`);
      usedContexts.add(context);
      const name = `fragment-${fragments.length + 1}.ts`;
      writeFileSync(
        path.join(project, name),
        `// ${where}\n${context.before}\n${code}${context.after ?? ''}\nexport {};\n`,
      );
      fragments.push({ name, context });
      record(code, `fragment: type-checked${context.run ? ' and run' : ''} in context as ${name}`);
      return;
    }
    const named = /^\/\/ ([\w.-]+\.(?:ts|mjs|js))(?::(.*))?$/.exec(first);
    if (!named)
      throw new Error(`${where}: a ${block.lang} block names no file and is not marked ${FRAGMENT_MARK}`);
    const [, name, note] = named;
    writeFileSync(path.join(project, name), block.body);
    const command = /`([^`]+)`/.exec(note ?? '')?.[1];
    if (command?.includes(name)) {
      files.push({ name, runBy: command });
      const expected = [...block.body.matchAll(/console\.log\(.*\);? \/\/ (.*)$/gm)].map((m) => `${m[1]}\n`);
      const result = await shell(command, { DATABASE_URL: db.url });
      expect(result.code, `${where}: ${command}\n${result.stdout}\n${result.stderr}`).toBe(0);
      expect(result.stdout, `${where}: ${command}`).toBe(expected.join(''));
      record(first, `written, ran \`${command}\``);
    } else {
      files.push({ name });
      record(first, `written (${name.endsWith('.ts') ? 'type-checked and ' : ''}loaded below)`);
    }
  } else if (block.lang === 'sql') {
    await db.pool.query(block.body);
    record(block.body, 'ran on the test database');
  } else if (block.lang === '') {
    record(block.body, 'excluded: output shown for reading, not a command');
  } else {
    throw new Error(`${where}: a \`\`\`${block.lang} block, which the walk-through does not know`);
  }
}

async function runCommand(where: string, written: string): Promise<void> {
  const started = Date.now();
  const took = () => ` [${((Date.now() - started) / 1000).toFixed(1)} s]`;
  const exclusion = EXCLUDED.find((rule) => rule.match.test(written));
  if (exclusion) {
    usedExclusions.add(exclusion);
    steps.push({ where, what: written, outcome: `excluded: ${exclusion.reason}` });
    return;
  }
  let command = written;
  const ports = await Promise.all([0, 1].map(() => freePort()));
  for (const { match, replace } of SUBSTITUTIONS) {
    command = command.replace(match, (matched) => replace(matched, () => ports.shift()!));
  }
  const sub = /(?:^|\s)taskmill (\w[\w-]*)/.exec(command)?.[1];
  const env = commandEnv(command);
  // The embedded server's commands: the project's own PostgreSQL, found through ./.taskmill/pg.
  if (sub === 'db' || sub === 'migrate') delete env.DATABASE_URL;
  const restarted = await registerCronsBeforeRemoval(command);
  const outcome =
    (command === written ? 'ran' : `ran as \`${command}\``) +
    (restarted ? " (after restarting the doc's nodes, which register the cron again)" : '');
  if (sub === 'node' || sub === 'serve' || sub === 'cluster') {
    await startBackground(where, command, env);
    steps.push({
      where,
      what: written,
      outcome: `${outcome} (in the background until the doc is done)${took()}`,
    });
    return;
  }
  const result = await shell(command, env);
  expect(
    result.code,
    `${where}: ${command}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`,
  ).toBe(0);
  const capture = /# => (\w+)(?:=(\w+))?/.exec(written);
  if (capture) {
    const [, name, field] = capture;
    vars[name] = field
      ? String((JSON.parse(result.stdout) as Record<string, unknown>)[field])
      : result.stdout.trim();
  }
  steps.push({ where, what: written, outcome: outcome + took() });
}

/**
 * The variables a command sees: DATABASE_URL, and those it names (`$ID`): a reader who sets
 * TASKMILL_HTTP_TOKEN for `taskmill serve` does not have every node of the page require it.
 */
function commandEnv(command: string): Record<string, string> {
  const env: Record<string, string> = { DATABASE_URL: vars.DATABASE_URL };
  for (const [name, value] of Object.entries(vars)) {
    if (new RegExp(`\\$(${name}\\b|\\{${name}\\})`).test(command)) env[name] = value;
  }
  return env;
}

function shell(command: string, env: Record<string, string>): Promise<Run> {
  return run('sh', ['-c', command], { cwd: project, env: { ...baseEnv(), ...env } });
}

async function startBackground(where: string, command: string, env: Record<string, string>): Promise<void> {
  // A terminal's Ctrl-C reaches the whole group; the trap keeps sh waiting for the command's own exit.
  const started = startShell(`trap : INT; ${command}`, { cwd: project, env: { ...baseEnv(), ...env } });
  background.push({ command, shell: started });
  const failed = (error: unknown) => new Error(`${where}: ${String(error)}`);
  if (/\btaskmill serve\b/.test(command)) {
    await started.waitForLine(/^serving (\S+)/, READY_MS).catch((e: unknown) => Promise.reject(failed(e)));
    return;
  }
  if (/\btaskmill cluster\b/.test(command)) {
    // Every node process of the cluster reports itself started once its node has registered.
    const nodes = Number(/--nodes (\d+)/.exec(command)?.[1] ?? 1);
    await Promise.all(
      Array.from({ length: nodes }, (_, i) =>
        started.waitForLine(new RegExp(`^\\[cluster\\] node-${i + 1} started`), READY_MS),
      ),
    ).catch((e: unknown) => Promise.reject(failed(e)));
    return;
  }
  await started
    .waitForLine(/"msg":"node started"/, READY_MS)
    .catch((e: unknown) => Promise.reject(failed(e)));
  if (/--http\b/.test(command)) {
    const line = await started.waitForLine(/"url":"([^"]+)".*"msg":"HTTP API listening"/, READY_MS);
    // The docs' requests carry no token: they go to the first server that needs none.
    vars.TASKMILL_URL ??= line[1];
  }
}

/** Ctrl-C to every background command of the doc; each must stop by itself, a node gracefully. */
async function stopBackground(): Promise<void> {
  const stopping = background;
  background = [];
  for (const { command, shell: shellProcess } of stopping) {
    const code = await interrupt(shellProcess, STOP_MS);
    // npx reports a program it ran as interrupted (130) whatever its exit code.
    const expected = /(^|\s)npx /.test(command) ? [0, 130] : [0];
    expect(expected, `${command} exited with ${code}:\n${shellProcess.output()}`).toContain(code);
    if (/\btaskmill node\b/.test(command)) {
      expect(shellProcess.output(), command).toMatch(/"msg":"node stopped"/);
    }
  }
}

/**
 * A doc that removes a cron twice (CLI, then HTTP) removes what its node registered: as cron.md says, a
 * node that starts with the cron in its definitions registers it again, so the walk-through restarts
 * the doc's nodes before a removal that would find no cron.
 */
async function registerCronsBeforeRemoval(command: string): Promise<boolean> {
  const name = /\bcron remove ([\w.:-]+)|-X DELETE \S*\/api\/crons\/([\w.:-]+)/
    .exec(command)
    ?.slice(1)
    .find(Boolean);
  if (!name || (await cronRegistered(name))) return false;
  const nodes = background.filter((b) => /\btaskmill node\b/.test(b.command));
  await stopBackground();
  for (const node of nodes) await startBackground('(restart)', node.command, commandEnv(node.command));
  expect(await cronRegistered(name), `no node of the doc registers the cron ${name}`).toBe(true);
  return true;
}

async function cronRegistered(name: string): Promise<boolean> {
  const { rowCount } = await db.pool.query('select 1 from tm_cron where name = $1', [name]);
  return rowCount === 1;
}
