/**
 * What every command shares: exit codes, the error type that carries one, and output as text or JSON
 * (`--json`). Commands write through the CliIo they are given, never to process.stdout directly, so the
 * whole CLI also runs in-process (tests).
 */
import { InvalidArgumentError } from 'commander';
import { TaskmillError, type TaskmillErrorCode } from '../task/errors.ts';
import { toJson } from '../http/to-json.ts';

export const EXIT = {
  OK: 0,
  /** Unexpected failure (database unreachable, a bug). */
  FAILURE: 1,
  /** Bad usage or input: unknown option, invalid JSON, unknown task name, value out of range. */
  USAGE: 2,
  /** The task, workflow or dead letter does not exist; `db status`: the server is not running. */
  NOT_FOUND: 3,
  /** The request conflicts with the state: e.g. a task that already ended cannot be cancelled. */
  CONFLICT: 4,
  /** No database: not configured, not running, or not migrated. */
  UNAVAILABLE: 5,
  /** `task wait`: the task ended, but not completed (failed, cancelled or dead-lettered). */
  TASK_FAILED: 6,
  /** `task wait`: the task had not ended within --timeout. */
  TIMEOUT: 7,
} as const;

export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** Aborted on SIGINT/SIGTERM: long-running commands (node, serve, cluster, db run) stop gracefully. */
  signal: AbortSignal;
  /** Standard output when it is a terminal: live views redraw in place there (`status --watch`). */
  terminal?: NodeJS.WritableStream;
  /** Standard error when it is a terminal: progress bars go there (`workflow wait`). */
  progressTerminal?: NodeJS.WritableStream;
}

export class CliError extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

const EXIT_OF: Partial<Record<TaskmillErrorCode, number>> = {
  INVALID_ARGUMENT: EXIT.USAGE,
  INVALID_CONFIG: EXIT.USAGE,
  UNKNOWN_TASK: EXIT.USAGE,
  ENCODE_FAILED: EXIT.USAGE,
  NOT_FOUND: EXIT.NOT_FOUND,
  NOT_CANCELLABLE: EXIT.CONFLICT,
  NOT_MIGRATED: EXIT.UNAVAILABLE,
  TIMEOUT: EXIT.TIMEOUT,
  SCHEMA_TOO_NEW: EXIT.UNAVAILABLE,
};

export function exitCodeOf(error: unknown): number {
  if (error instanceof CliError) return error.exitCode;
  if (error instanceof TaskmillError) return EXIT_OF[error.code] ?? EXIT.FAILURE;
  return EXIT.FAILURE;
}

/** Prints `data` as JSON when asked, else as the text `render` makes of it. */
export function print<T>(io: CliIo, json: boolean | undefined, data: T, render: (data: T) => string): void {
  io.out(json ? `${JSON.stringify(toJson(data), null, 2)}\n` : ensureNewline(render(data)));
}

function ensureNewline(text: string): string {
  return text.endsWith('\n') ? text : `${text}\n`;
}

/** A plain text table: columns padded to their widest cell, numbers right-aligned. */
export function table(header: string[], rows: unknown[][]): string {
  const cells = [header, ...rows.map((r) => r.map(cell))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === 'number'));
  return cells
    .map((r) =>
      r
        .map((c, i) => (numeric[i] ? (c ?? '').padStart(widths[i]) : (c ?? '').padEnd(widths[i])))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

function cell(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (value instanceof Date) return value.toISOString();
  return String(value);
}

/** Parser of an integer option within [min, max] (commander reports a bad value as a usage error). */
export function intOption(name: string, min = 1, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be an integer between ${min} and ${max}.`);
    }
    return n;
  };
}
