/**
 * The leak check of every test file (vitest `setupFiles`): after the file's own after-hooks, no test
 * node may still run, no node process may be alive and no pg pool may be open. Whatever leaked is
 * named in the failure, then cleaned up (stopped, killed, ended) so the worker does not hang on it.
 *
 * Test helpers register what they track (nodes.ts its nodes, node-processes.ts its processes); pools
 * are tracked here, by every pg pool that connected and was not ended. Main thread of the test worker.
 */
import pg from 'pg';
import { afterAll } from 'vitest';

export interface LeakSource {
  /** What leaked, e.g. "test nodes still running". */
  what: string;
  /** Descriptions of what is left (empty: nothing leaked). */
  left(): string[];
  /** Stops, kills or ends what is left. */
  cleanUp(): Promise<void>;
}

const sources: LeakSource[] = [];

/** Adds a kind of resource to the leak check (once per module instance). */
export function trackLeaks(source: LeakSource): void {
  sources.push(source);
}

type TrackedPool = pg.Pool & { ending?: boolean };
type PoolMethod = (this: TrackedPool, ...args: unknown[]) => unknown;
/** pg-pool's Pool.prototype (pg.Pool extends it), patched once per process; the set lives on it. */
const poolPrototype = Object.getPrototypeOf(pg.Pool.prototype) as {
  connect: PoolMethod;
  end: PoolMethod;
  taskmillOpenPools?: Set<TrackedPool>;
};
if (!poolPrototype.taskmillOpenPools) {
  const open = (poolPrototype.taskmillOpenPools = new Set<TrackedPool>());
  const { connect, end } = poolPrototype;
  // pg-pool's query() goes through connect(): a pool that ever had a connection passes here.
  poolPrototype.connect = function (...args) {
    if (!this.ending) open.add(this);
    return connect.apply(this, args);
  };
  poolPrototype.end = function (...args) {
    open.delete(this);
    return end.apply(this, args);
  };
}
const openPools = poolPrototype.taskmillOpenPools;

trackLeaks({
  what: 'pg pools not ended',
  left: () =>
    [...openPools].map((pool) => {
      const o = pool.options as pg.PoolConfig & { application_name?: string };
      const db = o.connectionString ? new URL(o.connectionString).pathname.slice(1) : (o.database ?? '?');
      return `pool of ${o.application_name ?? 'no application_name'} on ${db}`;
    }),
  cleanUp: async () => {
    await Promise.all([...openPools].map((pool) => pool.end().catch(() => {})));
  },
});

/** Runs the check; throws naming every leak after cleaning them up. */
export async function checkLeaks(): Promise<void> {
  const leaks = sources.flatMap((s) => {
    const left = s.left();
    return left.length > 0 ? [`${s.what}: ${left.join('; ')}`] : [];
  });
  // Nodes first (they end their own pools), pools last.
  for (const s of sources.toReversed()) await s.cleanUp();
  if (leaks.length > 0) throw new Error(`the test file leaked:\n  ${leaks.join('\n  ')}`);
}

afterAll(checkLeaks);
