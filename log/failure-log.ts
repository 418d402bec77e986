/**
 * Bounded logging of repeated failures. While the database is away every loop of a process fails on
 * each pass (heartbeat, fetcher, planner, lease, completer, listener...): logging each failure would
 * write several lines per second per process. A FailureLog writes one line when a kind of failure
 * starts, at most one more line per `intervalMs` while it goes on (with the number of failures
 * meanwhile), and, for the database being unreachable, one line when a query succeeds again.
 *
 * Kinds: every connection-level error (refused, reset, terminated by the server, server shutting down
 * or starting up) is the one kind `database`, whichever loop saw it; any other error is its own kind
 * per source and error code.
 *
 * States per kind: absent -> failing (first line) -> failing (one line per interval) -> absent
 * (recovered: successes for `settleMs` with no connection failure between; or, for other kinds, the
 * interval passed without a failure). Main thread only.
 */
import type { Logger } from './logger.ts';

export const FAILURE_LOG_DEFAULTS = {
  /** At most one line per failure kind per this interval while the failure goes on. */
  intervalMs: 30_000,
  /**
   * The database counts as back once queries succeed for this long without a connection failure: while
   * a server shuts down, a session it has not terminated yet still answers for a moment.
   */
  settleMs: 1_000,
};

export const DATABASE_FAILURE = 'database';

/** SQLSTATE classes and codes that mean the connection or the server went away, not a bad query. */
const CONNECTION_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300']);
const CONNECTION_ERRNOS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENOTCONN',
]);
const CONNECTION_MESSAGES = [
  'Connection terminated',
  'connection terminated',
  'Client has encountered a connection error',
  'Client was closed and is not queryable',
  'timeout exceeded when trying to connect',
  'Connection ended unexpectedly',
  'the database system is',
];

/** True when an error says the database connection broke or the server cannot be reached. */
export function isConnectionError(error: unknown): boolean {
  for (let e = error, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (typeof code === 'string' && (CONNECTION_SQLSTATES.has(code) || code.startsWith('08'))) return true;
    if (typeof code === 'string' && CONNECTION_ERRNOS.has(code)) return true;
    if (typeof message === 'string' && CONNECTION_MESSAGES.some((m) => message.includes(m))) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

interface KindState {
  since: number;
  lastLogged: number;
  /** Failures since the last line. */
  unlogged: number;
  total: number;
  /** First success since the last failure (database kind only). */
  okSince?: number;
}

export interface FailureLogOptions {
  intervalMs?: number;
  settleMs?: number;
  now?: () => number;
}

export class FailureLog {
  private readonly kinds = new Map<string, KindState>();
  private readonly intervalMs: number;
  private readonly settleMs: number;
  private readonly now: () => number;

  constructor(
    private readonly log: Logger,
    options: FailureLogOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? FAILURE_LOG_DEFAULTS.intervalMs;
    this.settleMs = options.settleMs ?? FAILURE_LOG_DEFAULTS.settleMs;
    this.now = options.now ?? Date.now;
  }

  /** True while the database counts as unreachable (a connection failure and no success since). */
  get databaseDown(): boolean {
    const db = this.kinds.get(DATABASE_FAILURE);
    return db !== undefined && db.okSince === undefined;
  }

  /** Since when the database counts as unreachable (epoch ms), or undefined. */
  get databaseDownSince(): number | undefined {
    return this.kinds.get(DATABASE_FAILURE)?.since;
  }

  /** Records a failure of `source` (a loop or component name); logs per the rules above. */
  failure(source: string, error: unknown): void {
    const database = isConnectionError(error);
    const kind = database ? DATABASE_FAILURE : `${source}:${errorCode(error)}`;
    const now = this.now();
    let state = this.kinds.get(kind);
    if (state && !database && now - state.lastLogged >= this.intervalMs && state.unlogged === 0) {
      // A non-connection failure that did not repeat for a whole interval starts a new episode.
      state = undefined;
    }
    if (!state) {
      this.kinds.set(kind, { since: now, lastLogged: now, unlogged: 0, total: 1 });
      if (database) {
        this.log.error(
          { err: summarize(error), source },
          'database unavailable; retrying with backoff (one line per interval until it is back)',
        );
      } else {
        this.log.error({ err: summarize(error), source }, `${source} failed`);
      }
      return;
    }
    state.total++;
    state.unlogged++;
    state.okSince = undefined;
    if (now - state.lastLogged < this.intervalMs) return;
    const fields = { err: summarize(error), source, failures: state.unlogged, sinceMs: now - state.since };
    state.lastLogged = now;
    state.unlogged = 0;
    if (database) this.log.error(fields, 'database still unavailable');
    else this.log.error(fields, `${source} still failing`);
  }

  /**
   * `source` completed a database round trip: the database is reachable (logged once if it was not),
   * and the source's own failures are over. Returns true when this ended a database outage.
   */
  recovered(source: string): boolean {
    if (this.kinds.size === 0) return false;
    const now = this.now();
    const db = this.kinds.get(DATABASE_FAILURE);
    if (db) db.okSince ??= now;
    const back = db !== undefined && now - db.okSince! >= this.settleMs;
    if (db && back) {
      this.kinds.delete(DATABASE_FAILURE);
      this.log.info(
        { source, downMs: now - db.since, failures: db.total },
        'database reachable again; resumed',
      );
    }
    for (const kind of this.kinds.keys()) if (kind.startsWith(`${source}:`)) this.kinds.delete(kind);
    return back;
  }
}

/**
 * What a line says about an error: its type, code and message (a pg error carries its client, with the
 * connection's whole state, which has no place in a log line).
 */
function summarize(error: unknown): Record<string, unknown> {
  if (!error || typeof error !== 'object') return { message: String(error) };
  const { name, code, message } = error as { name?: unknown; code?: unknown; message?: unknown };
  return { type: name, code, message };
}

function errorCode(error: unknown): string {
  if (error && typeof error === 'object') {
    const { code, name } = error as { code?: unknown; name?: unknown };
    if (typeof code === 'string' || typeof code === 'number') return String(code);
    if (typeof name === 'string') return name;
  }
  return typeof error;
}
