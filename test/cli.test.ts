import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildProgram, loadCommands, runCli } from '../cli/main.ts';
import { runCliCaptured, type CliRun, type CliRunOptions } from './helpers/cli.ts';
import { EXIT } from '../cli/output.ts';
import { freePort } from '../store/database.ts';
import { TaskmillClient } from '../client/client.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { docExamples, shellWords } from './helpers/doc-examples.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const BIN = path.join(ROOT, 'cli/taskmill.mjs');
const FIXTURES = 'test/fixtures/definitions.ts';
const db = useTestDatabase();
let tmp: string;
/** Environment of in-process commands: no DATABASE_URL, and an embedded data folder where none runs. */
let env: NodeJS.ProcessEnv;
/** Waits for the tasks the commands schedule to end (woken by the task-ended notification). */
let client: TaskmillClient;

beforeAll(async () => {
  tmp = mkdtempSync(path.join(tmpdir(), 'taskmill-cli-'));
  // The embedded server runs as user postgres when the tests run as root: it must reach its data folder.
  chmodSync(tmp, 0o755);
  env = { PATH: process.env.PATH, HOME: process.env.HOME, TASKMILL_DATA_DIR: path.join(tmp, 'no-server') };
  client = new TaskmillClient({ pool: db.pool });
});
afterAll(async () => {
  await client.close();
  rmSync(tmp, { recursive: true, force: true });
});

type Run = CliRun;

/** Runs one command line in this process, against the file's database unless `url` says otherwise. */
function cli(args: string[], options: Partial<CliRunOptions> = {}): Promise<Run> {
  return runCliCaptured(args, {
    ...options,
    url: options.url === undefined ? db.url : options.url,
    env: options.env ?? env,
    cwd: ROOT,
  });
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- command output is checked field by field
type Json = any;

async function json<T = Json>(args: string[]): Promise<T> {
  const run = await cli([...args, '--json']);
  expect(run.code, run.err).toBe(0);
  return JSON.parse(run.out) as T;
}

/** A running in-process `taskmill node`. */
async function startCliNode(name: string, extra: string[] = []) {
  const controller = new AbortController();
  const done = cli(
    ['node', '--tasks', FIXTURES, '--name', name, '--threads', '1', '--log-level', 'silent', ...extra],
    {
      signal: controller.signal,
    },
  );
  await until(
    async () => (await count(db.pool, `select count(*) from tm_nodes where name = $1`, [name])) === 1,
    20_000,
  );
  return {
    stop: async () => {
      controller.abort('SIGTERM');
      return done;
    },
  };
}

await loadCommands();

describe('every command', () => {
  function paths(command: Command, prefix: string[] = []): string[][] {
    return command.commands
      .filter((c) => !(c as unknown as { _hidden: boolean })._hidden)
      .flatMap((c) => [[...prefix, c.name()], ...paths(c, [...prefix, c.name()])]);
  }
  const all = paths(
    buildProgram({
      io: { out: () => {}, err: () => {}, env: {}, cwd: ROOT, signal: new AbortController().signal },
      exit: () => {},
    }),
  );

  it('lists the operator commands', () => {
    expect(all.map((p) => p.join(' '))).toEqual(
      expect.arrayContaining([
        'db start',
        'db stop',
        'db status',
        'migrate up',
        'migrate status',
        'node',
        'serve',
        'schedule',
        'status',
        'task show',
        'task cancel',
        'task list',
        'workflow show',
        'workflow cancel',
        'workflow wait',
        'dlt list',
        'dlt show',
        'dlt requeue',
        'dlt purge',
        'cron list',
        'cron remove',
        'bench',
        'results',
      ]),
    );
  });

  it('has --help everywhere (exit code 0)', async () => {
    for (const p of [[], ...all]) {
      const args = ['bench', 'results'].includes(p[0]) ? ['help', ...p] : [...p, '--help'];
      const run = await cli(args, { url: null });
      expect(run.code, args.join(' ')).toBe(EXIT.OK);
      expect(run.out, args.join(' ')).toContain(`Usage: taskmill${p.length ? ` ${p.join(' ')}` : ''}`);
    }
  });

  it.each([
    [['frobnicate'], /unknown command/],
    [['task', 'list', '--limit', '0'], /--limit must be an integer between 1 and 1000/],
    [['schedule'], /missing required argument 'name'/],
    [['node'], /required option '-t, --tasks <module...>'/],
  ])('refuses %j as a usage error (exit code 2)', async (args, message) => {
    const run = await cli(args);
    expect(run.code).toBe(EXIT.USAGE);
    expect(run.err).toMatch(message);
  });

  it('says how to get a database when none is configured or running (exit code 5)', async () => {
    const run = await cli(['status'], { url: null });
    expect(run.code).toBe(EXIT.UNAVAILABLE);
    expect(run.err).toMatch(/taskmill db start/);
  });
});

describe('migrate', () => {
  it('reports pending migrations, applies them, then reports none', async () => {
    const fresh = await db.another({ migrated: false });
    try {
      const before = await cli(['migrate', 'status', '--json'], { url: fresh.url });
      expect(before.code).toBe(EXIT.UNAVAILABLE);
      expect(JSON.parse(before.out).pending.length).toBeGreaterThan(0);
      const up = await cli(['migrate', 'up'], { url: fresh.url });
      expect(up.code, up.err).toBe(0);
      expect(up.out).toMatch(/^applied 001/);
      const after = await cli(['migrate', 'status'], { url: fresh.url });
      expect(after.code).toBe(0);
      expect(after.out).not.toMatch(/pending/);
      expect((await cli(['migrate', 'up'], { url: fresh.url })).out).toBe('up to date\n');
    } finally {
      await fresh.drop();
    }
  });
});

describe('with a node running (in-process `taskmill node`)', () => {
  let node: Awaited<ReturnType<typeof startCliNode>>;
  let httpPort: number;
  beforeAll(async () => {
    httpPort = await freePort();
    node = await startCliNode('cli-node', ['--http', `127.0.0.1:${httpPort}`, '--max-parallel', '8']);
  });
  afterAll(async () => {
    const stopped = await node.stop();
    expect(stopped.code, stopped.err).toBe(0);
    expect(await count(db.pool, `select count(*) from tm_nodes where name = 'cli-node'`)).toBe(0);
  });

  it('schedules a task and shows its result', async () => {
    const run = await cli(['schedule', 'echo', '--message', '{"hello": "cli"}']);
    expect(run.code, run.err).toBe(0);
    const id = run.out.trim();
    await client.waitForTask(id, { timeoutMs: 30_000 });
    expect(await json(['task', 'show', id])).toMatchObject({
      name: 'echo',
      result: { message: { hello: 'cli' } },
    });
    const text = await cli(['task', 'show', id]);
    expect(text.out).toMatch(/^state: +completed$/m);
  });

  it('schedules copies with a delay, lists them a page at a time, and cancels one', async () => {
    const workflow = '0190a5b2-0000-7000-8000-00000000c11a';
    const { ids } = await json<{ ids: string[] }>([
      'schedule',
      'noop',
      '--delay',
      '3600000',
      '--count',
      '3',
      '--workflow',
      workflow,
      '--priority',
      '3',
    ]);
    expect(ids).toHaveLength(3);
    const page1 = await cli(['task', 'list', '--workflow', workflow, '--limit', '2']);
    expect(page1.out).toMatch(/next page: --cursor ([0-9a-f-]{36})/);
    const cursor = /--cursor (\S+)/.exec(page1.out)![1];
    const page2 = await json<{ tasks: { id: string }[]; nextCursor: null }>([
      'task',
      'list',
      '--workflow',
      workflow,
      '--limit',
      '2',
      '--cursor',
      cursor,
    ]);
    expect(page2.tasks.map((t) => t.id)).toEqual([ids[0]]);
    expect(page2.nextCursor).toBeNull();

    expect((await cli(['task', 'cancel', ids[0]])).out).toBe(`cancelled ${ids[0]}\n`);
    const again = await cli(['task', 'cancel', ids[0]]);
    expect(again.code).toBe(EXIT.CONFLICT);
    expect(again.err).toMatch(/already ended/);

    expect(await json(['workflow', 'show', workflow])).toMatchObject({ ready: 2, cancelled: 1, done: false });
    expect(await json(['workflow', 'cancel', workflow])).toMatchObject({ cancelled: 2, requested: 0 });
    expect(await json(['workflow', 'wait', workflow, '--timeout', '5000'])).toMatchObject({
      done: true,
      cancelled: 3,
    });
  });

  it.each([
    [['schedule', 'nope'], EXIT.USAGE, /Unknown task "nope"/],
    [['schedule', 'noop', '--message', '{oops'], EXIT.USAGE, /--message must be JSON/],
    [['schedule', 'noop', '--delay', '5', '--at', '2030-01-01T00:00:00Z'], EXIT.USAGE, /--delay or --at/],
    [['schedule', 'noop', '--at', 'soon'], EXIT.USAGE, /--at must be/],
    [['schedule', 'noop', '--workflow', 'w1'], EXIT.USAGE, /workflowId must be a UUID/],
    [['task', 'show', '0190a5b2-0000-7000-8000-0000000000ff'], EXIT.NOT_FOUND, /No task/],
    [['task', 'show', 'x'], EXIT.USAGE, /must be a UUID/],
    [['workflow', 'show', '0190a5b2-0000-7000-8000-0000000000ff'], EXIT.NOT_FOUND, /No workflow/],
    [['dlt', 'requeue'], EXIT.USAGE, /exactly one/],
    [['dlt', 'requeue', '0190a5b2-0000-7000-8000-0000000000ff'], EXIT.NOT_FOUND, /nothing was changed/],
    [['dlt', 'purge', '--all', '--name', 'noop'], EXIT.USAGE, /Give task ids/],
  ])('%j fails with exit code %i and changes nothing', async (args, code, message) => {
    const before = await count(
      db.pool,
      `select (select count(*) from tm_tasks) + (select count(*) from tm_history)`,
    );
    const run = await cli(args);
    expect(run.code).toBe(code);
    expect(run.err).toMatch(message);
    expect(
      await count(db.pool, `select (select count(*) from tm_tasks) + (select count(*) from tm_history)`),
    ).toBe(before);
  });

  it('lists, shows, requeues and purges dead letters', async () => {
    const id = (await cli(['schedule', 'throws'])).out.trim();
    expect(await client.waitForTask(id, { timeoutMs: 30_000 })).toMatchObject({ state: 'dead' });
    const list = await json<{ deadLetters: { id: string; name: string }[] }>([
      'dlt',
      'list',
      '--name',
      'throws',
    ]);
    expect(list.deadLetters.map((d) => d.id)).toContain(id);
    expect((await cli(['dlt', 'show', id])).out).toMatch(/throws .*3 attempts/);
    expect(await json(['dlt', 'requeue', id])).toEqual({ requeued: [id] });
    // It fails again and comes back to the dead-letter table.
    expect(await client.waitForTask(id, { timeoutMs: 30_000 })).toMatchObject({ state: 'dead' });
    expect((await cli(['dlt', 'purge', '--name', 'throws'])).out).toMatch(/^purged [1-9]/);
    expect(await count(db.pool, `select count(*) from tm_dead_letters`)).toBe(0);
  });

  it('shows the cluster status as text and JSON', async () => {
    const stats = await json(['status', '--window', '5', '--bucket', '60']);
    expect(stats.nodes).toEqual([
      expect.objectContaining({ name: 'cli-node', alive: true, leader: true, capacity: 8 }),
    ]);
    expect(stats.leader.nodeName).toBe('cli-node');
    expect(stats.throughput.buckets).toHaveLength(5);
    const text = (await cli(['status'])).out;
    expect(text).toMatch(/^leader: cli-node/m);
    expect(text).toMatch(/^ {2}cli-node +alive +yes +\d+ +8 /m);
    expect(text).toMatch(
      /^queue: waiting \d+, sleeping \d+, delayed \d+, ready \d+, retrying \d+, assigned \d+, running \d+, dead \d+$/m,
    );
    expect(text).toMatch(/^throughput, last 15 min \(60 s buckets\): [\d.]+ tasks\/s$/m);
  });

  it('status --watch: one view per refresh off a terminal, one JSON line per refresh with --json', async () => {
    const run = await cli(['status', '--watch', '--interval', '100', '--refreshes', '3']);
    expect(run.code, run.err).toBe(0);
    expect(run.out.match(/^taskmill status, every 0.1 s \(Ctrl-C to stop\), \d{4}-/gm)).toHaveLength(3);
    expect(run.out.match(/^leader: cli-node/gm)).toHaveLength(3);
    const lines = (await cli(['status', '--watch', '--json', '--interval', '100', '--refreshes', '2'])).out
      .trim()
      .split('\n');
    expect(lines.map((l) => (JSON.parse(l) as Json).leader.nodeName)).toEqual(['cli-node', 'cli-node']);
  });

  it('status --watch redraws in place on a terminal until Ctrl-C', async () => {
    const terminal = Object.assign(new PassThrough(), { isTTY: true, columns: 200, rows: 80 });
    let drawn = '';
    terminal.on('data', (chunk: Buffer) => (drawn += chunk.toString()));
    const controller = new AbortController();
    const running = cli(['status', '--watch', '--interval', '100'], { signal: controller.signal, terminal });
    await until(() => (drawn.match(/leader: cli-node/g) ?? []).length >= 2, 30_000);
    controller.abort();
    const run = await running;
    expect(run.code, run.err).toBe(0);
    expect(run.out).toBe('');
    // The second view replaced the first: cursor up and erase line before it was drawn.
    const second = drawn.indexOf('leader: cli-node', drawn.indexOf('leader: cli-node') + 1);
    expect(drawn.slice(0, second)).toContain('\u001b[1A');
    expect(drawn.slice(0, second)).toContain('\u001b[2K');
  });

  it('workflow wait draws a progress bar of ended tasks on a terminal, and prints only the result', async () => {
    const workflow = randomUUID();
    expect((await cli(['schedule', 'noop', '--count', '3', '--workflow', workflow])).code).toBe(0);
    const terminal = Object.assign(new PassThrough(), { isTTY: true, columns: 200, rows: 80 });
    let drawn = '';
    terminal.on('data', (chunk: Buffer) => (drawn += chunk.toString()));
    const run = await cli(['workflow', 'wait', workflow, '--timeout', '30000'], {
      progressTerminal: terminal,
    });
    expect(run.code, run.err).toBe(0);
    expect(run.out).toMatch(new RegExp(`^workflow ${workflow}: done \\(3 tasks\\)`));
    expect(drawn).toContain(`workflow ${workflow}: `);
    expect(drawn).toMatch(/[░█]+ 3\/3 /);
  });

  it('status --watch keeps refreshing while the database is away, and refuses bad options', async () => {
    const url = `postgres://nobody@127.0.0.1:${await freePort()}/none`;
    const run = await cli(['status', '--watch', '--interval', '100', '--refreshes', '2'], { url });
    expect(run.code, run.err).toBe(0);
    expect(run.out.match(/^error: .*ECONNREFUSED.*; next try in 0.1 s$/gm)).toHaveLength(2);
    expect((await cli(['status', '--watch', '--interval', '5'])).code).toBe(EXIT.USAGE);
    const alone = await cli(['status', '--refreshes', '2']);
    expect(alone.code).toBe(EXIT.USAGE);
    expect(alone.err).toMatch(/--refreshes applies to --watch only/);
  });

  it('answers status in time when counting throughput would take too long', async () => {
    // 300,000 tasks ended in the window of a database no node maintains (its history stays put):
    // counting them takes far longer than 1 ms, so status gives up counting after
    // --throughput-timeout and still answers with everything else.
    const big = await db.another();
    try {
      await big.pool.query(
        `insert into tm_history (id, name, workflow_id, state, attempts, created_at, finished_at)
         select gen_random_uuid(), 'bulk', gen_random_uuid(), 'completed', 1, now(), now() - random() * interval '3 minutes'
         from generate_series(1, 300000)`,
      );
      const run = await cli(['status', '--throughput-timeout', '1', '--json'], { url: big.url });
      expect(run.code, run.err).toBe(0);
      const stats = JSON.parse(run.out) as Json;
      expect(stats.throughput).toMatchObject({ timedOut: true, buckets: [], perSecond: 0 });
      expect(stats.nodes).toEqual([]);
      const text = (await cli(['status', '--throughput-timeout', '1'], { url: big.url })).out;
      expect(text).toMatch(/^throughput: not counted, the history of the window is too large/m);
      // Given the time, the same history is counted.
      const counted = JSON.parse(
        (await cli(['status', '--window', '5', '--throughput-timeout', '600000', '--json'], { url: big.url }))
          .out,
      ) as Json;
      expect(counted.throughput.timedOut).toBeUndefined();
      expect(
        counted.throughput.buckets.reduce((n: number, b: { completed: number }) => n + b.completed, 0),
      ).toBe(300_000);
    } finally {
      await big.drop();
    }
  });

  it('serves the HTTP API and the node metrics with --http', async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    expect(metrics).toMatch(/^taskmill_node_leader\{node="cli-node"\} 1$/m);
    expect(metrics).toMatch(/^taskmill_tasks_completed_total\{task="echo"\} [1-9]/m);
  });

  it('runs the CLI examples of docs/operations.md', async () => {
    const examples = docExamples(readFileSync(path.join(ROOT, 'docs/operations.md'), 'utf8'), 'taskmill');
    const vars: Record<string, string> = {
      DATABASE_URL: db.url,
      TASKMILL_HTTP_TOKEN: 'not-used-by-the-commands-run-here',
      ID: '',
      WORKFLOW: '0190a5b2-0000-7000-8000-00000000d0c6',
    };
    const ran: string[] = [];
    for (const example of examples) {
      const words = shellWords(example, vars).slice(1);
      // Long-running commands are exercised by the process tests below, the bench at its tiny size.
      if (['node', 'serve', 'db', 'cluster'].includes(words[0]) || (words[0] === 'bench' && words.length > 1))
        continue;
      const run = await cli(words, { url: null, env: { ...env, DATABASE_URL: db.url } });
      expect(run.code, `${example}\n${run.err}`).toBe(0);
      const capture = /# => (\w+)/.exec(example);
      if (capture) vars[capture[1]] = run.out.trim();
      ran.push(words.slice(0, 2).join(' '));
    }
    expect(ran).toEqual(
      expect.arrayContaining(['schedule echo', 'task show', 'status', 'dlt list', 'workflow show']),
    );
  });
});

describe('serve', () => {
  it('serves the API until stopped, and refuses to bind beyond loopback without a token', async () => {
    const port = await freePort();
    const controller = new AbortController();
    let out = '';
    const done = runCli(['--database-url', db.url, 'serve', `127.0.0.1:${port}`, '--log-level', 'silent'], {
      out: (s) => (out += s),
      err: () => {},
      env,
      cwd: ROOT,
      signal: controller.signal,
    });
    await until(() => out.includes('serving'), 20_000);
    expect(out).toBe(`serving http://127.0.0.1:${port}\n`);
    const ready = (await (await fetch(`http://127.0.0.1:${port}/readyz`)).json()) as { status: string };
    expect(ready.status).toBe('ready');
    controller.abort('SIGINT');
    expect(await done).toBe(0);

    const open = await cli(['serve', `0.0.0.0:${port}`]);
    expect(open.code).toBe(EXIT.USAGE);
    expect(open.err).toMatch(/without a token/);
  });
});

describe('bench', () => {
  it('lists the benchmarks', async () => {
    const benches = await json<{ name: string }[]>(['bench']);
    expect(benches.map((b) => b.name)).toEqual(expect.arrayContaining(['flat', 'http-enqueue', 'sweep']));
  });
});

// Tests that spawn processes mostly wait for them to start: they run side by side.
describe.concurrent('processes', () => {
  function spawnCli(args: string[], extraEnv: NodeJS.ProcessEnv) {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...env, ...extraEnv } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    return { child, exited, output: () => ({ out, err }) };
  }
  async function runBin(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Run> {
    const p = spawnCli(args, extraEnv);
    const code = await p.exited;
    return { code: code ?? -1, ...p.output() };
  }
  let nodeProcess: ChildProcess | undefined;
  afterAll(() => {
    nodeProcess?.kill('SIGKILL');
  });

  it('runs N node processes with prefixed logs, restarts a crashed one, stops all on a signal', async ({
    expect,
  }) => {
    const controller = new AbortController();
    let out = '';
    let err = '';
    const done = runCli(
      [
        '--database-url',
        db.url,
        'cluster',
        '--nodes',
        '2',
        '--tasks',
        'test/fixtures/cluster-node.ts',
        '--restart',
        '--grace-ms',
        '5000',
      ],
      { out: (s) => (out += s), err: (s) => (err += s), env, cwd: ROOT, signal: controller.signal },
    );
    const live = () =>
      count(
        db.pool,
        `select count(*) from tm_nodes where name like 'node-_' and heartbeat_at > now() - interval '2 seconds'`,
      );
    try {
      // Each node's lines carry its name.
      await until(
        () => [1, 2].every((i) => new RegExp(`^\\[node-${i}\\] \\{.*"msg":"node started"`, 'm').test(out)),
        30_000,
      );
      expect(await live()).toBe(2);
      const id = (await cli(['schedule', 'echo', '--message', '"clustered"'])).out.trim();
      expect(await client.waitForTask(id, { timeoutMs: 20_000 })).toMatchObject({ state: 'completed' });

      // Crash one node process: the cluster starts it again.
      const ps = await new Promise<string>((resolve) => {
        const p = spawn('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)]);
        let text = '';
        p.stdout.on('data', (d: Buffer) => (text += d));
        p.once('close', () => resolve(text));
      });
      const victim = Number(/^\s*(\d+) .*cluster-node\.ts/m.exec(ps)![1]);
      process.kill(victim, 'SIGKILL');
      await until(() => /restarting node-\d in \d+ ms/.test(err), 10_000);
      const starts = () => out.match(/^\[node-\d\] \{.*"msg":"node started"/gm)?.length ?? 0;
      await until(() => starts() === 3, 30_000);
    } finally {
      controller.abort('SIGTERM');
    }
    expect(await done, err).toBe(0);
    expect(err).toMatch(/\[cluster\] stopping 2 node\(s\)/);
  });

  it('starts the embedded server in the background, runs commands and a node against it, stops it', async ({
    expect,
  }) => {
    // Commands run in-process find the server the way a separate process would: through its data folder.
    const local = { ...env, TASKMILL_DATA_DIR: path.join(tmp, 'pg') };
    const started = await runBin(['db', 'start', '--port', '0', '--json'], local);
    expect(started.code, started.err).toBe(0);
    const { url } = JSON.parse(started.out) as { url: string };
    try {
      expect(url).toMatch(/^postgres:\/\/postgres:postgres@127\.0\.0\.1:\d+\/postgres$/);
      // The server outlived `db start`; later commands find it without DATABASE_URL.
      const status = await cli(['db', 'status'], { url: null, env: local });
      expect(status.code).toBe(0);
      expect(status.out).toContain(`running: ${url}`);
      expect((await cli(['db', 'start'], { url: null, env: local })).out).toBe(`already running: ${url}\n`);
      expect((await cli(['migrate', 'up'], { url: null, env: local })).out).toMatch(/^applied 001/);

      // A node process stops gracefully on SIGTERM (exit code 0, node row removed).
      const node = spawnCli(['node', '--tasks', FIXTURES, '--name', 'proc-node', '--threads', '1'], local);
      nodeProcess = node.child;
      await until(() => node.output().out.includes('"msg":"node started"'), 30_000);
      const id = (await cli(['schedule', 'echo', '--message', '7'], { url: null, env: local })).out.trim();
      await until(
        async () => (await cli(['task', 'show', id], { url: null, env: local })).out.includes('completed'),
        20_000,
      );
      node.child.kill('SIGTERM');
      expect(await node.exited).toBe(0);
      expect(node.output().out).toContain('"msg":"node stopped"');
      const status2 = await cli(['status', '--json'], { url: null, env: local });
      expect(JSON.parse(status2.out).nodes).toEqual([]);
    } finally {
      const stopped = await cli(['db', 'stop'], { url: null, env: local });
      expect(stopped.out).toBe('stopped\n');
    }
    const after = await cli(['db', 'status'], { url: null, env: local });
    expect(after.code).toBe(EXIT.NOT_FOUND);
    expect(after.out).toMatch(/^stopped/);
    expect((await cli(['db', 'stop'], { url: null, env: local })).out).toBe('not running\n');
  });

  it('runs the HTTP enqueue benchmark at its tiny size and writes its result', async ({ expect }) => {
    const outDir = path.join(tmp, 'results');
    const run = await cli([
      'bench',
      'http-enqueue',
      '--duration',
      '1',
      '--connections',
      '2',
      '--out-dir',
      outDir,
    ]);
    expect(run.code, run.err).toBe(0);
    expect(run.out).toMatch(/^http-enqueue: \d+ tasks\/s .*, 0 non-2xx, 0 errors, \d+\/\d+ tasks stored$/m);
    const [file] = readdirSync(outDir);
    expect(file).toMatch(/^http-enqueue-\d{4}-\d\d-\d\dT[\d-]+Z\.json$/);
    const result = JSON.parse(readFileSync(path.join(outDir, file), 'utf8'));
    expect(result.figures.tasks).toBeGreaterThan(0);
    expect(result.figures.stored).toBeGreaterThanOrEqual(result.figures.tasks);
    expect(result.figures.errors + result.figures.non2xx).toBe(0);

    // The results scripts read it: a comparison (here with itself) and the generated table.
    const compared = await cli(['results', 'compare', path.join(outDir, file), path.join(outDir, file)]);
    expect(compared.code, compared.err).toBe(0);
    expect(compared.out).toMatch(/^\| headline: enqueue throughput \(tasks\/s\) \| \d+ \| \d+ \| x1 \|$/m);
    const tabled = await cli(['results', 'table', '--dir', outDir]);
    expect(tabled.code, tabled.err).toBe(0);
    expect(readFileSync(path.join(outDir, 'README.md'), 'utf8')).toContain('http-enqueue');
  });
});
