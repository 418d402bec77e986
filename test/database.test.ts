import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import packageJson from '../package.json' with { type: 'json' };
import {
  DEFAULT_EMBEDDED_PORT,
  defaultEmbeddedDir,
  EMBEDDED_POSTGRES_VERSION,
  portIsFree,
  startEmbeddedPostgres,
  type DatabaseHandle,
} from '../store/database.ts';

const root = path.resolve(import.meta.dirname, '..');

it('starting an embedded server leaves the process signals to the application', () => {
  // Under the project like every embedded server of the tests (the postgres user must reach it).
  const dataDir = path.join(root, '.taskmill', 'test-pg', `signals-${randomBytes(4).toString('hex')}`);
  try {
    const script = `
      const { startEmbeddedPostgres } = await import('./store/database.ts');
      const db = await startEmbeddedPostgres({ dataDir: ${JSON.stringify(path.join(dataDir, 'pg'))}, port: 0 });
      const counts = ['SIGINT', 'SIGTERM', 'SIGHUP'].map((s) => process.listenerCount(s));
      await db.stop();
      console.log(JSON.stringify({ counts, owner: db.owner }));`;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: root,
      env: { ...process.env, DATABASE_URL: '' },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ counts: [0, 0, 0], owner: true });
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

describe('the embedded server', () => {
  it('keeps its data under the current directory (or TASKMILL_DATA_DIR), not in the library folder', () => {
    expect(defaultEmbeddedDir({}, '/srv/app')).toBe(path.join('/srv/app', '.taskmill', 'pg'));
    expect(defaultEmbeddedDir({ TASKMILL_DATA_DIR: 'data/pg' }, '/srv/app')).toBe('/srv/app/data/pg');
    expect(defaultEmbeddedDir({ TASKMILL_DATA_DIR: '/var/lib/tm' }, '/srv/app')).toBe('/var/lib/tm');
    expect(defaultEmbeddedDir()).toBe(path.join(process.cwd(), '.taskmill', 'pg'));
  });

  it('pins the embedded-postgres release of package.json in its install hint', () => {
    expect(packageJson.optionalDependencies['embedded-postgres']).toBe(EMBEDDED_POSTGRES_VERSION);
    expect(Object.keys(packageJson.dependencies)).not.toContain('embedded-postgres');
  });

  it('takes a free port when the default one is taken, and is reused from its data folder', async () => {
    // Whoever holds the default port (this listener, or another server), the embedded one goes elsewhere.
    const blocker = createServer();
    await new Promise<void>((resolve) => {
      blocker.once('error', () => resolve());
      blocker.listen(DEFAULT_EMBEDDED_PORT, '127.0.0.1', () => resolve());
    });
    const dataDir = path.join(root, '.taskmill', 'test-pg', `port-${randomBytes(4).toString('hex')}`, 'pg');
    const servers: DatabaseHandle[] = [];
    try {
      expect(await portIsFree(DEFAULT_EMBEDDED_PORT)).toBe(false);
      const first = await startEmbeddedPostgres({ dataDir });
      servers.push(first);
      expect(first).toMatchObject({ owner: true, dataDir });
      expect(new URL(first.url).port).not.toBe(String(DEFAULT_EMBEDDED_PORT));
      const again = await startEmbeddedPostgres({ dataDir });
      servers.push(again);
      expect(again).toMatchObject({ owner: false, url: first.url, dataDir });
      const client = new pg.Client(first.url);
      await client.connect();
      await client.end();
    } finally {
      blocker.close();
      for (const server of servers.reverse()) await server.stop();
      rmSync(path.dirname(dataDir), { recursive: true, force: true });
    }
  });
});
