/**
 * The claim under flow control (docs/flow-control.md), used by a pass when a concurrency or rate limit
 * is configured, or when fairness is on and a ready task has a concurrency key. Everything is decided
 * from rows read in the pass's transaction (store/flow.ts), never from the planner's memory, so the
 * pass right after a failover decides as its predecessor would have:
 *  1. read the ready groups, (concurrency key, task name) pairs, with how much each limit that applies
 *     still allows (running tasks, starts in the window),
 *  2. claim the first tasks of each group, no more than its room (and a share of the pass),
 *  3. order them: round-robin across groups (rank within its group first, then priority), or by
 *     priority alone with fairness off,
 *  4. assignTasks() counts the budgets down, so groups sharing a key never exceed the key's limits,
 *  5. the planner logs the starts of rate-limited groups in the same transaction.
 * The only state kept in memory is where the scan of groups resumes when a pass cannot visit them
 * all (more groups than free slots): after a failover the next leader starts from the first group.
 */
import type { Queryable } from '../store/queryable.ts';
import { claimGroups, readyGroups, type GroupCandidate, type ReadyGroup } from '../store/flow.ts';

/** Groups read at once per pass are at most the pass's limit: each claimed group takes a slot. */
export interface FlowClaim {
  candidates: GroupCandidate[];
  /** Budget ids (budgetsOf) with what each allows in this pass. */
  budgets: Map<string, number>;
  /** Groups whose starts the rate limits count, as `${key}\0${name}`. */
  rateLimited: Set<string>;
  /** Where the next pass's scan of groups resumes; null: from the first. */
  cursor: { key: string; name: string } | null;
}

/** Most rows a pass claims across groups, in multiples of its limit: bounds the claim's reads. */
const CLAIM_SPREAD = 4;

export async function claimWithFlowControl(
  client: Queryable,
  options: {
    limit: number;
    runnable: ReadonlySet<string>;
    saturated: ReadonlySet<string>;
    fairness: boolean;
    cursor: { key: string; name: string } | null;
    clusterBudgets: Map<string, number>;
  },
): Promise<FlowClaim> {
  const { limit, cursor } = options;
  let groups = await readyGroups(client, cursor, limit);
  let next: FlowClaim['cursor'] = groups.length === limit ? groupOf(groups[groups.length - 1]) : null;
  if (cursor !== null && groups.length < limit) {
    // Wrap around: the groups before the cursor, up to the cursor itself.
    const before = (await readyGroups(client, null, limit - groups.length)).filter(
      (g) => compareGroups(g, cursor) <= 0,
    );
    if (groups.length + before.length === limit) next = groupOf(before[before.length - 1]);
    groups = [...groups, ...before];
  }
  const open = groups.filter((g) => options.runnable.has(g.name) && !options.saturated.has(g.name));
  const plan = planGroups(open, limit);
  const candidates = await claimGroups(client, plan.takes);
  const budgets = new Map([...options.clusterBudgets, ...plan.budgets]);
  return {
    candidates: options.fairness ? roundRobin(candidates) : byPriority(candidates),
    budgets,
    rateLimited: plan.rateLimited,
    cursor: next,
  };
}

const groupOf = (g: ReadyGroup) => ({ key: g.key, name: g.name });

/** The order of tm_tasks_ready_group's (key, name) columns, as the scan walks them. */
function compareGroups(a: { key: string; name: string }, b: { key: string; name: string }): number {
  if (a.key !== b.key) return a.key < b.key ? -1 : 1;
  return a.name === b.name ? 0 : a.name < b.name ? -1 : 1;
}

/**
 * How many tasks to claim of each group: its room under every limit that applies, at most the pass's
 * limit, and with many groups a share of CLAIM_SPREAD x limit so the claim stays bounded. Also the
 * budgets assignTasks() counts down: a key's limits are shared by its groups.
 */
export function planGroups(
  groups: ReadyGroup[],
  limit: number,
): {
  takes: { key: string; name: string; take: number }[];
  budgets: Map<string, number>;
  rateLimited: Set<string>;
} {
  const share = groups.length <= CLAIM_SPREAD ? limit : Math.ceil((CLAIM_SPREAD * limit) / groups.length);
  const budgets = new Map<string, number>();
  const rateLimited = new Set<string>();
  const takes: { key: string; name: string; take: number }[] = [];
  for (const g of groups) {
    const room = [g.keyConcurrencyLeft, g.keyRateLeft, g.defConcurrencyLeft, g.defRateLeft];
    const take = Math.min(share, ...room.map((r) => (r === null ? limit : Math.max(0, r))));
    const ids = budgetIds(g.key, g.name);
    room.forEach((r, i) => {
      if (r !== null) budgets.set(ids[i], Math.max(0, r));
    });
    if (g.keyRateLeft !== null || g.defRateLeft !== null) rateLimited.add(`${g.key}\0${g.name}`);
    if (take > 0) takes.push({ key: g.key, name: g.name, take });
  }
  return { takes, budgets, rateLimited };
}

/**
 * The budget ids a task of (key, name) spends, in ReadyGroup's order of limits: the key's concurrency
 * and rate (shared by all names of the key), the definition's concurrency and rate for this key. Task
 * names never contain NUL, so these never collide with a name's own budget (maxParallelInCluster).
 */
export function budgetIds(key: string, name: string): [string, string, string, string] {
  return [`kc\0${key}`, `kr\0${key}`, `dc\0${name}\0${key}`, `dr\0${name}\0${key}`];
}

/** What a candidate spends: its name's cluster budget and its group's flow budgets. */
export function budgetsOf(task: { name: string; concurrency_key: string }): string[] {
  return [task.name, ...budgetIds(task.concurrency_key, task.name)];
}

/**
 * Round-robin across groups: every group's first task, then every group's second, and so on; within
 * a round, by priority then creation order. A key with 100,000 ready tasks thus gets one slot per
 * round like a key with one, and the one waits at most for the pass that reads its group.
 */
export function roundRobin<
  T extends { name: string; concurrency_key: string; priority: number; seq: string },
>(candidates: T[]): T[] {
  const rank = new Map<string, number>();
  const ranked = byPriority(candidates).map((task) => {
    const group = `${task.concurrency_key}\0${task.name}`;
    const r = rank.get(group) ?? 0;
    rank.set(group, r + 1);
    return { task, r };
  });
  return ranked.sort((a, b) => a.r - b.r).map((x) => x.task);
}

/** Priority (higher first), then creation order: the order of the claim without fairness. */
export function byPriority<T extends { priority: number; seq: string }>(candidates: T[]): T[] {
  return [...candidates].sort((a, b) => b.priority - a.priority || compareSeq(a.seq, b.seq));
}

const compareSeq = (a: string, b: string) => a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);

/** The starts the rate limits count: the assigned tasks of rate-limited groups. */
export function startsToLog(
  candidates: { id: string; name: string; concurrency_key: string }[],
  assignedIds: string[],
  rateLimited: ReadonlySet<string>,
): { key: string; name: string }[] {
  const assigned = new Set(assignedIds);
  return candidates
    .filter((c) => assigned.has(c.id) && rateLimited.has(`${c.concurrency_key}\0${c.name}`))
    .map((c) => ({ key: c.concurrency_key, name: c.name }));
}
