/** taskmill's public API. */
export {
  defineTask,
  type TaskDefinition,
  type TaskDefinitionInput,
  type AffinityMode,
  type ExecutionGuarantee,
} from './task-definition.ts';
export type { RetryPolicy, RetryPolicyInput } from './retry-policy.ts';
export { DEFAULT_RETRY_POLICY } from './retry-policy.ts';
export type { ScheduleContext } from './schedule-context.ts';
export type { TaskContext, TaskHandler, FailureHook } from './task-context.ts';
export { TaskmillClient, type ClientOptions, type ScheduleOptions, type TaskInfo } from './client.ts';
export { WAIT_FOR_TASK_DEFAULTS, type WaitForTaskOptions } from './task-waiter.ts';
export type { ClusterOverview, ClusterNode } from './inspect.ts';
export { TaskmillNode, startNode, type NodeOptions, type NodeStats } from './node.ts';
export { TaskmillError, type TaskmillErrorCode } from './errors.ts';
export { openDatabase, startEmbeddedPostgres, type DatabaseHandle } from './database.ts';
export { migrate, migrationStatus } from '../migrations/migrator.ts';
export { encode, decode } from './codec.ts';
export type { CronMessage, CronMissedPolicy, CronOptionInput } from '../planner/cron.ts';
export {
  shellTask,
  defineShellTask,
  SHELL_TASK_NAME,
  type ShellMessage,
  type ShellResult,
  type ShellTaskOptions,
} from './shell-task.ts';
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
} from './dead-letters.ts';
