/** Statements on tm_leader, the planner lease (planner/leader.ts): take or renew, release, read. */
import type { Queryable } from './queryable.ts';

/**
 * Takes the lease for `ttlMs` (database time) when it is free or expired, or renews it when this node
 * holds it; returns whether this node holds it now. acquired_at is kept across renewals.
 */
export async function takeOrRenewLease(db: Queryable, nodeId: string, ttlMs: number): Promise<boolean> {
  const { rowCount } = await db.query(
    `insert into tm_leader (id, node_id, expires_at) values (1, $1, now() + $2 * interval '1 millisecond')
     on conflict (id) do update set node_id = excluded.node_id, expires_at = excluded.expires_at,
       acquired_at = case when tm_leader.node_id = excluded.node_id then tm_leader.acquired_at else now() end
     where tm_leader.node_id = excluded.node_id or tm_leader.expires_at < now()`,
    [nodeId, ttlMs],
  );
  return rowCount === 1;
}

/** Gives the lease up if this node holds it. */
export async function releaseLease(db: Queryable, nodeId: string): Promise<void> {
  await db.query(`delete from tm_leader where node_id = $1`, [nodeId]);
}

/** Database time and the lease's expiry (null when no lease was ever taken or it was released). */
export async function leaseExpiry(db: Queryable): Promise<{ now: Date; expiresAt: Date | null }> {
  const { rows } = await db.query<{ now: Date; expires_at: Date | null }>(
    `select now() as now, (select expires_at from tm_leader) as expires_at`,
  );
  return { now: rows[0].now, expiresAt: rows[0].expires_at };
}
