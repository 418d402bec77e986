/**
 * The producer API over several taskmill databases (shards), each with its own nodes and planner
 * (docs/scaling.md, "Past one PostgreSQL"). One TaskmillClient per shard does the work; this class
 * decides which shard:
 *
 * - A task goes to the shard of its shard key (client/shard-routing.ts: the affinity key, else the
 *   concurrency key, or the caller's `shardKey` function), by rendezvous hashing over the shard names.
 * - A task that names an existing workflow, depends on tasks (dependsOn) or joins tasks goes to the shard
 *   that holds them. When those are on several shards, or its key routes it elsewhere, it is refused
 *   with CROSS_SHARD and nothing is written: a workflow, its dependencies and its joins live in one
 *   database, as do its children (scheduled by its nodes, which know nothing of shards).
 * - A task with neither: a new named workflow is placed by its id (workflowKey()), anything else goes
 *   to the shards in turn.
 *
 * Where a task id leads: ids stay plain UUIDv7 (children get theirs on the nodes), so the shard is not
 * encoded in the id. The client remembers the shard of every task and workflow it scheduled or found
 * (a bounded most-recently-used map, `locateCacheSize`); any other id is looked up on every shard at
 * once, one primary-key (or workflow-index) lookup each, and then remembered. An id never moves between
 * shards, so a remembered shard is never stale.
 *
 * States: open -> closed (close() is idempotent). Main thread of the caller; the map and the turn
 * counter are written only by this object.
 */
import { TaskmillError } from '../task/errors.ts';
import { isUuid, type ScheduleContext } from '../task/schedule-context.ts';
import type { TaskDefinition } from '../task/task-definition.ts';
import { countWorkflowTasks, findTask } from '../store/tasks.ts';
import type { ClusterOverview } from '../store/inspect.ts';
import { TaskmillClient, type ClientOptions, type ScheduleOptions, type TaskInfo } from './client.ts';
import type { WaitForTaskOptions } from './task-waiter.ts';
import type { WorkflowStatus } from './workflows.ts';
import { defaultShardKey, rendezvousShard, workflowKey, type ShardKeyFunction } from './shard-routing.ts';

export interface ShardSpec extends ClientOptions {
  /** The shard's name: what keys are hashed against (1-100 letters, digits or _ . : -). Keep it stable. */
  name: string;
}

export interface ShardedClientOptions {
  shards: ShardSpec[];
  /** The key whose tasks must share a shard (default: defaultShardKey, client/shard-routing.ts). */
  shardKey?: ShardKeyFunction;
  /** Task and workflow ids whose shard is remembered (default DEFAULT_LOCATE_CACHE_SIZE; 0: none). */
  locateCacheSize?: number;
}

/** Default of ShardedClientOptions.locateCacheSize: about 2 MB of ids. */
export const DEFAULT_LOCATE_CACHE_SIZE = 10_000;
const SHARD_NAME_PATTERN = /^[A-Za-z0-9_.:-]{1,100}$/;

export interface Shard {
  readonly name: string;
  /** The shard's own client: for what the ShardedClient does not route (crons, dead letters, your transaction). */
  readonly client: TaskmillClient;
}

/** Schedule options of the ShardedClient: no `client`, as a transaction belongs to one shard. */
export type ShardedScheduleOptions = Omit<ScheduleOptions, 'client'>;

/**
 * scheduleMany() over several shards committed on some and failed on others (one insert per shard, no
 * transaction spans two databases). `scheduled` lists what was committed; `cause` is the first failure.
 */
export class PartialScheduleError extends TaskmillError {
  constructor(
    message: string,
    readonly scheduled: { shard: string; ids: string[] }[],
    readonly failed: { shard: string; error: unknown }[],
  ) {
    super('PARTIALLY_SCHEDULED', message, { cause: failed[0]?.error });
    this.name = 'PartialScheduleError';
  }
}

/** Where a task must go because of what it refers to, and why (for the CROSS_SHARD message). */
interface Pin {
  shard: Shard;
  why: string;
}

interface Reference {
  id: string;
  kind: 'task' | 'workflow';
  why: string;
}

export class ShardedClient {
  readonly shards: readonly Shard[];
  private readonly names: string[];
  private readonly shardKey: ShardKeyFunction;
  private readonly located = new Map<string, Shard>();
  private readonly cacheSize: number;
  private turn = 0;
  private closing: Promise<void> | undefined;

  constructor(options: ShardedClientOptions) {
    const specs = checkSpecs(options);
    this.shardKey = options.shardKey ?? defaultShardKey;
    this.cacheSize = options.locateCacheSize ?? DEFAULT_LOCATE_CACHE_SIZE;
    this.names = specs.map((s) => s.name);
    this.shards = specs.map(({ name, ...clientOptions }) => ({
      name,
      client: new TaskmillClient(clientOptions),
    }));
  }

  /**
   * The shard a task would be scheduled on (for a task without key or references: the next in turn).
   * Use it to schedule inside your own transaction: `shard.client.schedule(def, ctx, { client })` with
   * a connection of `shard.client.pool`. Throws CROSS_SHARD as schedule() does.
   */
  async shardFor<M>(
    def: TaskDefinition<M> | string,
    ctx: ScheduleContext<M> = {},
    options: ShardedScheduleOptions = {},
  ): Promise<Shard> {
    const refs = [...dependencyRefs(options.dependsOn), ...workflowRefs(ctx)];
    return this.place(taskName(def), ctx, await this.pin(refs));
  }

  /** The shard holding a task or a workflow with this id, or undefined when no shard knows it. */
  async shardOf(id: string): Promise<Shard | undefined> {
    if (!isUuid(id)) throw invalid(`Id must be a UUID, got ${JSON.stringify(id)}.`);
    return (
      (await this.locate({ id, kind: 'task', why: '' })) ?? this.locate({ id, kind: 'workflow', why: '' })
    );
  }

  /** Schedules one task on its shard (see the header); returns its id. */
  async schedule<M>(
    def: TaskDefinition<M> | string,
    ctx?: ScheduleContext<M>,
    options: ShardedScheduleOptions = {},
  ): Promise<string> {
    refuseTransaction(options);
    const shard = await this.shardFor(def, ctx ?? {}, options);
    const id = await shard.client.schedule(def, ctx, options);
    this.remember(id, shard);
    if (ctx?.workflowId) this.remember(ctx.workflowId, shard);
    return id;
  }

  /**
   * Schedules many tasks of one definition; returns their ids in order. Tasks of one shard are one
   * multi-row insert; the shards are written at once, each in its own transaction: when some fail after
   * others committed, a PartialScheduleError says which ids were committed.
   */
  async scheduleMany<M>(
    def: TaskDefinition<M> | string,
    ctxs: ScheduleContext<M>[],
    options: ShardedScheduleOptions = {},
  ): Promise<string[]> {
    refuseTransaction(options);
    if (!Array.isArray(ctxs)) throw invalid('scheduleMany() takes an array of contexts.');
    const groups = await this.route(taskName(def), ctxs, options.dependsOn);
    const ids: string[] = new Array<string>(ctxs.length);
    const outcomes = await Promise.allSettled(
      [...groups].map(async ([shard, indexes]) => {
        const made = await shard.client.scheduleMany(
          def,
          indexes.map((i) => ctxs[i]),
          options,
        );
        indexes.forEach((i, k) => {
          ids[i] = made[k];
          this.remember(made[k], shard);
          const wf = routingContext(ctxs[i]).workflowId;
          if (wf !== undefined) this.remember(wf, shard);
        });
        return { shard: shard.name, ids: made };
      }),
    );
    const failed = [...groups.keys()].flatMap((shard, i) => {
      const o = outcomes[i];
      return o.status === 'rejected' ? [{ shard: shard.name, error: o.reason as unknown }] : [];
    });
    if (failed.length === 0) return ids;
    const scheduled = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
    if (scheduled.length === 0) throw failed[0].error;
    const committed = scheduled.reduce((n, s) => n + s.ids.length, 0);
    throw new PartialScheduleError(
      `scheduleMany() committed ${committed} of ${ctxs.length} tasks (shards ${scheduled.map((s) => s.shard).join(', ')}) ` +
        `and failed on shard ${failed.map((f) => f.shard).join(', ')}: ${(failed[0].error as Error)?.message ?? failed[0].error}. ` +
        'Schedule the failed ones again (error.scheduled lists the committed ids), or give the tasks one shard key.',
      scheduled,
      failed,
    );
  }

  /** Schedules a join on the shard of the tasks it joins; refuses (CROSS_SHARD) tasks on several shards. */
  async scheduleJoin<M>(
    def: TaskDefinition<M> | string,
    ctx: ScheduleContext<M> | undefined,
    taskIds: string[],
    options: Omit<ShardedScheduleOptions, 'dependsOn'> = {},
  ): Promise<string> {
    refuseTransaction(options);
    if (!Array.isArray(taskIds)) throw invalid('taskIds must be an array of task ids.');
    const joined = taskIds
      .filter(isUuid)
      .map((id) => ({ id, kind: 'task' as const, why: `the task ${id} it joins` }));
    const shard = this.place(taskName(def), ctx ?? {}, await this.pin([...joined, ...workflowRefs(ctx)]));
    const id = await shard.client.scheduleJoin(def, ctx, taskIds, options);
    this.remember(id, shard);
    return id;
  }

  /** schedule() then waitForTask() on the task's shard (TaskmillClient.scheduleAndWait). */
  async scheduleAndWait<M, R = unknown>(
    def: TaskDefinition<M, R> | string,
    ctx?: ScheduleContext<M>,
    options: ShardedScheduleOptions & WaitForTaskOptions = {},
  ): Promise<TaskInfo<R>> {
    refuseTransaction(options);
    const shard = await this.shardFor(def as TaskDefinition<M> | string, ctx ?? {}, options);
    const task = await shard.client.scheduleAndWait<M, R>(def, ctx, options);
    this.remember(task.id, shard);
    return task;
  }

  /** A task wherever it is, on whichever shard; undefined when no shard knows it. */
  async getTask<R = unknown>(id: string): Promise<TaskInfo<R> | undefined> {
    if (!isUuid(id)) throw invalid(`Task id must be a UUID, got ${JSON.stringify(id)}.`);
    const known = this.recall(id);
    if (known) return known.client.getTask<R>(id);
    // One lookup per shard, all at once: getTask itself is the cheapest way to find it.
    const found = await Promise.all(this.shards.map((s) => s.client.getTask<R>(id)));
    const i = found.findIndex((t) => t !== undefined);
    if (i < 0) return undefined;
    this.remember(id, this.shards[i]);
    return found[i];
  }

  /** TaskmillClient.cancel() on the task's shard; NOT_FOUND when no shard knows it. */
  async cancel(id: string): Promise<'cancelled' | 'requested'> {
    return (await this.shardOfTask(id)).client.cancel(id);
  }

  /** TaskmillClient.waitForTask() on the task's shard (its LISTEN connection opens on first use). */
  async waitForTask<R = unknown>(id: string, options?: WaitForTaskOptions): Promise<TaskInfo<R>> {
    return (await this.shardOfTask(id)).client.waitForTask<R>(id, options);
  }

  /** Counts of a workflow's tasks by state, from its shard; undefined when no shard knows it. */
  async workflow(id: string): Promise<WorkflowStatus | undefined> {
    checkWorkflowId(id);
    const shard = await this.locate({ id, kind: 'workflow', why: '' });
    return shard?.client.workflow(id);
  }

  waitForWorkflow(id: string, options: { timeoutMs?: number } = {}): Promise<WorkflowStatus> {
    return this.onWorkflowShard(id, (c) => c.waitForWorkflow(id, options));
  }

  cancelWorkflow(id: string): Promise<{ cancelled: number; requested: number }> {
    return this.onWorkflowShard(id, (c) => c.cancelWorkflow(id));
  }

  /** Sends the event on every shard (its waiters may be anywhere); returns how many tasks it woke in all. */
  async sendEvent(name: string, key: string, payload?: unknown): Promise<number> {
    const woken = await Promise.all(this.shards.map((s) => s.client.sendEvent(name, key, payload)));
    return woken.reduce((a, b) => a + b, 0);
  }

  /**
   * Sets the limit on every shard. Each shard's planner enforces it over its own tasks: a key whose
   * tasks are on several shards gets up to this limit on each (route by the concurrency key to avoid it).
   */
  async setConcurrencyLimit(pattern: string, limit: number | null): Promise<void> {
    await Promise.all(this.shards.map((s) => s.client.setConcurrencyLimit(pattern, limit)));
  }

  /** Sets the rate limit on every shard, enforced per shard as setConcurrencyLimit(). */
  async setRateLimit(pattern: string, rate: { limit: number; windowMs: number } | null): Promise<void> {
    await Promise.all(this.shards.map((s) => s.client.setRateLimit(pattern, rate)));
  }

  /** Every shard's cluster: its leader and nodes (TaskmillClient.cluster()). */
  cluster(options: { nodeTimeoutMs?: number } = {}): Promise<{ shard: string; overview: ClusterOverview }[]> {
    return Promise.all(
      this.shards.map(async (s) => ({ shard: s.name, overview: await s.client.cluster(options) })),
    );
  }

  /** Closes every shard's client. */
  close(): Promise<void> {
    this.closing ??= Promise.all(this.shards.map((s) => s.client.close())).then(() => {});
    return this.closing;
  }

  /** Each context's shard, as indexes into `ctxs` per shard; throws (CROSS_SHARD) before any write. */
  private async route<M>(
    name: string,
    ctxs: ScheduleContext<M>[],
    dependsOn: unknown,
  ): Promise<Map<Shard, number[]>> {
    const dependencyPin = await this.pin(dependencyRefs(dependsOn));
    const workflows = new Map<string, Pin | undefined>();
    for (const ctx of ctxs) for (const ref of workflowRefs(ctx)) workflows.set(ref.id, undefined);
    await Promise.all(
      [...workflows.keys()].map(async (id) => {
        const shard = await this.locate({ id, kind: 'workflow', why: '' });
        if (shard) workflows.set(id, { shard, why: `its workflow ${id}` });
      }),
    );
    const groups = new Map<Shard, number[]>();
    ctxs.forEach((raw, i) => {
      const ctx = routingContext(raw);
      const pins = [dependencyPin, ctx.workflowId === undefined ? undefined : workflows.get(ctx.workflowId)];
      const shard = this.place(name, ctx, samePin(pins.filter((p) => p !== undefined)));
      const group = groups.get(shard);
      if (group) group.push(i);
      else groups.set(shard, [i]);
    });
    return groups;
  }

  /** The shard for a task: its pin, checked against its key; else its key; else a named workflow or the turn. */
  private place(name: string, ctx: ScheduleContext<unknown>, pin: Pin | undefined): Shard {
    const key = this.shardKey(name, ctx);
    if (key !== undefined && typeof key !== 'string') {
      throw new TaskmillError(
        'INVALID_CONFIG',
        `shardKey() must return a string or undefined, got ${typeof key} for task ${name}.`,
      );
    }
    if (key === undefined && ctx.affinity !== undefined) {
      throw invalid(
        `Task ${name} has an affinity but shardKey() gave it no key: affinity holds within one shard, so ` +
          'every task of an affinity key needs the same shard key (return one derived from the affinity or its tenant).',
      );
    }
    const keyed = key === undefined ? undefined : this.shards[rendezvousShard(key, this.names)];
    if (pin && keyed && pin.shard !== keyed) {
      throw new TaskmillError(
        'CROSS_SHARD',
        `Task ${name} belongs on shard ${keyed.name} by its shard key ${JSON.stringify(key)}, but ${pin.why} is on ` +
          `shard ${pin.shard.name}: a workflow, its dependencies and its joins must be in one shard. Give the task ` +
          'the shard key of what it refers to (docs/scaling.md, "What sharding gives up").',
      );
    }
    if (pin) return pin.shard;
    if (keyed) return keyed;
    if (ctx.workflowId !== undefined && isUuid(ctx.workflowId)) {
      return this.shards[rendezvousShard(workflowKey(ctx.workflowId), this.names)];
    }
    const shard = this.shards[this.turn % this.shards.length];
    this.turn = (this.turn + 1) % this.shards.length;
    return shard;
  }

  /** The one shard the references are on (undefined: none found); CROSS_SHARD when on several. */
  private async pin(refs: Reference[]): Promise<Pin | undefined> {
    const found = await Promise.all(
      refs.map(async (ref) => {
        const shard = await this.locate(ref);
        return shard && { shard, why: ref.why };
      }),
    );
    return samePin(found.filter((p) => p !== undefined));
  }

  private async locate(ref: Reference): Promise<Shard | undefined> {
    const known = this.recall(ref.id);
    if (known) return known;
    const found = await Promise.all(
      this.shards.map(async (s) =>
        ref.kind === 'task'
          ? (await findTask(s.client.pool, ref.id)) !== undefined
          : (await countWorkflowTasks(s.client.pool, ref.id)).length > 0,
      ),
    );
    const holders = this.shards.filter((_, i) => found[i]);
    if (holders.length > 1) {
      throw new TaskmillError(
        'CROSS_SHARD',
        `The ${ref.kind} ${ref.id} has tasks on shards ${holders.map((s) => s.name).join(' and ')}: it was scheduled ` +
          'around the ShardedClient. Manage it on each shard through shards[].client.',
      );
    }
    if (holders.length === 1) this.remember(ref.id, holders[0]);
    return holders[0];
  }

  private async shardOfTask(id: string): Promise<Shard> {
    if (!isUuid(id)) throw invalid(`Task id must be a UUID, got ${JSON.stringify(id)}.`);
    const shard = await this.locate({ id, kind: 'task', why: '' });
    if (!shard) throw new TaskmillError('NOT_FOUND', `No task ${id} on any shard.`);
    return shard;
  }

  private async onWorkflowShard<T>(id: string, run: (client: TaskmillClient) => Promise<T>): Promise<T> {
    checkWorkflowId(id);
    const shard = await this.locate({ id, kind: 'workflow', why: '' });
    if (!shard) throw new TaskmillError('NOT_FOUND', `No workflow ${id} on any shard.`);
    return run(shard.client);
  }

  /** Most recently used first out: a hit moves the id to the back of the map's insertion order. */
  private recall(id: string): Shard | undefined {
    const key = id.toLowerCase();
    const shard = this.located.get(key);
    if (shard) {
      this.located.delete(key);
      this.located.set(key, shard);
    }
    return shard;
  }

  private remember(id: string, shard: Shard): void {
    if (this.cacheSize === 0) return;
    const key = id.toLowerCase();
    this.located.delete(key);
    this.located.set(key, shard);
    if (this.located.size > this.cacheSize) this.located.delete(this.located.keys().next().value!);
  }
}

function checkSpecs(options: ShardedClientOptions): ShardSpec[] {
  const config = (message: string) => new TaskmillError('INVALID_CONFIG', message);
  const specs = options?.shards;
  if (!Array.isArray(specs) || specs.length === 0) {
    throw config('ShardedClient needs `shards`: one { name, connectionString | pool } per database.');
  }
  const seen = new Set<string>();
  for (const spec of specs) {
    const name = (spec as Partial<ShardSpec>)?.name;
    if (typeof name !== 'string' || !SHARD_NAME_PATTERN.test(name)) {
      throw config(
        `Every shard needs a name of 1-100 letters, digits or _ . : - (got ${JSON.stringify(name)}): keys are hashed against it.`,
      );
    }
    if (seen.has(name))
      throw config(`Two shards are named ${JSON.stringify(name)}: shard names must be unique.`);
    seen.add(name);
  }
  if (options.shardKey !== undefined && typeof options.shardKey !== 'function') {
    throw config('shardKey must be a function (taskName, ctx) => string | undefined.');
  }
  const size = options.locateCacheSize;
  if (size !== undefined && !(Number.isInteger(size) && size >= 0)) {
    throw config(`locateCacheSize must be an integer >= 0, got ${JSON.stringify(size)}.`);
  }
  return specs;
}

function invalid(message: string): TaskmillError {
  return new TaskmillError('INVALID_ARGUMENT', message);
}

function refuseTransaction(options: object): void {
  if (options && 'client' in options) {
    throw invalid(
      'The ShardedClient cannot schedule in your transaction (`client`): a transaction belongs to one database. ' +
        'Take the shard from shardFor(def, ctx) and call shard.client.schedule(def, ctx, { client }) with a connection of shard.client.pool.',
    );
  }
}

function checkWorkflowId(id: string): void {
  if (!isUuid(id)) throw invalid(`Workflow id must be a UUID, got ${JSON.stringify(id)}.`);
}

function taskName(def: unknown): string {
  if (typeof def === 'string') return def;
  const name = (def as { name?: unknown } | null)?.name;
  return typeof name === 'string' ? name : '';
}

/** The context as routing reads it: a malformed one routes as empty and is refused by the shard's client. */
function routingContext<M>(ctx: ScheduleContext<M> | undefined): ScheduleContext<unknown> {
  return typeof ctx === 'object' && ctx !== null && !Array.isArray(ctx) ? ctx : {};
}

function workflowRefs<M>(ctx: ScheduleContext<M> | undefined): Reference[] {
  const id = routingContext(ctx).workflowId;
  return isUuid(id) ? [{ id, kind: 'workflow', why: `its workflow ${id}` }] : [];
}

/** dependsOn ids to locate; malformed ones are left to the shard's client, which refuses them. */
function dependencyRefs(ids: unknown): Reference[] {
  if (ids === undefined) return [];
  if (!Array.isArray(ids)) throw invalid('dependsOn must be an array of task ids.');
  return ids.filter(isUuid).map((id) => ({ id, kind: 'task', why: `its dependency ${id}` }));
}

function samePin(pins: Pin[]): Pin | undefined {
  const other = pins.find((p) => p.shard !== pins[0].shard);
  if (other) {
    throw new TaskmillError(
      'CROSS_SHARD',
      `${capitalize(pins[0].why)} is on shard ${pins[0].shard.name} and ${other.why} on shard ${other.shard.name}: ` +
        'a task, its workflow, its dependencies and the tasks it joins must be in one shard (docs/scaling.md, "What sharding gives up").',
    );
  }
  return pins[0];
}

function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
