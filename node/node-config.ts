/**
 * Node configuration: validated once, at start, with messages that say what to change. Defaults are
 * the named constants of the component each option belongs to.
 */
import { hostname } from 'node:os';
import { z } from 'zod';
import { PLANNER_DEFAULTS } from '../planner/planner.ts';
import { DEFAULT_LEASE_TTL_MS } from '../planner/leader.ts';
import { MAINTENANCE_DEFAULTS } from '../planner/maintenance.ts';
import { validatePollingDelay } from '../planner/polling-delay.ts';
import {
  DEFAULT_MAX_ERROR_BYTES,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_MAX_RESULT_BYTES,
  MAX_PAYLOAD_LIMIT_BYTES,
} from '../task/codec.ts';
import { COMPLETER_DEFAULTS } from './completer.ts';
import { DISPATCHER_DEFAULTS } from './dispatcher.ts';
import { TaskmillError } from '../task/errors.ts';
import { DEFAULT_HEARTBEAT_INTERVAL_MS } from './heartbeat.ts';
import { DEFAULT_MAX_CONNECTIONS, splitConnectionBudget, type ConnectionSplit } from './connection-budget.ts';
import { isTaskDefinition, type TaskDefinition } from '../task/task-definition.ts';
import { assertShellConfig, shellOptionsSchema } from '../task/shell-task.ts';
import { networkOptions, networkSchema, type NetworkOptions } from '../store/network.ts';

export const NODE_DEFAULTS = {
  /** distributed-task-framework `max-parallel-tasks-in-node`. */
  maxParallelTasksInNode: 100,
  heartbeatIntervalMs: DEFAULT_HEARTBEAT_INTERVAL_MS,
  /** Fetch assigned tasks at least this often; NOTIFY from the planner wakes the fetcher sooner. */
  fetchIntervalMs: 1_000,
  /** Without notifications, nodes poll for assignments this often. */
  fetchIntervalWithoutNotifyMs: 50,
  shutdownGraceMs: 10_000,
  /** Every connection the node opens (connection-budget.ts, docs/connections.md). */
  maxConnections: DEFAULT_MAX_CONNECTIONS,
};

const positiveInt = z.number().int().positive();
const ms = z.number().int().min(0);

const plannerSchema = z
  .object({
    batchSize: positiveInt.max(100_000).default(PLANNER_DEFAULTS.batchSize),
    planFactor: z.number().min(1).max(100).default(PLANNER_DEFAULTS.planFactor),
    pollingDelay: z.record(z.string(), z.number()).default(PLANNER_DEFAULTS.pollingDelay),
    nodeCpuLimit: z.number().gt(0).max(1).default(PLANNER_DEFAULTS.nodeCpuLimit),
    leaseTtlMs: positiveInt.min(100).default(DEFAULT_LEASE_TTL_MS),
    wakeDebounceMs: ms.max(10_000).default(PLANNER_DEFAULTS.wakeDebounceMs),
    fairness: z.boolean().default(PLANNER_DEFAULTS.fairness),
    maintenanceIntervalMs: positiveInt.default(MAINTENANCE_DEFAULTS.intervalMs),
  })
  .strict();

const KiB = 1024;

/** Size limits of what handlers produce (docs/limits.md). */
const limitsSchema = z
  .object({
    /** A larger result fails its task with RESULT_TOO_LARGE. */
    maxResultBytes: positiveInt.max(MAX_PAYLOAD_LIMIT_BYTES).default(DEFAULT_MAX_RESULT_BYTES),
    /** A larger message of a child or join message fails the sending task with MESSAGE_TOO_LARGE. */
    maxMessageBytes: positiveInt.max(MAX_PAYLOAD_LIMIT_BYTES).default(DEFAULT_MAX_MESSAGE_BYTES),
    /** A longer error text (UTF-8 bytes) is stored truncated, with a marker. */
    maxErrorBytes: positiveInt
      .min(KiB)
      .max(16 * KiB * KiB)
      .default(DEFAULT_MAX_ERROR_BYTES),
  })
  .strict();

const completerSchema = z
  .object({
    batchSize: positiveInt.max(100_000).default(COMPLETER_DEFAULTS.batchSize),
    maxBatchBytes: positiveInt
      .min(64 * KiB)
      .max(MAX_PAYLOAD_LIMIT_BYTES)
      .default(COMPLETER_DEFAULTS.maxBatchBytes),
    flushIntervalMs: ms.max(60_000).default(COMPLETER_DEFAULTS.flushIntervalMs),
    maxFlushIntervalMs: ms.max(60_000).default(COMPLETER_DEFAULTS.maxFlushIntervalMs),
    flushShare: z.number().gt(0).max(1).default(COMPLETER_DEFAULTS.flushShare),
    highWaterMark: positiveInt.default(COMPLETER_DEFAULTS.highWaterMark),
    highWaterMarkBytes: positiveInt.min(KiB * KiB).default(COMPLETER_DEFAULTS.highWaterMarkBytes),
  })
  .strict();

const schema = z
  .object({
    connectionString: z.string().min(1).optional(),
    /**
     * The LISTEN session's server, when `connectionString` goes through a pooler in transaction mode
     * (PgBouncer), which cannot carry LISTEN: a direct connection string (docs/connections.md).
     */
    listenUrl: z.string().min(1).optional(),
    pool: z.any().optional(),
    tasks: z.array(z.custom<TaskDefinition>(isTaskDefinition, 'expected definitions made by defineTask()')),
    name: z.string().min(1).max(200).default(`${hostname()}-${process.pid}`),
    maxParallelTasksInNode: positiveInt.max(100_000).default(NODE_DEFAULTS.maxParallelTasksInNode),
    threads: positiveInt.max(256).default(DISPATCHER_DEFAULTS.threads),
    maxBatchSize: positiveInt.max(10_000).default(DISPATCHER_DEFAULTS.maxBatchSize),
    heartbeatIntervalMs: positiveInt.min(10).default(NODE_DEFAULTS.heartbeatIntervalMs),
    nodeTimeoutMs: positiveInt.default(PLANNER_DEFAULTS.nodeTimeoutMs),
    fetchIntervalMs: positiveInt.optional(),
    planner: z.union([z.literal(false), plannerSchema]).default(plannerSchema.parse({})),
    completer: completerSchema.default(completerSchema.parse({})),
    limits: limitsSchema.default(limitsSchema.parse({})),
    notifications: z.boolean().default(true),
    shutdownGraceMs: ms.default(NODE_DEFAULTS.shutdownGraceMs),
    abortGraceMs: ms.default(DISPATCHER_DEFAULTS.abortGraceMs),
    historyRetentionMs: positiveInt.default(MAINTENANCE_DEFAULTS.historyRetentionMs),
    migrate: z.boolean().default(true),
    maxConnections: positiveInt.max(10_000).default(NODE_DEFAULTS.maxConnections),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).optional(),
    handleSignals: z.boolean().default(false),
    workerExecArgv: z.array(z.string()).optional(),
    /** V8 heap limit of each worker thread, MiB: a handler that allocates more ends its own thread. */
    threadHeapLimitMb: positiveInt.min(16).max(1_048_576).default(DISPATCHER_DEFAULTS.threadHeapLimitMb),
    /** Shell tasks (shell-task.ts): disabled unless enabled here, with an allowlist of executables. */
    shell: shellOptionsSchema.default(shellOptionsSchema.parse({})),
    /** Timeouts and keepalive of the node's connections (store/network.ts, docs/network-faults.md). */
    network: networkSchema.default({}),
  })
  .strict();

export type NodeOptions = z.input<typeof schema> & { tasks: TaskDefinition[] };
/** The parsed options; `network` with its defaults filled in from the node's timing, and the budget's split. */
export type NodeConfig = Omit<z.output<typeof schema>, 'network'> & {
  network: NetworkOptions;
  connections: ConnectionSplit;
};

export function parseNodeConfig(options: NodeOptions): NodeConfig {
  const parsed = schema.safeParse(options);
  if (!parsed.success) {
    throw new TaskmillError('INVALID_CONFIG', `Invalid node configuration: ${z.prettifyError(parsed.error)}`);
  }
  const parsedConfig = parsed.data;
  if (parsedConfig.listenUrl && !parsedConfig.notifications) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      'listenUrl is the server of the LISTEN session, which a node without notifications does not open: ' +
        'drop listenUrl, or set notifications to true.',
    );
  }
  const config: NodeConfig = {
    ...parsedConfig,
    connections: splitConnectionBudget({
      maxConnections: parsedConfig.maxConnections,
      notifications: parsedConfig.notifications,
      threads: parsedConfig.threads,
    }),
    network: networkOptions(parsedConfig.network, { nodeTimeoutMs: parsedConfig.nodeTimeoutMs }),
  };
  if (!config.pool && !config.connectionString && !process.env.DATABASE_URL) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      'No database: pass connectionString or pool, or set DATABASE_URL.',
    );
  }
  if (config.heartbeatIntervalMs * 2 > config.nodeTimeoutMs) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      `nodeTimeoutMs (${config.nodeTimeoutMs}) must be at least twice heartbeatIntervalMs (${config.heartbeatIntervalMs}), or live nodes would be declared dead.`,
    );
  }
  const names = new Set<string>();
  for (const def of config.tasks) {
    if (names.has(def.name)) throw new TaskmillError('INVALID_CONFIG', `Task ${def.name} is defined twice.`);
    names.add(def.name);
  }
  assertShellConfig(config.tasks, config.shell);
  if (config.planner) validatePollingDelay(config.planner.pollingDelay as Record<number, number>);
  return config;
}
