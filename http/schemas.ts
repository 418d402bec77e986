/**
 * JSON schemas of the HTTP API: they validate requests (a request that does not match gets a 400 and
 * changes nothing), shape responses, and make up the OpenAPI document served at /openapi.json.
 */
import { DEAD_LETTER_LIMITS } from '../store/dead-letters.ts';
import { TaskmillError } from '../task/errors.ts';
import { SCHEDULE_LIMITS } from '../task/schedule-context.ts';
import { TASK_NAME_PATTERN } from '../task/task-definition.ts';
import { INSPECT_DEFAULTS } from '../store/inspect.ts';
import { KEY_VIEW_DEFAULTS } from '../store/key-views.ts';
import { WORKFLOW_GRAPH_DEFAULTS } from '../store/workflow-graph.ts';
import { DEPTH_STATES, TASK_STATES } from '../task/task-states.ts';
import { MAX_EVENT_NAME_LENGTH } from '../task/events.ts';
import { FLOW_LIMITS } from '../task/flow-options.ts';

export const MAX_TASKS_PER_REQUEST = 10_000;
/** The longest wait of `GET /api/tasks/:id?wait=`: under the idle timeouts of common proxies. */
export const MAX_TASK_WAIT_MS = 60_000;
/** `?wait=`: a whole number of milliseconds, seconds (the default unit) or minutes. */
export const WAIT_PATTERN = /^[0-9]{1,9}(ms|s|m)?$/;

/**
 * A duration such as `500ms`, `30s` or `1m` (a bare number is seconds) in milliseconds, or
 * INVALID_ARGUMENT naming `what` when it is malformed or above `maxMs`.
 */
export function parseDuration(text: string, maxMs: number, what: string): number {
  const m = WAIT_PATTERN.exec(text);
  const unit = m?.[1] ?? 's';
  const ms = m ? Number(text.slice(0, text.length - (m[1]?.length ?? 0))) * DURATION_UNITS[unit] : NaN;
  if (!(ms <= maxMs)) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `${what} must be a duration such as 500ms, 30s or 1m, at most ${maxMs / 1000}s; got ${JSON.stringify(text.slice(0, 40))}.`,
    );
  }
  return ms;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000 };

/** A `?wait=` value in milliseconds (at most MAX_TASK_WAIT_MS). */
export function parseWait(text: string): number {
  return parseDuration(text, MAX_TASK_WAIT_MS, 'wait');
}

const taskName = {
  type: 'string',
  pattern: TASK_NAME_PATTERN.source,
  description: 'A task name: 1-200 letters, digits or _ . : -',
} as const;

const uuid = { type: 'string', format: 'uuid' } as const;
const nullableString = { type: 'string', nullable: true } as const;
const nullableDate = { type: 'string', format: 'date-time', nullable: true } as const;

export const errorSchema = {
  type: 'object',
  properties: {
    statusCode: { type: 'integer' },
    code: {
      type: 'string',
      description: 'Stable error code, e.g. INVALID_ARGUMENT, UNKNOWN_TASK, NOT_FOUND.',
    },
    error: { type: 'string' },
    message: { type: 'string', description: 'What went wrong and what to do next.' },
  },
} as const;

export const newTaskSchema = {
  type: 'object',
  required: ['name'],
  additionalProperties: false,
  properties: {
    name: { ...taskName, description: 'A task name registered by a node.' },
    message: { description: 'Any JSON value; stored as msgpack and handed to the handler.' },
    delayMs: {
      type: 'integer',
      minimum: 0,
      maximum: SCHEDULE_LIMITS.maxDelayMs,
      description: 'Run no earlier than this many milliseconds from now.',
    },
    runAt: {
      type: ['integer', 'string'],
      minimum: SCHEDULE_LIMITS.minRunAt,
      maximum: SCHEDULE_LIMITS.maxRunAt,
      minLength: 1,
      maxLength: 64,
      description:
        'Run no earlier than this time: epoch milliseconds or an ISO 8601 date-time, between years 0001 and 9999.',
    },
    affinity: {
      type: 'string',
      minLength: 1,
      maxLength: SCHEDULE_LIMITS.maxAffinityBytes,
      description: `Affinity key: at most one workflow per key runs at once. At most ${SCHEDULE_LIMITS.maxAffinityBytes} bytes (UTF-8).`,
    },
    affinityGroup: {
      type: 'string',
      maxLength: SCHEDULE_LIMITS.maxAffinityBytes,
      description: `Group of the affinity key (default ""). At most ${SCHEDULE_LIMITS.maxAffinityBytes} bytes (UTF-8).`,
    },
    workflowId: { ...uuid, description: 'Join this workflow (or name a new one).' },
    priority: { type: 'integer', minimum: -1_000_000, maximum: 1_000_000, description: 'Higher runs first.' },
    concurrencyKey: {
      type: 'string',
      minLength: 1,
      maxLength: SCHEDULE_LIMITS.maxConcurrencyKeyBytes,
      description: `Concurrency key (e.g. a tenant): the concurrency and rate limits of the key and of the task's definition apply to it, and the planner serves keys round-robin (docs/flow-control.md). At most ${SCHEDULE_LIMITS.maxConcurrencyKeyBytes} bytes (UTF-8); not with dependsOn.`,
    },
    dependsOn: {
      type: 'array',
      maxItems: 1000,
      items: uuid,
      description:
        'Existing task ids this task waits for; it runs once all completed successfully, and ends failed if one fails for good or is cancelled.',
    },
    idempotencyKey: {
      type: 'string',
      minLength: 1,
      maxLength: SCHEDULE_LIMITS.maxKeyBytes,
      description: `Deduplication key, per task name: while a task of this name with this key is pending or running (or ended less than idempotencyRetentionMs ago), the request returns that task's id and writes nothing. At most ${SCHEDULE_LIMITS.maxKeyBytes} bytes (UTF-8).`,
    },
    idempotencyRetentionMs: {
      type: 'integer',
      minimum: 0,
      maximum: SCHEDULE_LIMITS.maxKeyRetentionMs,
      description: 'How long the task still holds its idempotency key after it ended (default 0).',
    },
    debounce: {
      type: 'object',
      required: ['key', 'delayMs'],
      additionalProperties: false,
      description:
        'Debounce, per task name: while a task of this name with this key has not started, the request replaces its message and pushes its start to now + delayMs, and returns its id; once it started, a new task is created. Not with delayMs, runAt or idempotencyKey.',
      properties: {
        key: { type: 'string', minLength: 1, maxLength: SCHEDULE_LIMITS.maxKeyBytes },
        delayMs: { type: 'integer', minimum: 0, maximum: SCHEDULE_LIMITS.maxDelayMs },
      },
    },
  },
} as const;

export interface NewTaskBody {
  name: string;
  message?: unknown;
  delayMs?: number;
  runAt?: number | string;
  affinity?: string;
  affinityGroup?: string;
  workflowId?: string;
  priority?: number;
  concurrencyKey?: string;
  dependsOn?: string[];
  idempotencyKey?: string;
  idempotencyRetentionMs?: number;
  debounce?: { key: string; delayMs: number };
}

export const submitSchema = {
  summary: 'Schedule one task (object body) or many (array body, one transaction)',
  tags: ['tasks'],
  body: {
    oneOf: [
      newTaskSchema,
      { type: 'array', minItems: 1, maxItems: MAX_TASKS_PER_REQUEST, items: newTaskSchema },
    ],
  },
  response: {
    201: {
      description: 'Scheduled: `id` for an object body, `ids` (in request order) for an array body.',
      type: 'object',
      properties: { id: uuid, ids: { type: 'array', items: uuid } },
    },
    '4xx': errorSchema,
  },
} as const;

const taskSummary = {
  type: 'object',
  properties: {
    id: uuid,
    name: { type: 'string' },
    state: { type: 'string', enum: TASK_STATES },
    workflowId: uuid,
    parentId: { ...uuid, nullable: true },
    affinityGroup: nullableString,
    affinity: nullableString,
    priority: { type: 'integer', nullable: true },
    attempts: { type: 'integer' },
    nodeId: { ...uuid, nullable: true },
    notBefore: nullableDate,
    createdAt: { type: 'string', format: 'date-time' },
    finishedAt: nullableDate,
    error: nullableString,
    progress: { description: 'The last progress value its handler reported (ctx.progress); null: none.' },
  },
} as const;

export const idParams = { type: 'object', required: ['id'], properties: { id: uuid } } as const;

export const getTaskSchema = {
  summary: 'A task wherever it is: pending, history (completed, failed, cancelled) or dead letters',
  tags: ['tasks'],
  description:
    'With `wait`, a long poll: the answer comes when the task has ended, or when the wait is over with the task as it is then (200 either way; look at `state`).',
  params: idParams,
  querystring: {
    type: 'object',
    additionalProperties: false,
    properties: {
      wait: {
        type: 'string',
        pattern: WAIT_PATTERN.source,
        description: `Wait up to this long for the task to end: milliseconds, seconds or minutes (\`500ms\`, \`30s\`, \`1m\`; a bare number is seconds), at most ${MAX_TASK_WAIT_MS / 1000} s.`,
      },
    },
  },
  response: {
    200: {
      type: 'object',
      properties: {
        id: uuid,
        name: { type: 'string' },
        state: { type: 'string', enum: TASK_STATES },
        progress: { description: 'The last progress value its handler reported (ctx.progress); null: none.' },
        workflowId: uuid,
        parentId: { ...uuid, nullable: true },
        attempts: { type: 'integer' },
        nodeId: { ...uuid, nullable: true },
        notBefore: nullableDate,
        createdAt: { type: 'string', format: 'date-time' },
        finishedAt: nullableDate,
        result: { description: 'The handler result (JSON; bigint as string, bytes as base64).' },
        error: nullableString,
        retry: {
          type: 'object',
          nullable: true,
          description:
            'For a pending task: its retry policy (as its nodes registered it, else the default), failed attempts so far, attempts still allowed at most (the next one included; null: no limit), when the next one may start, and when the last allowed one starts at the latest. null once the task ended.',
          properties: {
            policy: { type: 'object', additionalProperties: true },
            registered: { type: 'boolean' },
            attemptsSoFar: { type: 'integer' },
            attemptsLeft: { type: 'integer', nullable: true },
            nextAttemptAt: nullableDate,
            lastAttemptBy: nullableDate,
          },
        },
      },
    },
    '4xx': errorSchema,
  },
} as const;

export const listTasksSchema = {
  summary: 'List tasks, newest first, with filters and keyset pagination',
  tags: ['tasks'],
  querystring: {
    type: 'object',
    additionalProperties: false,
    properties: {
      state: {
        type: 'array',
        items: { type: 'string', enum: TASK_STATES },
        description: 'One or more states (repeat the parameter, or separate with commas).',
      },
      name: taskName,
      workflow: uuid,
      affinity: {
        type: 'string',
        minLength: 1,
        maxLength: 1000,
        description:
          'Tasks of this affinity, in any group unless `affinityGroup` is given too. History keeps no affinity: only pending tasks and dead letters match.',
      },
      affinityGroup: {
        type: 'string',
        maxLength: 1000,
        description: 'With `affinity`: only tasks of this affinity group (empty: the default group).',
      },
      from: { type: 'string', format: 'date-time', description: 'Created at or after this time.' },
      to: { type: 'string', format: 'date-time', description: 'Created before this time.' },
      limit: {
        type: 'integer',
        minimum: 1,
        maximum: INSPECT_DEFAULTS.maxListLimit,
        default: INSPECT_DEFAULTS.listLimit,
      },
      cursor: { ...uuid, description: 'nextCursor of the previous page (the same filters must be passed).' },
    },
  },
  response: {
    200: {
      type: 'object',
      properties: { tasks: { type: 'array', items: taskSummary }, nextCursor: { ...uuid, nullable: true } },
    },
    '4xx': errorSchema,
  },
} as const;

export const cancelTaskSchema = {
  summary: 'Cancel a task',
  tags: ['tasks'],
  params: idParams,
  response: {
    200: {
      type: 'object',
      properties: {
        id: uuid,
        outcome: {
          type: 'string',
          enum: ['cancelled', 'requested'],
          description:
            '`cancelled`: it had not started and ended now; `requested`: its node was asked to abort it.',
        },
      },
    },
    '4xx': errorSchema,
  },
} as const;

const node = {
  type: 'object',
  properties: {
    id: uuid,
    name: { type: 'string' },
    capacity: { type: 'integer' },
    taskNames: { type: 'array', items: { type: 'string' } },
    inFlight: { type: 'integer' },
    held: { type: 'integer' },
    cpu: { type: 'number' },
    connections: {
      type: 'integer',
      nullable: true,
      description: 'Connections the node had open at its last heartbeat; null: not reported.',
    },
    maxConnections: {
      type: 'integer',
      nullable: true,
      description: 'Its connection budget (maxConnections); null: not reported.',
    },
    startedAt: { type: 'string', format: 'date-time' },
    heartbeatAt: { type: 'string', format: 'date-time' },
    alive: { type: 'boolean' },
    leader: { type: 'boolean' },
  },
} as const;

const leader = {
  type: 'object',
  nullable: true,
  properties: {
    nodeId: uuid,
    nodeName: nullableString,
    acquiredAt: { type: 'string', format: 'date-time' },
    expiresAt: { type: 'string', format: 'date-time' },
  },
} as const;

export const nodesSchema = {
  summary: 'Registered nodes and the planner leader',
  tags: ['cluster'],
  response: {
    200: { type: 'object', properties: { leader, nodes: { type: 'array', items: node } } },
  },
} as const;

const depthStates = DEPTH_STATES;

export const statsSchema = {
  summary: 'Nodes, leader, queue depths, throughput over the last minutes, recent failures',
  tags: ['cluster'],
  querystring: {
    type: 'object',
    additionalProperties: false,
    properties: {
      windowMinutes: { type: 'integer', minimum: 1, maximum: 1440 },
      bucketSeconds: { type: 'integer', minimum: 1, maximum: 86400 },
    },
  },
  response: {
    200: {
      type: 'object',
      properties: {
        at: { type: 'string', format: 'date-time' },
        leader,
        nodes: { type: 'array', items: node },
        depths: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              name: { type: 'string' },
              state: { type: 'string', enum: depthStates },
              count: { type: 'integer' },
            },
          },
        },
        totals: {
          type: 'object',
          properties: Object.fromEntries(depthStates.map((s) => [s, { type: 'integer' }])),
        },
        throughput: {
          type: 'object',
          properties: {
            bucketSeconds: { type: 'integer' },
            perSecond: { type: 'number' },
            timedOut: { type: 'boolean' },
            buckets: {
              type: 'array',
              items: {
                type: 'object',
                properties: {
                  start: { type: 'string', format: 'date-time' },
                  completed: { type: 'integer' },
                  failed: { type: 'integer' },
                  cancelled: { type: 'integer' },
                  dead: { type: 'integer' },
                },
              },
            },
          },
        },
        recentFailures: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              id: uuid,
              name: { type: 'string' },
              workflowId: uuid,
              state: { type: 'string', enum: ['dead', 'failed'] },
              attempts: { type: 'integer' },
              error: nullableString,
              failedAt: { type: 'string', format: 'date-time' },
            },
          },
        },
      },
    },
    '4xx': errorSchema,
  },
} as const;

export const workflowSchema = {
  summary: 'Task counts of a workflow by state',
  tags: ['workflows'],
  params: idParams,
  response: {
    200: {
      type: 'object',
      properties: {
        id: uuid,
        ...Object.fromEntries(
          [
            'ready',
            'waiting',
            'sleeping',
            'assigned',
            'running',
            'completed',
            'failed',
            'cancelled',
            'dead',
            'pending',
            'total',
          ].map((k) => [k, { type: 'integer' }]),
        ),
        done: { type: 'boolean', description: 'No task of the workflow is pending.' },
      },
    },
    '4xx': errorSchema,
  },
} as const;

export const cancelWorkflowSchema = {
  summary: 'Cancel a workflow: pending tasks end cancelled, running ones are aborted on their nodes',
  tags: ['workflows'],
  params: idParams,
  response: {
    200: {
      type: 'object',
      properties: {
        id: uuid,
        cancelled: { type: 'integer', description: 'Tasks that had not started, now cancelled.' },
        requested: { type: 'integer', description: 'Running tasks whose nodes were asked to abort them.' },
      },
    },
    '4xx': errorSchema,
  },
} as const;

const deadLetter = {
  type: 'object',
  properties: {
    id: uuid,
    name: { type: 'string' },
    workflowId: uuid,
    parentId: { ...uuid, nullable: true },
    affinityGroup: nullableString,
    affinity: nullableString,
    priority: { type: 'integer' },
    attempts: { type: 'integer' },
    error: nullableString,
    createdAt: { type: 'string', format: 'date-time' },
    failedAt: { type: 'string', format: 'date-time' },
  },
} as const;

export const listDeadLettersSchema = {
  summary: 'Dead letters in task creation order, a page at a time',
  tags: ['dead letters'],
  querystring: {
    type: 'object',
    additionalProperties: false,
    properties: {
      name: taskName,
      limit: { type: 'integer', minimum: 1, maximum: 10_000, default: 100 },
      after: { ...uuid, description: 'Id of the last dead letter of the previous page.' },
    },
  },
  response: {
    200: {
      type: 'object',
      properties: {
        deadLetters: { type: 'array', items: deadLetter },
        nextAfter: { ...uuid, nullable: true, description: 'Pass as `after` for the next page.' },
      },
    },
    '4xx': errorSchema,
  },
} as const;

export const getDeadLetterSchema = {
  summary: 'One dead letter with its message',
  tags: ['dead letters'],
  params: idParams,
  response: {
    200: {
      type: 'object',
      properties: {
        ...deadLetter.properties,
        message: { description: 'The task message (JSON; bigint as string, bytes as base64).' },
        strictAffinity: { type: 'boolean' },
        workflowCreatedAt: { type: 'string', format: 'date-time' },
      },
    },
    '4xx': errorSchema,
  },
} as const;

const ids = { type: 'array', minItems: 1, maxItems: 10_000, items: uuid } as const;

export const sendEventSchema = {
  summary: 'Send an event to the tasks waiting for it (ctx.waitForEvent): returns how many it woke',
  description:
    "Every task waiting for (name, key) gets the payload as its wait's result and becomes ready, in one " +
    'transaction. An event reaches only tasks already waiting; 0 woken is not an error. docs/durable-waits.md.',
  tags: ['events'],
  body: {
    type: 'object',
    additionalProperties: false,
    required: ['name', 'key'],
    properties: {
      name: {
        type: 'string',
        minLength: 1,
        maxLength: MAX_EVENT_NAME_LENGTH,
        description: 'The event name.',
      },
      key: {
        type: 'string',
        maxLength: MAX_EVENT_NAME_LENGTH,
        description: "Which occurrence (an order id...): the waiters' `key`.",
      },
      payload: {
        description: 'Any JSON value (default null); stored as msgpack and returned to the waiters.',
      },
    },
  },
  response: {
    200: { type: 'object', properties: { woken: { type: 'integer' } } },
    '4xx': errorSchema,
  },
} as const;

const flowLimit = {
  type: 'object',
  properties: {
    pattern: { type: 'string' },
    concurrency: { type: 'integer', nullable: true },
    rate: {
      type: 'object',
      nullable: true,
      properties: { limit: { type: 'integer' }, windowMs: { type: 'integer' } },
    },
  },
} as const;

const flowLimitsResponse = {
  200: { type: 'object', properties: { limits: { type: 'array', items: flowLimit } } },
  '4xx': errorSchema,
} as const;

const flowPattern = {
  type: 'string',
  minLength: 1,
  description: 'A concurrency key pattern: `*` matches any run of characters (docs/flow-control.md).',
} as const;

export const listFlowLimitsSchema = {
  summary: 'The key-pattern concurrency and rate limits (client.setConcurrencyLimit / setRateLimit)',
  tags: ['flow control'],
  response: flowLimitsResponse,
} as const;

export const setFlowLimitSchema = {
  summary: "Set a key pattern's concurrency and/or rate limit (null removes one); answers every limit",
  tags: ['flow control'],
  body: {
    type: 'object',
    additionalProperties: false,
    required: ['pattern'],
    anyOf: [{ required: ['concurrency'] }, { required: ['rate'] }],
    properties: {
      pattern: flowPattern,
      concurrency: {
        type: 'integer',
        nullable: true,
        minimum: 1,
        maximum: FLOW_LIMITS.maxLimit,
        description:
          'Most tasks of the matching keys assigned or running at once, cluster-wide; null removes it.',
      },
      rate: {
        type: 'object',
        nullable: true,
        additionalProperties: false,
        required: ['limit', 'windowMs'],
        properties: {
          limit: { type: 'integer', minimum: 1, maximum: FLOW_LIMITS.maxLimit },
          windowMs: { type: 'integer', minimum: 1, maximum: FLOW_LIMITS.maxWindowMs },
        },
        description: 'Most task starts of the matching keys in any window of windowMs; null removes it.',
      },
    },
  },
  response: flowLimitsResponse,
} as const;

export const removeFlowLimitSchema = {
  summary: "Remove a key pattern's limits; answers every limit left",
  tags: ['flow control'],
  querystring: {
    type: 'object',
    additionalProperties: false,
    required: ['pattern'],
    properties: { pattern: flowPattern },
  },
  response: flowLimitsResponse,
} as const;

export const requeueSchema = {
  summary: 'Requeue dead letters as ready tasks (same ids): exactly one of ids, name, all',
  tags: ['dead letters'],
  body: {
    type: 'object',
    additionalProperties: false,
    properties: { ids, name: taskName, all: { type: 'boolean', enum: [true] } },
  },
  response: {
    200: { type: 'object', properties: { requeued: { type: 'array', items: uuid } } },
    '4xx': errorSchema,
  },
} as const;

export const requeueOneSchema = {
  summary: 'Requeue one dead letter',
  tags: ['dead letters'],
  params: idParams,
  response: requeueSchema.response,
} as const;

export const purgeSchema = {
  summary: 'Delete dead letters for good: ids alone, or name and/or olderThanMs (0 = all)',
  tags: ['dead letters'],
  body: {
    type: 'object',
    additionalProperties: false,
    properties: {
      ids,
      name: taskName,
      olderThanMs: {
        type: 'integer',
        minimum: 0,
        maximum: DEAD_LETTER_LIMITS.maxOlderThanMs,
        description: 'Dead letters that failed at least this many milliseconds ago (at most 1,000 years).',
      },
    },
  },
  response: {
    200: { type: 'object', properties: { purged: { type: 'integer' } } },
    '4xx': errorSchema,
  },
} as const;

/**
 * Request bodies are validated without type coercion (a string is never taken for a number, an
 * array for a string, null for 0). Query strings are text by nature: their numbers, booleans and
 * lists are parsed here, following the route's querystring schema, before validation. A value that
 * does not parse is left as text, for the validator to refuse.
 */
export function parseQuery(schema: unknown, query: Record<string, unknown>): void {
  const properties = (schema as { properties?: Record<string, { type?: unknown }> } | undefined)?.properties;
  if (!properties) return;
  for (const [key, value] of Object.entries(query)) {
    const type = properties[key]?.type;
    if (type === 'array') query[key] = Array.isArray(value) ? value : [value];
    else if (typeof value !== 'string') continue;
    else if (type === 'integer' && /^-?\d{1,16}$/.test(value)) query[key] = Number(value);
    else if (type === 'number' && value.trim() !== '' && Number.isFinite(Number(value)))
      query[key] = Number(value);
    else if (type === 'boolean' && (value === 'true' || value === 'false')) query[key] = value === 'true';
  }
}

// The dashboard's pages: a task with its attempts, a workflow's graph, who holds a key.

const taskLink = {
  type: 'object',
  properties: { id: uuid, name: { type: 'string' }, state: { type: 'string', enum: TASK_STATES } },
} as const;
const waitLink = {
  type: 'object',
  properties: { ...taskLink.properties, kind: { type: 'string', enum: ['join', 'dependency'] } },
} as const;

export const taskDetailsSchema = {
  summary: 'A task with its message, result, keys, attempts, waits and children (the task page)',
  tags: ['tasks'],
  description:
    'Attempts, oldest first: a failed attempt that was retried with its node, start, end and error; the attempt under way with its node, start and progress; the attempt that ended the task with its end and error (its node and start are not recorded: null).',
  params: idParams,
  response: {
    200: {
      type: 'object',
      properties: {
        id: uuid,
        name: { type: 'string' },
        state: { type: 'string', enum: TASK_STATES },
        storedIn: { type: 'string', enum: ['tasks', 'history', 'dead_letters'] },
        workflowId: uuid,
        parentId: { ...uuid, nullable: true },
        affinityGroup: nullableString,
        affinity: nullableString,
        concurrencyKey: nullableString,
        priority: { type: 'integer', nullable: true },
        isJoin: { type: 'boolean', nullable: true, description: 'Known while the task is pending.' },
        attemptCount: { type: 'integer' },
        nodeId: { ...uuid, nullable: true },
        nodeName: nullableString,
        notBefore: nullableDate,
        createdAt: { type: 'string', format: 'date-time' },
        finishedAt: nullableDate,
        error: nullableString,
        cancelRequested: { type: 'boolean' },
        message: {
          description:
            'The message as JSON (kept while pending and in the dead letters; null in history). bigint as string, bytes as base64.',
        },
        result: { description: 'The result of a completed task as JSON.' },
        progress: { description: 'The last progress value its handler reported (ctx.progress); null: none.' },
        attempts: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              number: { type: 'integer' },
              outcome: { type: 'string', enum: TASK_STATES },
              nodeId: { ...uuid, nullable: true },
              nodeName: nullableString,
              startedAt: nullableDate,
              endedAt: nullableDate,
              error: nullableString,
              progress: {},
            },
          },
        },
        waitsFor: { type: 'array', items: waitLink },
        waitedBy: { type: 'array', items: waitLink },
        children: { type: 'array', items: taskLink },
        childCount: { type: 'integer' },
      },
    },
    '4xx': errorSchema,
  },
} as const;

export const workflowGraphSchema = {
  summary: "A workflow's tasks and the edges between them (the workflow page)",
  tags: ['workflows'],
  description:
    'Edges: parent to child, and the joins and dependencies still pending (a wait is kept only until the task waited for ends).',
  params: idParams,
  querystring: {
    type: 'object',
    additionalProperties: false,
    properties: {
      limit: {
        type: 'integer',
        minimum: 1,
        maximum: WORKFLOW_GRAPH_DEFAULTS.maxLimit,
        default: WORKFLOW_GRAPH_DEFAULTS.limit,
        description: 'Tasks listed at most (the oldest first).',
      },
    },
  },
  response: {
    200: {
      type: 'object',
      properties: {
        id: uuid,
        total: { type: 'integer', description: 'Tasks of the workflow in all.' },
        tasks: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              ...taskLink.properties,
              parentId: { ...uuid, nullable: true },
              isJoin: { type: 'boolean', nullable: true },
              attempts: { type: 'integer' },
            },
          },
        },
        edges: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              from: uuid,
              to: uuid,
              kind: { type: 'string', enum: ['child', 'join', 'dependency'] },
            },
          },
        },
      },
    },
    '4xx': errorSchema,
  },
} as const;

const keyLimit = {
  type: 'integer',
  minimum: 1,
  maximum: KEY_VIEW_DEFAULTS.maxLimit,
  default: KEY_VIEW_DEFAULTS.limit,
  description: 'Tasks listed at most per list.',
} as const;

const keyTask = {
  type: 'object',
  properties: {
    ...taskLink.properties,
    workflowId: uuid,
    priority: { type: 'integer' },
    nodeId: { ...uuid, nullable: true },
    nodeName: nullableString,
    assignedAt: nullableDate,
    notBefore: { type: 'string', format: 'date-time' },
    createdAt: { type: 'string', format: 'date-time' },
  },
} as const;

const keyViewProperties = {
  holders: { type: 'array', items: keyTask, description: 'Tasks holding the key: assigned or running.' },
  waiting: { type: 'array', items: keyTask, description: 'Pending tasks of the key without a node.' },
  heldCount: { type: 'integer' },
  waitingCount: { type: 'integer' },
} as const;

export const affinityKeySchema = {
  summary: 'What holds an affinity key and what waits on it',
  tags: ['keys'],
  querystring: {
    type: 'object',
    additionalProperties: false,
    required: ['affinity'],
    properties: {
      affinity: { type: 'string', minLength: 1, maxLength: 1000 },
      group: { type: 'string', maxLength: 1000, default: '', description: 'Empty: the default group.' },
      limit: keyLimit,
    },
  },
  response: {
    200: {
      type: 'object',
      properties: {
        group: { type: 'string' },
        affinity: { type: 'string' },
        activeWorkflowId: {
          ...uuid,
          nullable: true,
          description: 'The oldest pending workflow of the key: the one whose tasks may run.',
        },
        ...keyViewProperties,
      },
    },
    '4xx': errorSchema,
  },
} as const;

export const concurrencyKeySchema = {
  summary: 'What holds a concurrency key and what waits on it',
  tags: ['keys'],
  querystring: {
    type: 'object',
    additionalProperties: false,
    required: ['key'],
    properties: { key: { type: 'string', minLength: 1, maxLength: 1000 }, limit: keyLimit },
  },
  response: {
    200: { type: 'object', properties: { key: { type: 'string' }, ...keyViewProperties } },
    '4xx': errorSchema,
  },
} as const;

export const busiestKeysSchema = {
  summary: 'The affinity or concurrency keys with the most pending tasks',
  tags: ['keys'],
  querystring: {
    type: 'object',
    additionalProperties: false,
    required: ['kind'],
    properties: { kind: { type: 'string', enum: ['affinity', 'concurrency'] }, limit: keyLimit },
  },
  response: {
    200: {
      type: 'object',
      properties: {
        keys: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              group: { type: 'string' },
              key: { type: 'string' },
              held: { type: 'integer' },
              waiting: { type: 'integer' },
            },
          },
        },
      },
    },
    '4xx': errorSchema,
  },
} as const;
