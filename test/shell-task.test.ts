import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  defineShellTask,
  shellTask,
  type ShellMessage,
  type ShellResult,
  type TaskmillNode,
} from '../index.ts';
import runShell from '../worker/shell-handler.ts';
import { resolveCommand, type ShellPolicy } from '../task/shell-task.ts';
import type { TaskContext } from '../worker/task-context.ts';
import * as defs from './fixtures/definitions.ts';
import { count, until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

/** Same handler, retried: shows that a refused command is not retried whatever the policy. */
const retryingShell = defineShellTask({
  name: 'shell-retrying',
  retry: { mode: 'FIXED', delayMs: 0, maxRetries: 3 },
});
/** Hard limit of the definition: the dispatcher aborts the handler (its signal), not the message. */
const limitedShell = defineShellTask({ name: 'shell-limited', timeoutMs: 400 });
const stringShell = defineShellTask({ name: 'shell-strings' });
/** Run by a node of one thread only, next to a spinning task. */
const lonelyShell = defineShellTask({ name: 'shell-lonely' });
const fixture = (file: string) => new URL(`./fixtures/${file}`, import.meta.url).pathname;
const GRANDCHILD = fixture('setsid-grandchild.sh');
const ONCE_AT_A_TIME = fixture('once-at-a-time.sh');

const db = useTestDatabase();
let node: TaskmillNode;
let scratch: string;

beforeAll(async () => {
  scratch = mkdtempSync(path.join(tmpdir(), 'taskmill-shell-'));
  node = await startTestNode(db.url, {
    tasks: [shellTask, retryingShell, limitedShell],
    shell: {
      enabled: true,
      allow: ['echo', 'sh', '/usr/bin/true', GRANDCHILD],
      messageEnv: ['GREETING', 'PATH'],
    },
  });
});
afterAll(async () => {
  await stopAllNodes();
  rmSync(scratch, { recursive: true, force: true });
});

async function run(message: ShellMessage, def = shellTask) {
  const id = await node.client.schedule(def, { message });
  return node.client.waitForTask<ShellResult>(id, { timeoutMs: 30_000 });
}

/** Whether a process exists and is not a zombie (its parent may not reap it at once). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2)[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Kills the process a setsid-grandchild.sh run left behind (its pid is in `${out}.pid`). */
async function killEscaped(out: string): Promise<void> {
  await until(() => existsSync(`${out}.pid`), 10_000);
  const pid = Number(readFileSync(`${out}.pid`, 'utf8'));
  process.kill(pid, 'SIGKILL');
  await until(() => !alive(pid), 5_000);
}

/** The pids a command printed on stdout (one per line), read back from the task's error. */
function printedPids(error: string | null): number[] {
  const stdout = error?.split('--- stdout')[1] ?? '';
  return stdout
    .split('\n')
    .slice(1)
    .filter((line) => /^\d+$/.test(line))
    .map(Number);
}

describe('shell tasks', () => {
  it('runs an argument vector and returns exit code and output', async () => {
    const task = await run({ command: ['echo', 'hello', 'a b', '$HOME', ';', 'rm'] });
    expect(task.state).toBe('completed');
    expect(task.result).toMatchObject({
      exitCode: 0,
      stdout: 'hello a b $HOME ; rm\n',
      stderr: '',
      stdoutBytes: 21,
      truncated: false,
    });
  });

  it('honours cwd and env', async () => {
    const task = await run({
      command: ['sh', '-c', 'pwd; echo "$GREETING"'],
      cwd: scratch,
      env: { GREETING: 'hi there' },
    });
    expect(task.result?.stdout).toBe(`${scratch}\nhi there\n`);
  });

  it('fails on a non-zero exit, with the output in the error, and does not retry by default', async () => {
    const task = await run({ command: ['sh', '-c', 'echo partial; echo "disk full" >&2; exit 3'] });
    expect(task).toMatchObject({ state: 'dead', attempts: 1 });
    expect(task.error).toContain('COMMAND_FAILED');
    expect(task.error).toContain('exited with code 3');
    expect(task.error).toContain('--- stderr (10 bytes) ---\ndisk full');
    expect(task.error).toContain('--- stdout (8 bytes) ---\npartial');
  });

  it('keeps only the last maxOutputBytes of each stream', async () => {
    const task = await run({
      command: ['sh', '-c', 'i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done; echo oops >&2'],
      maxOutputBytes: 100,
    });
    const result = task.result!;
    expect(result.stdout).toHaveLength(100);
    expect(result.stdout.endsWith('line 1999\n')).toBe(true);
    expect(result.stdoutBytes).toBeGreaterThan(15_000);
    expect(result).toMatchObject({ stderr: 'oops\n', stderrBytes: 5, truncated: true });
  });

  it("bounds the output a failure's error carries", async () => {
    const task = await run({
      command: ['sh', '-c', "head -c 40000 /dev/zero | tr '\\0' e >&2; echo last >&2; exit 1"],
      maxOutputBytes: 30_000,
    });
    expect(task.error).toContain('--- stderr (last 16384 of 40005 bytes) ---\n');
    expect(task.error?.endsWith('eeeelast\n')).toBe(true);
    expect(task.error!.length).toBeLessThan(17_000);
  });

  it('kills the whole process tree when the command times out', async () => {
    const started = Date.now();
    const task = await run({ command: ['sh', '-c', 'echo $$; sleep 30 & echo $!; wait'], timeoutMs: 500 });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(task.state).toBe('dead');
    expect(task.error).toContain('TASK_TIMEOUT');
    expect(task.error).toContain('did not finish within 500 ms');
    const pids = printedPids(task.error);
    expect(pids).toHaveLength(2);
    await until(() => pids.every((pid) => !alive(pid)), 5_000);
  });

  it('escalates to SIGKILL when the tree ignores SIGTERM, on an abort of the handler', async () => {
    // The definition's timeoutMs makes the dispatcher abort the handler's signal (as a cancel would).
    const task = await run(
      { command: ['sh', '-c', 'trap "" TERM; echo $$; sleep 30 & echo $!; wait; wait'] },
      limitedShell,
    );
    expect(task.state).toBe('dead');
    expect(task.error).toContain('process group were killed');
    const pids = printedPids(task.error);
    expect(pids).toHaveLength(2);
    await until(() => pids.every((pid) => !alive(pid)), 5_000);
  });

  it('kills the process tree when the running task is cancelled, and ends it cancelled', async () => {
    const pidFile = path.join(scratch, 'cancel.pids');
    const id = await node.client.schedule(shellTask, {
      message: { command: ['sh', '-c', `echo $$ > ${pidFile}; sleep 30 & echo $! >> ${pidFile}; wait`] },
    });
    const pids = () => (existsSync(pidFile) ? readFileSync(pidFile, 'utf8').split('\n').filter(Boolean) : []);
    await until(() => pids().length === 2, 10_000);
    const started = pids().map(Number);
    expect(started.every(alive)).toBe(true);
    expect(await node.client.cancel(id)).toBe('requested');
    await until(
      async () => (await count(db.pool, `select count(*) from tm_tasks where id = $1`, [id])) === 0,
    );
    const task = await node.client.getTask(id);
    expect(task).toMatchObject({ state: 'cancelled', attempts: 1 });
    await until(() => started.every((pid) => !alive(pid)), 5_000);
  });

  it('ends at its timeout even when a process that left the group holds the output pipes', async () => {
    const out = path.join(scratch, 'escaped-timeout');
    const started = Date.now();
    try {
      const task = await run({ command: [GRANDCHILD, out, '30'], timeoutMs: 500 });
      expect(task).toMatchObject({ state: 'dead', attempts: 1 });
      expect(task.error).toContain('TASK_TIMEOUT');
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      await killEscaped(out);
    }
  });

  it('completes when the command exits even if a process that left the group holds its pipes', async () => {
    const out = path.join(scratch, 'escaped-exit');
    const started = Date.now();
    try {
      const task = await run({ command: [GRANDCHILD, out, '0'], timeoutMs: 60_000 });
      expect(task).toMatchObject({ state: 'completed', attempts: 1 });
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      await killEscaped(out);
    }
  });

  it("kills the command when its thread is terminated for a neighbour's timeout, and never runs two copies", async () => {
    const lonely = await startTestNode(db.url, {
      tasks: [lonelyShell, defs.spin],
      threads: 1,
      shell: { enabled: true, allow: [ONCE_AT_A_TIME] },
    });
    const out = path.join(scratch, 'once');
    const lines = () => (existsSync(out) ? readFileSync(out, 'utf8').split('\n').filter(Boolean) : []);
    const id = await lonely.client.schedule(lonelyShell, {
      message: { command: [ONCE_AT_A_TIME, out, '10'] },
    });
    await until(() => lines().length === 1, 20_000);
    // The spinner blocks the thread the command's handler waits on, until that thread is terminated.
    const spin = await lonely.client.schedule(defs.spin);
    await Promise.all([id, spin].map((taskId) => lonely.client.waitForTask(taskId, { timeoutMs: 60_000 })));
    expect(await lonely.client.getTask(id)).toMatchObject({ state: 'completed', attempts: 1 });
    expect(await lonely.client.getTask(spin)).toMatchObject({ state: 'dead', attempts: 1 });
    // The first copy was killed before the second started, and never finished.
    expect(lines()).toEqual(['start', 'start', 'end']);
  });

  it('refuses executables that are not allowed, without retrying', async () => {
    const refused = await run({ command: ['ls', '/'] }, retryingShell);
    expect(refused).toMatchObject({ state: 'dead', attempts: 1 });
    expect(refused.error).toContain('NOT_ALLOWED');
    expect(refused.error).toContain('Executable "ls" is not allowed on this node');
    for (const command of [['/usr/bin/echo', 'x'], ['./echo'], ['../../usr/bin/true']]) {
      const task = await run({ command }, retryingShell);
      expect(task).toMatchObject({ state: 'dead', attempts: 1 });
      expect(task.error).toContain('NOT_ALLOWED');
    }
    const string = await run({ command: 'echo hi' }, retryingShell);
    expect(string).toMatchObject({ state: 'dead', attempts: 1 });
    expect(string.error).toContain('strings are not allowed');
    expect((await run({ command: ['/usr/bin/true'] })).state).toBe('completed');
  });

  it('rejects malformed messages without retrying', async () => {
    for (const message of [
      { command: [] },
      { command: ['echo'], cwd: 'relative/dir' },
      { command: ['echo'], timeoutMs: -1 },
      { command: ['echo'], maxOutputBytes: 1e9 },
      { command: ['echo'], shell: true },
    ]) {
      const task = await run(message as ShellMessage, retryingShell);
      expect(task).toMatchObject({ state: 'dead', attempts: 1 });
      expect(task.error).toContain('INVALID_ARGUMENT');
    }
    const missing = await run({ command: ['echo'], cwd: path.join(scratch, 'nope') }, retryingShell);
    expect(missing.error).toContain('is not an existing directory');
  });

  it("looks executables up on the node's PATH, not the message's", async () => {
    const marker = path.join(scratch, 'hijacked');
    writeFileSync(path.join(scratch, 'echo'), `#!/bin/sh\ntouch ${marker}\n`);
    chmodSync(path.join(scratch, 'echo'), 0o755);
    const task = await run({ command: ['echo', 'safe'], env: { PATH: scratch } });
    expect(task.result?.stdout).toBe('safe\n');
    expect(existsSync(marker)).toBe(false);
  });

  it('runs shell strings only on a node that allows them', async () => {
    await startTestNode(db.url, {
      tasks: [stringShell],
      planner: false,
      shell: { enabled: true, allow: [], allowShellStrings: true },
    });
    const task = await run({ command: 'echo $((40 + 2)) | tr 4 X' }, stringShell);
    expect(task.result?.stdout).toBe('X2\n');
  });
});

describe('shell task configuration', () => {
  it('refuses to start a node that has the shell task without enabling it', async () => {
    await expect(startTestNode(db.url, { tasks: [shellTask] })).rejects.toMatchObject({
      code: 'INVALID_CONFIG',
      message: expect.stringContaining('taskmill.shell runs OS commands and shell tasks are disabled'),
    });
    await expect(
      startTestNode(db.url, { tasks: [retryingShell], shell: { enabled: false, allow: ['echo'] } }),
    ).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
  });

  it('validates the shell option', async () => {
    for (const shell of [
      { enabled: true, allow: [] },
      { enabled: true, allow: ['bin/echo'] },
      { enabled: true, allow: [''] },
      { enabled: true, allow: ['echo'], allowShell: true },
    ]) {
      await expect(
        startTestNode(db.url, { tasks: [shellTask], shell: shell as never }),
      ).rejects.toMatchObject({
        code: 'INVALID_CONFIG',
        message: expect.stringContaining('shell'),
      });
    }
  });

  it('refuses in a thread that was given no shell policy', async () => {
    const ctx = { signal: new AbortController().signal } as TaskContext;
    await expect(runShell({ command: ['echo'] }, ctx)).rejects.toMatchObject({
      code: 'NOT_ALLOWED',
      message: expect.stringContaining('disabled on this node'),
    });
  });

  it('matches names to names and absolute paths to the same absolute paths', () => {
    const policy: ShellPolicy = {
      allow: ['echo', '/usr/bin/true'],
      allowShellStrings: false,
      killGraceMs: 10,
    };
    expect(resolveCommand({ command: ['echo', 'x'] }, policy, '/usr/bin')).toMatchObject({
      file: '/usr/bin/echo',
      argv0: 'echo',
      args: ['x'],
    });
    expect(resolveCommand({ command: ['/usr/bin/../bin/true'] }, policy).file).toBe('/usr/bin/../bin/true');
    expect(() => resolveCommand({ command: ['echo'] }, policy, '/nonexistent')).toThrowError(
      expect.objectContaining({ code: 'NOT_FOUND' }),
    );
    expect(() => resolveCommand({ command: ['/usr/bin/echo'] }, policy)).toThrowError(
      expect.objectContaining({ code: 'NOT_ALLOWED' }),
    );
  });
});
