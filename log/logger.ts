/**
 * Structured logs (pino), one line per significant event: node start/stop, leadership changes, dead
 * nodes recovered, errors. Nothing is logged per task at info level: per-task lines are `debug`.
 * Level: the `logLevel` option, else TASKMILL_LOG_LEVEL, else `info`.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level?: string, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level: level ?? process.env.TASKMILL_LOG_LEVEL ?? 'info', base: { ...bindings } });
}
