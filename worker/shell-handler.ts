/**
 * Worker-thread side of shell tasks: the handler module of every shell task definition. It checks the
 * message against the node's policy (workerData.shell: absent means shell tasks are refused here),
 * spawns the command in a process group of its own (`detached`), keeps the last bytes of stdout and
 * stderr, and on timeout or abort kills the whole group: SIGTERM, then SIGKILL after the grace.
 * When the command exits, whatever it left running in its group is killed too, and the task ends once
 * its output pipes close, or `pipeGraceMs` after the exit at the latest (a process that left the group,
 * setsid, may hold them open for ever). The group is reported to the main thread (protocol.ts
 * `reportProcessGroup`), which kills it if the thread dies or is terminated before the group is gone.
 *
 * States of one command: running -> exited (group killed; pipes drain, bounded) -> settled, or
 * running -> terminating (SIGTERM sent; SIGKILL after killGraceMs) -> exited -> settled.
 * Owned by one worker thread; the main thread sees the outcome and the process group.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { workerData } from 'node:worker_threads';
import { TaskmillError, type TaskmillErrorCode } from '../task/errors.ts';
import { reportProcessGroup, type WorkerInit } from './protocol.ts';
import {
  SHELL_DEFAULTS,
  resolveCommand,
  type ResolvedCommand,
  type ShellResult,
} from '../task/shell-task.ts';
import type { TaskContext } from './task-context.ts';

const policy = (workerData as Partial<WorkerInit> | null | undefined)?.shell;

/** Failures that another attempt cannot fix: the task fails at once, whatever its retry policy. */
const FINAL_CODES = new Set<string>(['INVALID_ARGUMENT', 'NOT_ALLOWED', 'NOT_FOUND']);

export default async function shell(message: unknown, ctx: TaskContext): Promise<ShellResult> {
  if (!policy) {
    throw new TaskmillError(
      'NOT_ALLOWED',
      'Shell tasks are disabled on this node: start it with shell: { enabled: true, allow: [...] }.',
    );
  }
  const command = resolveCommand(message, policy);
  ctx.signal.throwIfAborted();
  return runCommand(command, policy.killGraceMs, ctx.signal, (pgid, alive) =>
    reportProcessGroup(ctx.taskId, pgid, alive),
  );
}

export function onFailure(error: unknown): boolean | void {
  if (error instanceof TaskmillError && FINAL_CODES.has(error.code)) return false;
}

/** Runs one command to its end; resolves with its result on exit code 0, rejects otherwise. */
export function runCommand(
  command: ResolvedCommand,
  killGraceMs: number,
  signal: AbortSignal,
  onGroup: (pgid: number, alive: boolean) => void = () => {},
  pipeGraceMs = SHELL_DEFAULTS.pipeGraceMs,
): Promise<ShellResult> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const stdout = new Tail(command.maxOutputBytes);
    const stderr = new Tail(command.maxOutputBytes);
    let child: ChildProcess;
    try {
      child = spawn(command.file, command.args, {
        argv0: command.argv0,
        cwd: command.cwd,
        env: command.env,
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (error) {
      reject(
        failure(
          'COMMAND_FAILED',
          `Command ${command.display} could not be started: ${(error as Error).message}`,
        ),
      );
      return;
    }
    const group = child.pid;
    if (group !== undefined) onGroup(group, true);
    let ending: 'timeout' | 'abort' | undefined;
    let settled = false;
    const timers: NodeJS.Timeout[] = [];
    const killGroup = (sig: NodeJS.Signals) => {
      if (group === undefined) return;
      try {
        process.kill(-group, sig);
      } catch {
        // ESRCH: nothing left in the group.
      }
    };
    const terminate = (why: 'timeout' | 'abort') => {
      if (ending) return;
      ending = why;
      killGroup('SIGTERM');
      timers.push(setTimeout(() => killGroup('SIGKILL'), killGraceMs));
    };
    const onAbort = () => terminate('abort');
    const settle = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      for (const timer of timers) clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      // Pipes a process outside the group still holds are let go of.
      child.stdout?.destroy();
      child.stderr?.destroy();
      outcome();
    };

    timers.push(setTimeout(() => terminate('timeout'), command.timeoutMs));
    signal.addEventListener('abort', onAbort, { once: true });
    child.stdout!.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr!.on('data', (chunk: Buffer) => stderr.push(chunk));
    // The leader exited: processes it left in its group would hold the pipes open; end them. A process
    // that left the group may hold them for ever: the outcome waits for them a bounded time only.
    child.on('exit', (code, sig) => {
      killGroup('SIGKILL');
      if (group !== undefined) onGroup(group, false);
      timers.push(setTimeout(() => finish(code, sig), pipeGraceMs));
    });
    child.on('error', (error) => {
      if (group !== undefined) return; // a kill that failed; 'close' still follows
      settle(() =>
        reject(
          failure('COMMAND_FAILED', `Command ${command.display} could not be started: ${error.message}`),
        ),
      );
    });
    child.on('close', (code, sig) => finish(code, sig));
    const finish = (code: number | null, sig: NodeJS.Signals | null) => {
      settle(() => {
        const output = describeOutput(stdout, stderr);
        if (ending === 'abort') {
          const reason = signal.reason as { code?: string; message?: string } | undefined;
          const code: TaskmillErrorCode = reason?.code === 'TASK_TIMEOUT' ? 'TASK_TIMEOUT' : 'TASK_CANCELLED';
          reject(
            failure(
              code,
              `${reason?.message ?? 'Task aborted.'} Command ${command.display} and its process group were killed.${output}`,
            ),
          );
        } else if (ending === 'timeout') {
          reject(
            failure(
              'TASK_TIMEOUT',
              `Command ${command.display} did not finish within ${command.timeoutMs} ms; its process group was killed.${output}`,
            ),
          );
        } else if (code === 0) {
          resolve({
            exitCode: 0,
            stdout: stdout.text(),
            stderr: stderr.text(),
            stdoutBytes: stdout.total,
            stderrBytes: stderr.total,
            truncated: stdout.truncated || stderr.truncated,
            durationMs: Math.round(performance.now() - started),
          });
        } else {
          const how = code === null ? `was killed by ${sig}` : `exited with code ${code}`;
          reject(failure('COMMAND_FAILED', `Command ${command.display} ${how}.${output}`));
        }
      });
    };
  });
}

/** Its stack is its first line only: the handler's frames say nothing about a command's failure. */
function failure(code: TaskmillErrorCode, message: string): TaskmillError {
  const error = new TaskmillError(code, message);
  error.stack = `${error.name}: ${message.split('\n', 1)[0]}`;
  return error;
}

function describeOutput(stdout: Tail, stderr: Tail): string {
  let out = '';
  for (const [name, tail] of [
    ['stderr', stderr],
    ['stdout', stdout],
  ] as const) {
    if (tail.total === 0) continue;
    const kept = Math.min(tail.max, SHELL_DEFAULTS.errorOutputBytes);
    const size = tail.total > kept ? `last ${kept} of ${tail.total} bytes` : `${tail.total} bytes`;
    out += `\n--- ${name} (${size}) ---\n${tail.text(kept)}`;
  }
  return out;
}

/** Keeps the last `max` bytes written to a stream. */
class Tail {
  private chunks: Buffer[] = [];
  private size = 0;
  total = 0;

  constructor(readonly max: number) {}

  push(chunk: Buffer): void {
    this.total += chunk.length;
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.chunks.length > 1 && this.size - this.chunks[0].length >= this.max) {
      this.size -= this.chunks.shift()!.length;
    }
  }

  get truncated(): boolean {
    return this.total > this.max;
  }

  /** The last `bytes` (at most max) kept, decoded as UTF-8. */
  text(bytes = this.max): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - Math.min(bytes, this.max))).toString('utf8');
  }
}
