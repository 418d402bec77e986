/** The command line run in this process, its output captured: what the CLI tests drive. */
import { runCli } from '../../cli/main.ts';

export interface CliRun {
  code: number;
  out: string;
  err: string;
}

export interface CliRunOptions {
  /** `--database-url` put before the arguments; null: none. */
  url: string | null;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  signal?: AbortSignal;
  terminal?: NodeJS.WritableStream;
  progressTerminal?: NodeJS.WritableStream;
}

/** Runs one command line; the environment is only PATH unless `env` is given. */
export async function runCliCaptured(args: string[], options: CliRunOptions): Promise<CliRun> {
  let out = '';
  let err = '';
  const code = await runCli(options.url === null ? args : ['--database-url', options.url, ...args], {
    out: (s) => (out += s),
    err: (s) => (err += s),
    env: options.env ?? { PATH: process.env.PATH },
    cwd: options.cwd ?? process.cwd(),
    signal: options.signal ?? new AbortController().signal,
    terminal: options.terminal,
    progressTerminal: options.progressTerminal,
  });
  return { code, out, err };
}
