/**
 * The PostgreSQL servers of a shards run: one embedded server per shard, each in its own data folder
 * under .taskmill/bench-shards/<run>/ on a free port (removed when the run ends), or the servers the
 * caller names (--shard-urls), which are used as they are.
 *
 * States: started -> stopped (stop() is idempotent).
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { startEmbeddedPostgres, type DatabaseHandle } from '../../store/database.ts';
import { REPO_ROOT } from '../result-file.ts';

export interface ShardServers {
  urls: string[];
  /** Data folders of the servers started here (empty with --shard-urls). */
  dataDirs: string[];
  stop(): Promise<void>;
}

/**
 * Per-server settings: three servers share one machine, so each gets a smaller buffer cache than the
 * embedded default (256 MB); the rest as every bench server (fsync on).
 */
const SHARD_SERVER_SETTINGS = { shared_buffers: '128MB' };

export async function startShardServers(count: number, given?: string[]): Promise<ShardServers> {
  if (given) {
    if (given.length < count) {
      throw new Error(`--shard-urls names ${given.length} servers; the run needs ${count}`);
    }
    return { urls: given.slice(0, count), dataDirs: [], stop: async () => {} };
  }
  const root = path.join(REPO_ROOT, '.taskmill', 'bench-shards', randomBytes(4).toString('hex'));
  const dataDirs = Array.from({ length: count }, (_, i) => path.join(root, `shard-${i}`));
  const started = await Promise.allSettled(
    dataDirs.map((dataDir) => startEmbeddedPostgres({ dataDir, port: 0, settings: SHARD_SERVER_SETTINGS })),
  );
  const handles = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await Promise.all(handles.map((h: DatabaseHandle) => h.stop().catch(() => {})));
      rmSync(root, { recursive: true, force: true });
    })());
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) {
    await stop();
    throw failed.reason;
  }
  for (const [i, h] of handles.entries()) console.error(`shard ${i}: embedded PostgreSQL at ${h.url}`);
  return { urls: handles.map((h) => h.url), dataDirs, stop };
}
