import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '..');

it('starting an embedded server leaves the process signals to the application', () => {
  // Under the project like every embedded server of the tests (the postgres user must reach it).
  const dataDir = path.join(root, '.taskmill', 'test-pg', `signals-${randomBytes(4).toString('hex')}`);
  try {
    const script = `
      const { startEmbeddedPostgres } = await import('./runtime/database.ts');
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
