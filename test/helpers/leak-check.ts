/**
 * The leak check of every test file (vitest `setupFiles`): after the file's own after-hooks, no test
 * node may still run, no process of the harness (cluster/node-process.ts) may be alive and no pg pool
 * may be open (leaks.ts has the sources). Whatever leaked is named in the failure, then cleaned up (stopped, killed, ended) so the
 * worker does not hang on it. Pools are tracked here: every pg pool that connected and was not ended.
 */
import pg from 'pg';
import { afterAll } from 'vitest';
import { killAllNodeProcesses, liveNodeProcesses } from '../../cluster/node-process.ts';
import { checkLeaks, trackLeaks } from './leaks.ts';

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

trackLeaks({
  what: 'node processes alive (call killAllNodes() in an after-hook)',
  left: () => liveNodeProcesses().map((child) => `pid ${child.pid} (${child.spawnargs.slice(1).join(' ')})`),
  cleanUp: killAllNodeProcesses,
});

afterAll(checkLeaks);
