/**
 * Task definitions: a name, the module whose default export handles the task (run in a worker
 * thread), and per-task options. Definitions are plain frozen data, importable from both the main
 * thread and worker threads (a handler imports the definitions of the children it schedules).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';
import { z } from 'zod';
import { TaskmillError } from './errors.ts';
import { TASK_NAME_PATTERN } from './schedule-context.ts';
import {
  DEFAULT_RETRY_POLICY,
  retryPolicySchema,
  type RetryPolicy,
  type RetryPolicyInput,
} from './retry-policy.ts';
import { cronOptionSchema, type CronOption, type CronOptionInput } from './cron-option.ts';
import {
  concurrencyOptionSchema,
  rateLimitOptionSchema,
  type ConcurrencyOption,
  type RateLimitOption,
} from './flow-options.ts';

export type ExecutionGuarantee = 'at-least-once' | 'exactly-once';
/** `workflow`: one workflow at a time per key, its tasks in parallel. `strict`: one task at a time per key. */
export type AffinityMode = 'workflow' | 'strict';

export { TASK_NAME_PATTERN };

const optionsSchema = z
  .object({
    name: z.string().regex(TASK_NAME_PATTERN, 'use 1-200 letters, digits or _ . : -'),
    handler: z.union([z.instanceof(URL), z.string().min(1)]),
    retry: retryPolicySchema.optional(),
    /** Hard limit on one attempt; the worker thread is terminated if the handler ignores the abort. */
    timeoutMs: z.number().int().positive().optional(),
    maxParallelInCluster: z.number().int().positive().optional(),
    maxParallelInNode: z.number().int().positive().optional(),
    deadLetter: z.boolean().default(true),
    guarantee: z.enum(['at-least-once', 'exactly-once']).default('at-least-once'),
    affinityMode: z.enum(['workflow', 'strict']).default('workflow'),
    priority: z.number().int().min(-1_000_000).max(1_000_000).default(0),
    cron: cronOptionSchema.optional(),
    concurrency: concurrencyOptionSchema.optional(),
    rateLimit: rateLimitOptionSchema.optional(),
  })
  .strict();

export interface TaskDefinitionInput {
  name: string;
  /** Module (file URL, `file:` string or absolute path) whose default export is the handler. */
  handler: URL | string;
  /** Default: BACKOFF (10 s, then 5 s * 2^(n-1), at most 1000 retries within 1 h). */
  retry?: RetryPolicyInput;
  timeoutMs?: number;
  maxParallelInCluster?: number;
  maxParallelInNode?: number;
  /** Move tasks that failed every attempt to the dead-letter table (default true). */
  deadLetter?: boolean;
  guarantee?: ExecutionGuarantee;
  affinityMode?: AffinityMode;
  /** Default priority of scheduled tasks; higher runs first. */
  priority?: number;
  /** Create one instance per slot of this cron expression (planner/cron.ts, docs/cron.md). */
  cron?: CronOptionInput;
  /**
   * At most `limit` tasks of this definition assigned or running at once per concurrency key, across
   * the cluster (tasks without a key share one group); docs/flow-control.md.
   */
  concurrency?: ConcurrencyOption;
  /** At most `limit` starts of this definition's tasks per concurrency key in any `windowMs`. */
  rateLimit?: RateLimitOption;
}

export interface TaskDefinition<M = unknown, R = unknown> {
  readonly name: string;
  /** file: URL of the handler module. */
  readonly handler: string;
  readonly retry: RetryPolicy;
  readonly timeoutMs: number | undefined;
  readonly maxParallelInCluster: number | undefined;
  readonly maxParallelInNode: number | undefined;
  readonly deadLetter: boolean;
  readonly guarantee: ExecutionGuarantee;
  readonly affinityMode: AffinityMode;
  readonly priority: number;
  readonly cron: CronOption | undefined;
  readonly concurrency: ConcurrencyOption | undefined;
  readonly rateLimit: RateLimitOption | undefined;
  /** Type carrier only; never set. */
  readonly __types?: { message: M; result: R };
}

export function defineTask<M = unknown, R = unknown>(input: TaskDefinitionInput): TaskDefinition<M, R> {
  const parsed = optionsSchema.safeParse(input);
  if (!parsed.success) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      `Invalid definition of task ${JSON.stringify(input?.name)}: ${z.prettifyError(parsed.error)}`,
    );
  }
  const o = parsed.data;
  return Object.freeze({
    name: o.name,
    handler: handlerUrl(o.handler),
    retry: o.retry ?? DEFAULT_RETRY_POLICY,
    timeoutMs: o.timeoutMs,
    maxParallelInCluster: o.maxParallelInCluster,
    maxParallelInNode: o.maxParallelInNode,
    deadLetter: o.deadLetter,
    guarantee: o.guarantee,
    affinityMode: o.affinityMode,
    priority: o.priority,
    cron: o.cron,
    concurrency: o.concurrency,
    rateLimit: o.rateLimit,
  });
}

function handlerUrl(handler: URL | string): string {
  if (handler instanceof URL) return handler.href;
  if (handler.startsWith('file:')) return handler;
  if (!path.isAbsolute(handler)) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      `Task handler ${JSON.stringify(handler)} must be a file URL or an absolute path, e.g. new URL('./handler.ts', import.meta.url).`,
    );
  }
  return pathToFileURL(handler).href;
}

/** A definition made by defineTask() (or read back from tm_task_defs): a valid name and a handler URL. */
export function isTaskDefinition(value: unknown): value is TaskDefinition {
  const v = value as TaskDefinition | undefined;
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof v.name === 'string' &&
    TASK_NAME_PATTERN.test(v.name) &&
    typeof v.handler === 'string'
  );
}

/** Checked when a node starts: the handler module of each definition must exist. */
export function assertHandlerExists(def: TaskDefinition): void {
  const file = fileURLToPath(def.handler);
  if (!existsSync(file)) {
    throw new TaskmillError('INVALID_CONFIG', `Handler module of task ${def.name} not found: ${file}`);
  }
}

/** The options the planner and the registry need, as stored in tm_task_defs.options. */
export function definitionRecord(def: TaskDefinition): Record<string, unknown> {
  const { name: _name, __types: _t, ...rest } = def;
  return rest;
}

/**
 * The task definitions a loaded module exports: named exports, the default export, and arrays of them.
 * The one rule of what a tasks module is, shared by `taskmill node --tasks` and the node processes of
 * `taskmill cluster` (scripts/local-cluster-node.ts); cli/task-modules.ts loads the modules.
 */
export function taskDefinitionsOf(module: Record<string, unknown>): TaskDefinition[] {
  const defs = Object.values(module)
    .flatMap((value) => (Array.isArray(value) ? value : [value]))
    .filter(isTaskDefinition);
  return [...new Set(defs)];
}
