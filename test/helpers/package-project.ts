/**
 * The package as a user gets it, for tests that work from a separate project: `npm pack` (which
 * builds dist/) once per test run, and a runner for the programs such a project runs (npm, node, the CLI)
 * that never rejects on a non-zero exit: the test looks at the code and the output.
 */
import { execFile, type ExecFileException } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import packageJson from '../../package.json' with { type: 'json' };

const ROOT = path.resolve(import.meta.dirname, '../..');
const RUN_MS = 240_000;

/** npm as a test runs it: from the local cache when it can, without network look-ups it does not need. */
export const NPM_ENV = {
  npm_config_update_notifier: 'false',
  npm_config_prefer_offline: 'true',
  npm_config_audit: 'false',
  npm_config_fund: 'false',
} as const;

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end (at most `timeoutMs`); resolves with its exit code and output. */
export function run(
  file: string,
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      {
        cwd: options.cwd,
        env: options.env ?? process.env,
        timeout: options.timeoutMs ?? RUN_MS,
        maxBuffer: 64 * 1024 * 1024,
      },
      (error: ExecFileException | null, stdout, stderr) => {
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr });
      },
    );
  });
}

/** The run, or an error with its exit code and output when it failed. */
export function expectOk(result: Run): Run {
  if (result.code !== 0) {
    throw new Error(`exit code ${result.code}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`);
  }
  return result;
}

/** The tarball's file name, as `npm pack` writes it (`taskmill-0.1.0.tgz`). */
export const TARBALL = `taskmill-${packageJson.version}.tgz`;
const PACK_WAIT_MS = 300_000;

/**
 * The folder of this test run's tarball (named after the run's template database); global-setup
 * removes it at the end of the run.
 */
export function packFolder(templateDb: string): string {
  return path.join(ROOT, '.taskmill', 'test-pack', templateDb);
}

/**
 * The package packed from this repository (building dist/), once per test run: `npm pack` rebuilds
 * dist/ from scratch, so test files that run at the same time take turns through a lock folder, and
 * the first one packs for all (`templateDb`: `inject('templateDb')`). Returns the tarball's path (read it, do not change it).
 */
export async function packPackage(templateDb: string, env: NodeJS.ProcessEnv): Promise<string> {
  const dir = packFolder(templateDb);
  const tarball = path.join(dir, TARBALL);
  const lock = `${dir}.lock`;
  mkdirSync(path.dirname(dir), { recursive: true });
  const deadline = Date.now() + PACK_WAIT_MS;
  while (!tryLock(lock)) {
    if (Date.now() > deadline) throw new Error(`${lock} still held after ${PACK_WAIT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  try {
    if (!existsSync(tarball)) {
      mkdirSync(dir, { recursive: true });
      expectOk(
        await run('npm', ['pack', '--pack-destination', dir], { cwd: ROOT, env: { ...env, ...NPM_ENV } }),
      );
    }
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
  return tarball;
}

function tryLock(lock: string): boolean {
  try {
    mkdirSync(lock);
    return true;
  } catch (error) {
    if ((error as { code?: string }).code === 'EEXIST') return false;
    throw error;
  }
}

/**
 * Type-checks the TypeScript of a consumer project with this repository's tsc, against the
 * declarations installed there: strict, `moduleResolution: "nodenext"`, as the README asks of users.
 * Writes `dir/tsconfig.json` with `files` (or `include`) and the extra compiler options given.
 */
export function typeCheck(
  dir: string,
  sources: { files: string[] } | { include: string[] },
  compilerOptions: Record<string, unknown> = {},
): Promise<Run> {
  writeFileSync(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'nodenext',
        moduleResolution: 'nodenext',
        strict: true,
        noEmit: true,
        // Node's types come with taskmill's (@types/pg depends on @types/node).
        types: ['node'],
        ...compilerOptions,
      },
      ...sources,
    }),
  );
  return run(path.join(ROOT, 'node_modules', '.bin', 'tsc'), ['-p', dir], { cwd: dir });
}
