/**
 * Which shard a key belongs to, for the ShardedClient (client/sharded-client.ts, docs/scaling.md):
 * rendezvous (highest random weight) hashing over the shards' names, and the default shard key of a
 * schedule context. Pure functions, no database code.
 *
 * Rendezvous hashing keeps keys where they are when the shard list changes: adding a shard moves only
 * the keys that now weigh most on the new shard (about 1/N of them), removing one moves only its own,
 * and the order of the list does not matter. The weight is specified so that any client, in any
 * language, routes a key the same way:
 *
 *   weight(key, shard) = fmix32(fnv1a32(utf8(key) ++ 0x00 ++ utf8(shard)))
 *
 * FNV-1a 32-bit (offset basis 2166136261, prime 16777619) mixed by MurmurHash3's 32-bit finalizer, both
 * over unsigned 32-bit integers; the highest weight wins, a tie goes to the name that sorts first.
 */
import type { ScheduleContext } from '../task/schedule-context.ts';

const FNV_OFFSET = 2166136261;
const FNV_PRIME = 16777619;
const encoder = new TextEncoder();

function fnv1a(hash: number, bytes: Uint8Array): number {
  let h = hash;
  for (const byte of bytes) h = Math.imul(h ^ byte, FNV_PRIME) >>> 0;
  return h;
}

/** MurmurHash3's 32-bit finalizer: spreads FNV's weak low bits over the whole word. */
function fmix32(hash: number): number {
  let h = hash;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** weight(key, shard) of the header, for every shard: the key is hashed once. */
export function shardWeights(key: string, shards: readonly string[]): number[] {
  const prefix = fnv1a(fnv1a(FNV_OFFSET, encoder.encode(key)), Uint8Array.of(0));
  return shards.map((shard) => fmix32(fnv1a(prefix, encoder.encode(shard))));
}

/** Index in `shards` of the shard the key belongs to (rendezvous hashing, see the header). */
export function rendezvousShard(key: string, shards: readonly string[]): number {
  if (shards.length === 0) throw new Error('rendezvousShard() needs at least one shard');
  const weights = shardWeights(key, shards);
  let best = 0;
  for (let i = 1; i < shards.length; i++) {
    if (weights[i] > weights[best] || (weights[i] === weights[best] && shards[i] < shards[best])) best = i;
  }
  return best;
}

/**
 * The shard key of a task: returns the key whose tasks must share a database, or undefined when the
 * task may go to any shard. `taskName` is the definition's name.
 */
export type ShardKeyFunction = (taskName: string, ctx: ScheduleContext<unknown>) => string | undefined;

/**
 * The default shard key, in this order:
 *  1. the affinity key (group and affinity): affinity is enforced by one planner over one database,
 *     so every task of a key must be in one shard;
 *  2. the concurrency key (a tenant): its concurrency and rate limits are counted per database;
 * otherwise none. (A task without a key follows its workflow, dependencies or joined tasks when they
 * exist, else a new named workflow goes by workflowKey(), else the ShardedClient takes the shards in turn.)
 */
export const defaultShardKey: ShardKeyFunction = (_taskName, ctx) => {
  if (ctx.affinity !== undefined) return `affinity\0${ctx.affinityGroup ?? ''}\0${ctx.affinity}`;
  if (ctx.concurrencyKey !== undefined) return `tenant\0${ctx.concurrencyKey}`;
  return undefined;
};

/**
 * The key a new, named workflow is placed by when its task has no shard key: every client that opens
 * it picks the same shard, even two at once before either committed.
 */
export function workflowKey(workflowId: string): string {
  return `workflow\0${workflowId.toLowerCase()}`;
}
