/** taskmill's public API. */
export {
  defineTask,
  type TaskDefinition,
  type TaskDefinitionInput,
  type AffinityMode,
  type ExecutionGuarantee,
} from './task/task-definition.ts';
export type { RetryPolicy, RetryPolicyInput } from './task/retry-policy.ts';
export { DEFAULT_RETRY_POLICY } from './task/retry-policy.ts';
export type { ScheduleContext } from './task/schedule-context.ts';
export type { ConcurrencyOption, RateLimitOption } from './task/flow-options.ts';
export type { FlowLimit } from './store/flow.ts';
export type {
  TaskContext,
  TaskHandler,
  FailureHook,
  EventWaitOptions,
  EventWaitResult,
} from './worker/task-context.ts';
export { TaskmillClient, type ClientOptions, type ScheduleOptions, type TaskInfo } from './client/client.ts';
export {
  ShardedClient,
  PartialScheduleError,
  DEFAULT_LOCATE_CACHE_SIZE,
  type Shard,
  type ShardSpec,
  type ShardedClientOptions,
  type ShardedScheduleOptions,
} from './client/sharded-client.ts';
export {
  defaultShardKey,
  rendezvousShard,
  workflowKey,
  type ShardKeyFunction,
} from './client/shard-routing.ts';
export { WAIT_FOR_TASK_DEFAULTS, type WaitForTaskOptions } from './client/task-waiter.ts';
export type { ClusterOverview, ClusterNode } from './store/inspect.ts';
export { TaskmillNode, startNode, type NodeOptions, type NodeStats } from './node/node.ts';
export { TaskmillError, type TaskmillErrorCode } from './task/errors.ts';
export { openDatabase, startEmbeddedPostgres, type DatabaseHandle } from './store/database.ts';
export { migrate, migrationStatus } from './migrations/migrator.ts';
export { encode, decode } from './task/codec.ts';
export type { CronMessage, CronMissedPolicy, CronOptionInput } from './task/cron-option.ts';
export {
  shellTask,
  defineShellTask,
  SHELL_TASK_NAME,
  type ShellMessage,
  type ShellResult,
  type ShellTaskOptions,
} from './task/shell-task.ts';
export {
  listDeadLetters,
  getDeadLetter,
  requeueDeadLetters,
  purgeDeadLetters,
  type DeadLetter,
  type DeadLetterSummary,
  type ListDeadLettersOptions,
  type RequeueSelector,
  type PurgeSelector,
} from './store/dead-letters.ts';
