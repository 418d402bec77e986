/**
 * Shell tasks cannot escape their allowlist through the message's env, and never see the node's
 * secrets: an allowed bash script with an exported function that shadows a command, an allowed binary
 * with LD_PRELOAD, and a plain `env` dump.
 */
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineShellTask, type ShellMessage, type ShellResult, type TaskmillNode } from '../../index.ts';
import { resolveCommand } from '../../task/shell-task.ts';
import { useTestDatabase } from '../helpers/database.ts';
import { startTestNode, stopAllNodes } from '../helpers/nodes.ts';

const shell = defineShellTask({ name: 'shell-escape', retry: { mode: 'FIXED', delayMs: 0, maxRetries: 2 } });
const SECRET = 'postgres://app:s3cret-password@db/app';

const db = useTestDatabase();
let node: TaskmillNode;
let scratch: string;
let script: string;
let marker: string;

beforeAll(async () => {
  scratch = mkdtempSync(path.join(tmpdir(), 'taskmill-escape-'));
  marker = path.join(scratch, 'pwned');
  // An allowed bash script that calls a builtin-shadowable command.
  script = path.join(scratch, 'greet.sh');
  writeFileSync(script, '#!/bin/bash\necho hello\n');
  chmodSync(script, 0o755);
  // Secrets in the node's environment (worker threads copy it when they start).
  process.env.TASKMILL_ESCAPE_SECRET = SECRET;
  process.env.TASKMILL_HTTP_TOKEN ??= 'token-for-escape-test';
  node = await startTestNode(db.url, {
    tasks: [shell],
    shell: { enabled: true, allow: [script, 'true', 'env'], messageEnv: ['GREETING', 'TZ'] },
  });
});
afterAll(async () => {
  await stopAllNodes();
  delete process.env.TASKMILL_ESCAPE_SECRET;
  rmSync(scratch, { recursive: true, force: true });
});

async function run(message: ShellMessage) {
  const id = await node.client.schedule(shell, { message });
  return node.client.waitForTask<ShellResult>(id, { timeoutMs: 30_000 });
}

describe('shell env', () => {
  it('refuses an exported bash function that shadows a command of an allowed script', async () => {
    const task = await run({
      command: [script],
      env: { 'BASH_FUNC_echo%%': `() { touch ${marker}; }` },
    });
    expect(task).toMatchObject({ state: 'dead', attempts: 1 });
    expect(task.error).toMatch(/INVALID_ARGUMENT|NOT_ALLOWED/);
    expect(existsSync(marker)).toBe(false);
  });

  it('refuses loader variables on an allowed binary, whatever the retry policy', async () => {
    for (const name of [
      'LD_PRELOAD',
      'LD_LIBRARY_PATH',
      'DYLD_INSERT_LIBRARIES',
      'NODE_OPTIONS',
      'BASH_ENV',
    ]) {
      const task = await run({ command: ['true'], env: { [name]: path.join(scratch, 'evil.so') } });
      expect(task).toMatchObject({ state: 'dead', attempts: 1 });
      expect(task.error).toContain('NOT_ALLOWED');
      expect(task.error).toContain(name);
    }
  });

  it('refuses names the node does not accept from messages, and accepts the ones it lists', async () => {
    const refused = await run({ command: ['env'], env: { DATABASE_URL: 'postgres://elsewhere' } });
    expect(refused).toMatchObject({ state: 'dead', attempts: 1 });
    expect(refused.error).toContain('shell.messageEnv');
    const accepted = await run({ command: ['env'], env: { GREETING: 'hi', TZ: 'UTC' } });
    expect(accepted.result?.stdout).toContain('GREETING=hi\n');
    expect(accepted.result?.stdout).toContain('TZ=UTC\n');
  });

  it("never passes the node's secrets: only the inherited names", async () => {
    const task = await run({ command: ['env'] });
    const stdout = task.result!.stdout;
    expect(stdout).toContain(`PATH=${process.env.PATH}\n`);
    expect(stdout).not.toContain(SECRET);
    expect(stdout).not.toContain('TASKMILL_');
    expect(stdout).not.toContain('DATABASE_URL');
    const names = stdout
      .split('\n')
      .filter(Boolean)
      .map((line) => line.slice(0, line.indexOf('=')));
    expect(
      names.every((n) =>
        /^(PATH|HOME|LANG|LANGUAGE|LC_\w+|TZ|TMPDIR|USER|LOGNAME|TERM|PWD|SHLVL|_)$/.test(n),
      ),
    ).toBe(true);
  });

  it('refuses configurations that would let loader variables through', async () => {
    for (const shellOption of [
      { inheritEnv: ['LD_PRELOAD'] },
      { inheritEnv: ['*'] },
      { messageEnv: ['L*'] },
      { messageEnv: ['BASH_FUNC_x'] },
      { messageEnv: ['NODE_OPTIONS'] },
      { messageEnv: ['not a name'] },
    ]) {
      await expect(
        startTestNode(db.url, {
          tasks: [shell],
          planner: false,
          shell: { enabled: true, allow: ['true'], ...shellOption },
        }),
      ).rejects.toMatchObject({ code: 'INVALID_CONFIG', message: expect.stringContaining('shell') });
    }
  });

  it('resolves the environment from the inherited names and the message only', () => {
    const policy = { allow: ['true'], allowShellStrings: false, killGraceMs: 10, messageEnv: ['APP_*'] };
    const nodeEnv = { PATH: '/usr/bin', DATABASE_URL: SECRET, LC_ALL: 'C', LD_PRELOAD: '/x.so', HOME: '/h' };
    const resolved = resolveCommand(
      { command: ['true'], env: { APP_MODE: 'x' } },
      policy,
      '/usr/bin',
      nodeEnv,
    );
    expect(resolved.env).toEqual({ PATH: '/usr/bin', LC_ALL: 'C', HOME: '/h', APP_MODE: 'x' });
    expect(() =>
      resolveCommand({ command: ['true'], env: { PATH: '/tmp' } }, policy, '/usr/bin', nodeEnv),
    ).toThrowError(expect.objectContaining({ code: 'NOT_ALLOWED' }));
  });
});
