/**
 * Long-running commands of the docs (`taskmill node`, `taskmill serve`) run as a user runs them in a
 * terminal: `sh -c <command>` in a process group of its own, stopped with Ctrl-C (SIGINT to the whole
 * group, as a terminal sends it). Readiness and stops are waited for on the processes' own output and
 * exit, each within a deadline. Every process started here is tracked until it exits; killAll()
 * (call it in afterAll) SIGKILLs the groups still alive.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** Lines of output kept per process for failure messages. */
const KEEP_LINES = 300;

export interface ShellProcess {
  command: string;
  child: ChildProcess;
  /** Resolves once the group's last process holding its output has exited: the code of sh, or its signal. */
  closed: Promise<number | string | null>;
  /** Resolves with the first line that matches, or rejects when the process ends or the deadline passes. */
  waitForLine(match: RegExp, timeoutMs: number): Promise<RegExpExecArray>;
  /** The recent output, for failure messages. */
  output(): string;
}

const live = new Set<ChildProcess>();

process.once('exit', () => {
  for (const child of live) killGroup(child, 'SIGKILL');
});

export function startShell(command: string, options: { cwd: string; env: NodeJS.ProcessEnv }): ShellProcess {
  const child = spawn('sh', ['-c', command], {
    cwd: options.cwd,
    env: options.env,
    detached: true, // its own process group, like a terminal's foreground job
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  const lines: string[] = [];
  const listeners = new Set<(line: string) => void>();
  const take = (line: string) => {
    lines.push(line);
    if (lines.length > KEEP_LINES) lines.shift();
    for (const listener of listeners) listener(line);
  };
  createInterface({ input: child.stdout! }).on('line', take);
  createInterface({ input: child.stderr! }).on('line', take);
  const closed = new Promise<number | string | null>((resolve) => {
    child.once('close', (code, signal) => {
      live.delete(child);
      resolve(code ?? signal);
    });
  });
  const output = () => lines.join('\n');
  const waitForLine = (match: RegExp, timeoutMs: number) =>
    new Promise<RegExpExecArray>((resolve, reject) => {
      const seen = lines.map((line) => match.exec(line)).find((m) => m !== null);
      if (seen) return resolve(seen);
      const done = () => {
        listeners.delete(listener);
        clearTimeout(timer);
      };
      const listener = (line: string) => {
        const m = match.exec(line);
        if (m) {
          done();
          resolve(m);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${command}: no line matching ${match} within ${timeoutMs} ms:\n${output()}`));
      }, timeoutMs);
      listeners.add(listener);
      void closed.then((code) => {
        done();
        reject(new Error(`${command}: ended (${code}) before a line matching ${match}:\n${output()}`));
      });
    });
  return { command, child, closed, waitForLine, output };
}

/** Ctrl-C: SIGINT to the group; resolves once every process of it that holds its output has exited. */
export async function interrupt(shell: ShellProcess, timeoutMs: number): Promise<number | string | null> {
  killGroup(shell.child, 'SIGINT');
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      killGroup(shell.child, 'SIGKILL');
      reject(new Error(`${shell.command}: still running ${timeoutMs} ms after SIGINT:\n${shell.output()}`));
    }, timeoutMs);
  });
  try {
    return await Promise.race([shell.closed, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/** SIGKILLs every group started here that is still alive, and waits until their output closed. */
export async function killAll(): Promise<void> {
  const left = [...live];
  await Promise.all(
    left.map(
      (child) =>
        new Promise<void>((resolve) => {
          child.once('close', () => resolve());
          killGroup(child, 'SIGKILL');
        }),
    ),
  );
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid!, signal);
  } catch (error) {
    if ((error as { code?: string }).code !== 'ESRCH') throw error;
  }
}
