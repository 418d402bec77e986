/**
 * Flow control's statements (migrations/007): the configured key-pattern limits (tm_flow_limits, set
 * through the client), and the planner's reads and writes under flow control, run inside a pass's
 * transaction (planner/flow.ts): the ready groups with what each may still start, the claim of each
 * group's first tasks, and the log of starts the rate limits count.
 *
 * A group is a (concurrency key, task name) pair of ready tasks. Running tasks are rows with a node
 * (assigned or running), counted through tm_tasks_group_held; starts are rows of tm_flow_starts,
 * written by the pass that assigns them and read with clock_timestamp() on both sides, so every start
 * a later pass (on this leader or the next) can see is counted, and a start logged after a check is
 * never earlier than that check.
 */
import { AFFINITY_FREE, type Candidate } from './assignments.ts';
import type { Queryable } from './queryable.ts';

/** A ready group and how much more each limit that applies to it allows (null: no such limit). */
export interface ReadyGroup {
  key: string;
  name: string;
  /** The key's pattern concurrency limit minus its tasks running, across names. */
  keyConcurrencyLeft: number | null;
  /** The key's pattern rate limit minus its starts in the window, across names. */
  keyRateLeft: number | null;
  /** The definition's concurrency limit minus the group's tasks running. */
  defConcurrencyLeft: number | null;
  /** The definition's rate limit minus the group's starts in the window. */
  defRateLeft: number | null;
}

/**
 * The ready groups after (key, name) in index order, at most $3, with their limits' room. A loose index
 * scan of tm_tasks_ready_group (one descent per group, whatever the number of ready tasks in it): a
 * key with 100,000 ready tasks costs what a key with one costs. The most specific pattern applies to a
 * key: the key itself, else the longest pattern matching it (one lateral per kind of limit).
 *
 * Cost (EXPLAIN ANALYZE, PostgreSQL 18 on the 2-core development machine, busy): with 101,000 ready
 * tasks (100,000 of one key, 1,000 over 100 keys limited by a pattern with a concurrency and a rate
 * limit), 3.9 ms for the 101 groups, against 1.1 ms for the plain claim of 1,000 tasks (CLAIM_READY_TASKS,
 * used when no limit is configured and no ready task has a key, so a cluster without flow control
 * pays two index probes in the cluster state and nothing else). About 40-50 us per group read: with
 * 10,101 groups and 1,000 free slots, 49 ms, which is why a pass reads at most as many groups as it has
 * slots and resumes after the last one on the next pass.
 */
export const READY_GROUPS = `
  with recursive g(k, n) as (
    (select t.concurrency_key, t.name from tm_tasks t
     where t.state = 'ready' and (t.concurrency_key, t.name) > ($1::text, $2::text)
     order by t.concurrency_key, t.name limit 1)
    union all
    select x.k, x.n from g cross join lateral (
      select t.concurrency_key as k, t.name as n from tm_tasks t
      where t.state = 'ready' and (t.concurrency_key, t.name) > (g.k, g.n)
      order by t.concurrency_key, t.name limit 1) x),
  f as (select g.k, g.n from g limit $3)
  select f.k as key, f.n as name,
    kc.concurrency - (select count(*) from tm_tasks h where h.concurrency_key = f.k and h.node_id is not null)
      as "keyConcurrencyLeft",
    kr.rate - (select count(*) from tm_flow_starts s where s.concurrency_key = f.k
      and s.started_at > clock_timestamp() - kr.rate_window_ms * interval '1 millisecond') as "keyRateLeft",
    (d.options->'concurrency'->>'limit')::int - (select count(*) from tm_tasks h
      where h.concurrency_key = f.k and h.name = f.n and h.node_id is not null) as "defConcurrencyLeft",
    (d.options->'rateLimit'->>'limit')::int - (select count(*) from tm_flow_starts s
      where s.concurrency_key = f.k and s.name = f.n
        and s.started_at > clock_timestamp() - (d.options->'rateLimit'->>'windowMs')::int * interval '1 millisecond')
      as "defRateLeft"
  from f
  left join tm_task_defs d on d.name = f.n
  left join lateral (select l.concurrency from tm_flow_limits l
    where f.k <> '' and l.concurrency is not null and f.k like l.like_pattern
    order by l.pattern = f.k desc, length(l.pattern) desc, l.pattern limit 1) kc on true
  left join lateral (select l.rate, l.rate_window_ms from tm_flow_limits l
    where f.k <> '' and l.rate is not null and f.k like l.like_pattern
    order by l.pattern = f.k desc, length(l.pattern) desc, l.pattern limit 1) kr on true`;

/** Up to `cap` ready groups after `after` (null: from the first), in (key, name) order. */
export async function readyGroups(
  client: Queryable,
  after: { key: string; name: string } | null,
  cap: number,
): Promise<ReadyGroup[]> {
  const { rows } = await client.query<ReadyGroup>(READY_GROUPS, [after?.key ?? '', after?.name ?? '', cap]);
  // count(*) is a bigint, which node-postgres returns as a string.
  return rows.map((r) => ({
    key: r.key,
    name: r.name,
    keyConcurrencyLeft: numberOrNull(r.keyConcurrencyLeft),
    keyRateLeft: numberOrNull(r.keyRateLeft),
    defConcurrencyLeft: numberOrNull(r.defConcurrencyLeft),
    defRateLeft: numberOrNull(r.defRateLeft),
  }));
}

const numberOrNull = (v: unknown) => (v === null || v === undefined ? null : Number(v));

/** A claimed task with what orders it within its group. */
export interface GroupCandidate extends Candidate {
  priority: number;
  seq: string;
}

/**
 * Locks the first `take` due tasks of each group, in priority order, under the affinity rule: one
 * index range of tm_tasks_ready_group per group, so the claim reads about as many rows as it returns
 * (1.4 ms for 540 rows of the 101 groups above, the flooded key's 100,000 rows notwithstanding).
 */
export const CLAIM_GROUPS = `
  select c.id, c.name, c.affinity_group, c.affinity, c.concurrency_key, c.priority, c.seq
  from unnest($1::text[], $2::text[], $3::int[]) as g(k, n, take)
  cross join lateral (
    select t.id, t.name, t.affinity_group, t.affinity, t.concurrency_key, t.priority, t.seq
    from tm_tasks t
    where t.state = 'ready' and t.concurrency_key = g.k and t.name = g.n and t.not_before <= now()
      and ${AFFINITY_FREE}
    order by t.priority desc, t.seq
    limit g.take
    for update of t skip locked) c`;

/** Claims (locks) up to `take` ready tasks of each group. */
export async function claimGroups(
  client: Queryable,
  groups: { key: string; name: string; take: number }[],
): Promise<GroupCandidate[]> {
  if (groups.length === 0) return [];
  const { rows } = await client.query<GroupCandidate>(CLAIM_GROUPS, [
    groups.map((g) => g.key),
    groups.map((g) => g.name),
    groups.map((g) => g.take),
  ]);
  return rows;
}

/**
 * Logs the starts of rate-limited groups, and drops the starts older than the longest window any limit
 * has (they can no longer count), in one statement.
 */
export async function logStarts(client: Queryable, starts: { key: string; name: string }[]): Promise<void> {
  if (starts.length === 0) return;
  await client.query(
    `with longest as (
       select greatest((select max(rate_window_ms) from tm_flow_limits),
         (select max((options->'rateLimit'->>'windowMs')::int) from tm_task_defs)) as ms),
     pruned as (
       delete from tm_flow_starts s using longest
       where s.started_at < clock_timestamp() - longest.ms * interval '1 millisecond')
     insert into tm_flow_starts (concurrency_key, name, started_at)
     select k, n, clock_timestamp() from unnest($1::text[], $2::text[]) as s(k, n)`,
    [starts.map((s) => s.key), starts.map((s) => s.name)],
  );
}

/** A key-pattern limit (tm_flow_limits). */
export interface FlowLimit {
  pattern: string;
  concurrency: number | null;
  rate: { limit: number; windowMs: number } | null;
}

/** The pattern as LIKE sees it: `*` any run of characters, everything else literal. */
const LIKE_PATTERN = `replace(replace(replace(replace($1::text, '\\', '\\\\'), '%', '\\%'), '_', '\\_'), '*', '%')`;

/** Sets a pattern's concurrency limit, or with null removes it (and the pattern, when it has no rate limit). */
export async function setConcurrencyLimit(
  db: Queryable,
  pattern: string,
  limit: number | null,
): Promise<void> {
  if (limit === null) {
    await db.query(
      `with gone as (delete from tm_flow_limits where pattern = $1 and rate is null)
       update tm_flow_limits set concurrency = null, updated_at = now() where pattern = $1 and rate is not null`,
      [pattern],
    );
    return;
  }
  await db.query(
    `insert into tm_flow_limits (pattern, like_pattern, concurrency) values ($1, ${LIKE_PATTERN}, $2)
     on conflict (pattern) do update set concurrency = excluded.concurrency, updated_at = now()`,
    [pattern, limit],
  );
}

/** Sets a pattern's rate limit, or with null removes it (and the pattern, when it has no concurrency limit). */
export async function setRateLimit(
  db: Queryable,
  pattern: string,
  rate: { limit: number; windowMs: number } | null,
): Promise<void> {
  if (rate === null) {
    await db.query(
      `with gone as (delete from tm_flow_limits where pattern = $1 and concurrency is null)
       update tm_flow_limits set rate = null, rate_window_ms = null, updated_at = now()
       where pattern = $1 and concurrency is not null`,
      [pattern],
    );
    return;
  }
  await db.query(
    `insert into tm_flow_limits (pattern, like_pattern, rate, rate_window_ms) values ($1, ${LIKE_PATTERN}, $2, $3)
     on conflict (pattern) do update set rate = excluded.rate, rate_window_ms = excluded.rate_window_ms,
       updated_at = now()`,
    [pattern, rate.limit, rate.windowMs],
  );
}

/** Every key-pattern limit, by pattern. */
export async function listFlowLimits(db: Queryable): Promise<FlowLimit[]> {
  const { rows } = await db.query<{
    pattern: string;
    concurrency: number | null;
    rate: number | null;
    rate_window_ms: number | null;
  }>(`select pattern, concurrency, rate, rate_window_ms from tm_flow_limits order by pattern`);
  return rows.map((r) => ({
    pattern: r.pattern,
    concurrency: r.concurrency,
    rate: r.rate === null ? null : { limit: r.rate, windowMs: r.rate_window_ms! },
  }));
}
