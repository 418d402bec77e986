/**
 * Statements on tm_locks (migration 014): named leases of cluster-wide chores that span several
 * transactions and must never run twice at once (history partition management). Unlike a session
 * advisory lock they work through a pooler in transaction mode, where consecutive statements of one
 * client may run on different server sessions; a holder that dies frees its lease when it expires
 * (database time).
 */
import type { Queryable } from './queryable.ts';

/** Takes the lease `name` for `holder` when it is free or expired; returns whether `holder` has it. */
export async function takeLock(db: Queryable, name: string, holder: string, ttlMs: number): Promise<boolean> {
  const { rowCount } = await db.query(
    `insert into tm_locks (name, holder, expires_at) values ($1, $2, now() + $3 * interval '1 millisecond')
     on conflict (name) do update set holder = excluded.holder, expires_at = excluded.expires_at
     where tm_locks.expires_at < now() or tm_locks.holder = excluded.holder`,
    [name, holder, ttlMs],
  );
  return rowCount === 1;
}

/** Gives the lease up if `holder` has it. */
export async function releaseLock(db: Queryable, name: string, holder: string): Promise<void> {
  await db.query(`delete from tm_locks where name = $1 and holder = $2`, [name, holder]);
}
