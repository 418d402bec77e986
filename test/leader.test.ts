/** The planner lease (tm_leader) between lease objects sharing one database, driven by runOnce(). */
import { beforeEach, describe, expect, it } from 'vitest';
import { v4 as uuidv4 } from 'uuid';
import { LeaderLease } from '../planner/leader.ts';
import { useTestDatabase } from './helpers/database.ts';

const db = useTestDatabase();

beforeEach(async () => {
  await db.pool.query('delete from tm_leader');
});

function lease(options: { ttlMs?: number; now?: () => number; changes?: boolean[] } = {}) {
  const nodeId = uuidv4();
  const l = new LeaderLease({
    db: db.pool,
    nodeId,
    ttlMs: options.ttlMs ?? 60_000,
    now: options.now,
    onChange: (leader) => options.changes?.push(leader),
    onError: (error) => {
      throw error;
    },
  });
  return Object.assign(l, { nodeId });
}

async function holder(): Promise<{ node_id: string; ttl_ms: number } | undefined> {
  const { rows } = await db.pool.query<{ node_id: string; ttl_ms: number }>(
    `select node_id, (extract(epoch from (expires_at - now())) * 1000)::float8 as ttl_ms from tm_leader`,
  );
  return rows[0];
}

describe('leader lease', () => {
  it('lets exactly one of two contenders lead, and the leader keeps renewing', async () => {
    const changes: boolean[] = [];
    const a = lease({ changes });
    const b = lease();
    const [ra, rb] = await Promise.all([a.runOnce(), b.runOnce()]);
    expect([ra.leader, rb.leader].filter(Boolean)).toHaveLength(1);
    const [leader, follower] = ra.leader ? [a, b] : [b, a];
    expect(leader.isLeader).toBe(true);
    expect(follower.isLeader).toBe(false);
    expect((await holder())?.node_id).toBe(leader.nodeId);

    for (let i = 0; i < 3; i++) {
      expect((await leader.runOnce()).leader).toBe(true);
      expect((await follower.runOnce()).leader).toBe(false);
    }
    expect((await holder())?.node_id).toBe(leader.nodeId);
  });

  it('stop() releases the lease and the other takes it on its next pass', async () => {
    const changes: boolean[] = [];
    const a = lease({ changes });
    const b = lease();
    expect((await a.runOnce()).leader).toBe(true);
    expect((await b.runOnce()).leader).toBe(false);
    await a.stop();
    expect(a.isLeader).toBe(false);
    expect(changes).toEqual([true, false]);
    expect(await holder()).toBeUndefined();
    expect((await b.runOnce()).leader).toBe(true);
    expect((await holder())?.node_id).toBe(b.nodeId);
    // Stopping a follower changes nothing, and stopping twice is safe.
    await a.stop();
    expect((await holder())?.node_id).toBe(b.nodeId);
  });

  it('takes over an expired lease', async () => {
    const a = lease();
    const b = lease();
    expect((await a.runOnce()).leader).toBe(true);
    expect((await b.runOnce()).leader).toBe(false);
    // The leader died: nobody renewed, and the lease ran out (database time).
    await db.pool.query(`update tm_leader set expires_at = now() - interval '1 millisecond'`);
    expect((await b.runOnce()).leader).toBe(true);
    expect((await holder())?.node_id).toBe(b.nodeId);
    expect((await a.runOnce()).leader).toBe(false);
    expect(a.isLeader).toBe(false);
  });

  it('judges expiry by database time, not the local clock', async () => {
    const a = lease({ ttlMs: 30_000 });
    expect((await a.runOnce()).leader).toBe(true);
    const row = await holder();
    // expires_at = database now() + ttl.
    expect(row!.ttl_ms).toBeGreaterThan(29_000);
    expect(row!.ttl_ms).toBeLessThanOrEqual(30_000);

    // A contender whose clock runs two hours ahead still cannot take an unexpired lease.
    const skewed = lease({ now: () => Date.now() + 7_200_000 });
    expect((await skewed.runOnce()).leader).toBe(false);
    expect((await holder())?.node_id).toBe(a.nodeId);
    // And one whose clock runs behind takes an expired one.
    await db.pool.query(`update tm_leader set expires_at = now() - interval '1 second'`);
    const behind = lease({ now: () => Date.now() - 7_200_000 });
    expect((await behind.runOnce()).leader).toBe(true);
  });

  it('a leader whose renewals stop gives up leadership by its own clock before the lease ends', async () => {
    let clock = Date.now();
    const a = lease({ ttlMs: 1_000, now: () => clock });
    expect((await a.runOnce()).leader).toBe(true);
    clock += 850;
    expect(a.isLeader).toBe(true);
    // Past 90% of the ttl without a renewal: it no longer acts as leader, while the row still stands.
    clock += 100;
    expect(a.isLeader).toBe(false);
    expect((await holder())?.node_id).toBe(a.nodeId);

    // Stopping it still releases the row it holds, so the next leader need not wait for expiry.
    await a.stop();
    expect(await holder()).toBeUndefined();
    const b = lease();
    expect((await b.runOnce()).leader).toBe(true);
  });

  it('stop() never deletes a lease another node holds', async () => {
    const a = lease();
    const b = lease();
    expect((await a.runOnce()).leader).toBe(true);
    await db.pool.query(`update tm_leader set expires_at = now() - interval '1 millisecond'`);
    expect((await b.runOnce()).leader).toBe(true);
    await a.stop();
    expect((await holder())?.node_id).toBe(b.nodeId);
  });
});
