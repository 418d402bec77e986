/** Errors taskmill raises on purpose carry a stable code and say what to do next. */
export type TaskmillErrorCode =
  | 'INVALID_CONFIG'
  | 'INVALID_ARGUMENT'
  | 'UNKNOWN_TASK'
  | 'ENCODE_FAILED'
  | 'RESULT_TOO_LARGE'
  | 'MESSAGE_TOO_LARGE'
  | 'COMPLETION_FAILED'
  | 'NOT_MIGRATED'
  | 'SCHEMA_TOO_NEW'
  | 'MIGRATION_FAILED'
  | 'NOT_FOUND'
  | 'NOT_CANCELLABLE'
  | 'NOT_ALLOWED'
  | 'COMMAND_FAILED'
  | 'NODE_STOPPED'
  | 'TASK_TIMEOUT'
  | 'TASK_CANCELLED'
  | 'WORKER_EXITED'
  | 'TIMEOUT'
  | 'ABORTED'
  | 'TOO_MANY_CONNECTIONS'
  | 'CROSS_SHARD'
  | 'PARTIALLY_SCHEDULED';

export class TaskmillError extends Error {
  readonly code: TaskmillErrorCode;

  constructor(code: TaskmillErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TaskmillError';
    this.code = code;
  }
}

/**
 * PostgreSQL "undefined_table", or "undefined_function" for one of taskmill's functions (tm_*): the
 * schema is missing.
 */
export function isUndefinedTable(error: unknown): boolean {
  const e = error as { code?: string; message?: string } | undefined;
  return e?.code === '42P01' || (e?.code === '42883' && /\btm_[a-z_]+\(/.test(e.message ?? ''));
}

export function notMigratedError(cause: unknown): TaskmillError {
  return new TaskmillError(
    'NOT_MIGRATED',
    'The taskmill schema is missing in this database: run `taskmill migrate up` or start a node (it migrates by default).',
    { cause },
  );
}
