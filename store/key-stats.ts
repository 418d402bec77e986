/**
 * The keys with the most tasks waiting to start, for the per-key gauges of node/metrics.ts: affinity keys
 * (group and affinity) and concurrency keys (docs/flow-control.md). Waiting means ready and due (not
 * before now): a task delayed or backing off before a retry is not waiting for its key yet.
 *
 * Each kind is one group-by over the due ready rows, so the metrics exporter reads it at a modest
 * interval and only in the process whose node leads the cluster.
 */
import type { Queryable } from './queryable.ts';

export interface WaitingKey {
  kind: 'affinity' | 'concurrency';
  /** The affinity group ('' for the default group); '' for concurrency keys. */
  group: string;
  key: string;
  waiting: number;
}

/** At most `limit` keys of each kind, most waiting first (ties by key, so the set is stable). */
export async function topWaitingKeys(db: Queryable, limit: number): Promise<WaitingKey[]> {
  const { rows } = await db.query<WaitingKey>(
    `(select 'affinity' as kind, coalesce(affinity_group, '') as "group", affinity as key, count(*)::int as waiting
      from tm_tasks where state = 'ready' and not_before <= now() and affinity is not null
      group by affinity_group, affinity order by waiting desc, "group", key limit $1)
     union all
     (select 'concurrency', '', concurrency_key, count(*)::int as waiting
      from tm_tasks where state = 'ready' and not_before <= now() and concurrency_key <> ''
      group by concurrency_key order by waiting desc, concurrency_key limit $1)`,
    [limit],
  );
  return rows;
}
