import pg from 'pg';
import { defineConfig } from 'vitest/config';

/**
 * Connections one test file may hold at its peak (its pools, its node processes and their worker
 * threads); the benchmark file runs its benchmarks one at a time to stay within it.
 */
const CONNECTIONS_PER_WORKER = 45;
const MAX_WORKERS = 2;

/**
 * Test files run in parallel as far as the server's connection slots allow: against DATABASE_URL the
 * number of workers comes from its max_connections (less the superuser-reserved slots and those
 * already in use); the embedded server is started with room for MAX_WORKERS.
 */
async function workersForServer(): Promise<number> {
  const url = process.env.DATABASE_URL;
  if (!url) return MAX_WORKERS;
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    const { rows } = await client.query<{ free: number }>(
      `select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
              - (select count(*)::int from pg_stat_activity where backend_type = 'client backend') as free`,
    );
    const workers = Math.min(MAX_WORKERS, Math.floor(rows[0].free / CONNECTIONS_PER_WORKER));
    if (workers < 1) {
      throw new Error(
        `the server at DATABASE_URL has ${rows[0].free} free connection slots; the tests need ` +
          `${CONNECTIONS_PER_WORKER}: raise max_connections`,
      );
    }
    return workers;
  } finally {
    await client.end();
  }
}

export default defineConfig(async () => ({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    // The leak check every test file ends with: nodes stopped, node processes gone, pools ended.
    setupFiles: ['test/helpers/leak-check.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: await workersForServer(),
    // Multi-process tests are timing-sensitive; a retry would hide real races, so none.
    retry: 0,
  },
}));
