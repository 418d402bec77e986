/**
 * Live views of the CLI: a view redrawn in place on a terminal (log-update), or, when the output is not a
 * terminal (a pipe, a file, the tests), one view per refresh separated by a blank line, or one JSON line
 * per refresh with --json. A refresh that fails (the database went away) shows the error in place of the
 * view and the next refresh tries again; only Ctrl-C (the CLI's abort signal) ends the view.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { createLogUpdate } from 'log-update';
import type { CliIo } from './output.ts';

export interface LiveViewOptions<T> {
  /** Reads what one refresh shows. */
  read: () => Promise<T>;
  /** The text of one refresh on a terminal or in plain output. */
  render: (data: T) => string;
  intervalMs: number;
  /** One JSON document per line instead of text. */
  json?: boolean;
  /** A line above the view (what it is, how often it refreshes). */
  title?: string;
  /** Stops after this many refreshes (tests, scripts); by default runs until aborted. */
  refreshes?: number;
}

export async function liveView<T>(io: CliIo, options: LiveViewOptions<T>): Promise<void> {
  const terminal = options.json ? undefined : io.terminal;
  const draw = terminal ? createLogUpdate(terminal) : undefined;
  const limit = options.refreshes ?? Number.POSITIVE_INFINITY;
  try {
    for (let n = 0; n < limit && !io.signal.aborted; n++) {
      const started = Date.now();
      let text: string;
      try {
        const data = await options.read();
        text = options.json ? JSON.stringify(data) : options.render(data);
      } catch (error) {
        const message = `${(error as Error).message}; next try in ${options.intervalMs / 1000} s`;
        text = options.json ? JSON.stringify({ error: message, at: new Date() }) : `error: ${message}`;
      }
      const header =
        options.title && !options.json ? `${options.title}, ${new Date().toISOString()}\n\n` : '';
      if (draw) draw(header + text);
      else io.out(`${header}${text}\n${options.json ? '' : '\n'}`);
      if (n + 1 < limit) await pause(options.intervalMs - (Date.now() - started), io.signal);
    }
  } finally {
    draw?.done();
  }
}

/** Waits `ms` (at least 0), or less when `signal` aborts. */
async function pause(ms: number, signal: AbortSignal): Promise<void> {
  await sleep(Math.max(0, ms), undefined, { signal }).catch(() => undefined);
}
