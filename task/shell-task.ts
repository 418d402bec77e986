/**
 * Shell tasks: a built-in task type that runs an OS command as a child process and returns its exit
 * code and bounded output. This module is the shared part: the definition (`shellTask`,
 * `defineShellTask`), the node option `shell` and its checks, and the pure resolution of a message
 * into what to spawn under the node's policy. The child process itself is run by the worker-thread
 * handler, worker/shell-handler.ts.
 *
 * Safety: disabled unless the node says `shell: { enabled: true, allow: [...] }`; a node that runs a
 * shell task definition without it refuses to start. A command is an argument vector spawned without a
 * shell, and its executable must be on the allowlist; a command string goes through `/bin/sh -c` only
 * when the node sets `allowShellStrings` (which lets it run anything). The policy travels to the worker
 * threads in workerData and is enforced there, where the command is spawned.
 *
 * Environment: a command never gets the node's environment (it holds DATABASE_URL, tokens). It gets
 * the node's values of the names in `shell.inheritEnv` (PATH, HOME, locale, TZ... by default) plus what
 * the message's `env` sets, for names in `shell.messageEnv` only. Names that load code into a process
 * (LD_*, DYLD_*, BASH_FUNC_*, NODE_OPTIONS, BASH_ENV...) are refused in both lists and in messages.
 */
import { accessSync, constants, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { TaskmillError } from './errors.ts';
import { defineTask, type TaskDefinition, type TaskDefinitionInput } from './task-definition.ts';

export const SHELL_TASK_NAME = 'taskmill.shell';
/** The handler module of every shell task definition; how a node recognizes one. */
export const SHELL_HANDLER = new URL(`../worker/shell-handler${import.meta.url.slice(-3)}`, import.meta.url)
  .href;

export const SHELL_DEFAULTS = {
  /** Per command unless the message says otherwise. */
  timeoutMs: 3_600_000,
  /** Kept of each of stdout and stderr (the last bytes). */
  maxOutputBytes: 64 * 1024,
  /** Of that, how much of each stream a failure's error carries (errors are stored in rows and logs). */
  errorOutputBytes: 16 * 1024,
  /**
   * From SIGTERM to SIGKILL; capped at half the node's abortGraceMs, so the kill lands before the
   * dispatcher terminates a thread whose handler has not ended.
   */
  killGraceMs: 2_000,
  /**
   * After the command's own process exits, how long to wait for its output pipes to close: a process
   * that left its group (setsid) may hold them open for ever.
   */
  pipeGraceMs: 1_000,
  /** Names of the node's environment passed to commands (a trailing * matches a prefix). */
  inheritEnv: ['PATH', 'HOME', 'LANG', 'LANGUAGE', 'LC_*', 'TZ', 'TMPDIR', 'USER', 'LOGNAME', 'TERM'],
  /** Names a message's env may set. */
  messageEnv: ['LANG', 'LANGUAGE', 'LC_*', 'TZ'],
};

/**
 * Environment names never passed to a command, whatever the configuration: they make a dynamic
 * loader, a shell or an interpreter run code of the caller's choosing (a trailing * matches a prefix).
 */
export const FORBIDDEN_ENV = [
  'LD_*',
  'DYLD_*',
  'BASH_FUNC_*',
  'BASH_ENV',
  'ENV',
  'SHELLOPTS',
  'BASHOPTS',
  'PS4',
  'PROMPT_COMMAND',
  'IFS',
  'GLIBC_TUNABLES',
  'GCONV_PATH',
  'LOCPATH',
  'MALLOC_*',
  'NODE_OPTIONS',
  'NODE_PATH',
  'PYTHONSTARTUP',
  'PYTHONPATH',
  'PYTHONHOME',
  'PERL5OPT',
  'PERL5LIB',
  'PERLLIB',
  'RUBYOPT',
  'RUBYLIB',
  'JAVA_TOOL_OPTIONS',
  '_JAVA_OPTIONS',
  'GIT_SSH',
  'GIT_SSH_COMMAND',
  'GIT_EXEC_PATH',
  'GIT_CONFIG_*',
  'GIT_ASKPASS',
  'SSH_ASKPASS',
];

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function matches(name: string, entry: string): boolean {
  return entry.endsWith('*') ? name.startsWith(entry.slice(0, -1)) : name === entry;
}

/** Whether an environment name is one a command must never receive. */
export function isForbiddenEnv(name: string): boolean {
  return FORBIDDEN_ENV.some((entry) => matches(name, entry));
}

/** Whether a configured entry (name or prefix*) could let a forbidden name through. */
function overlapsForbidden(entry: string): boolean {
  if (!entry.endsWith('*')) return isForbiddenEnv(entry);
  const prefix = entry.slice(0, -1);
  return FORBIDDEN_ENV.some((f) =>
    f.endsWith('*') ? prefix.startsWith(f.slice(0, -1)) || f.startsWith(prefix) : f.startsWith(prefix),
  );
}
export const SHELL_LIMITS = { maxOutputBytes: 16 * 1024 * 1024, timeoutMs: 7 * 86_400_000 };

/** The message of a shell task. */
export interface ShellMessage {
  /**
   * Argument vector: the executable (a name looked up on the node's PATH, or an absolute path), then
   * its arguments. A string is a shell command line, refused unless the node allows shell strings.
   */
  command: string[] | string;
  /** Absolute working directory (default: the node's). */
  cwd?: string;
  /**
   * Variables for the command, over the node's values of `shell.inheritEnv`: only names listed in the
   * node option `shell.messageEnv` are accepted (never LD_*, BASH_FUNC_*, NODE_OPTIONS...).
   */
  env?: Record<string, string>;
  timeoutMs?: number;
  maxOutputBytes?: number;
}

/** The result of a shell task that exited with code 0. */
export interface ShellResult {
  exitCode: number;
  /** The last maxOutputBytes of each stream, decoded as UTF-8. */
  stdout: string;
  stderr: string;
  /** Bytes written in total to each stream. */
  stdoutBytes: number;
  stderrBytes: number;
  truncated: boolean;
  durationMs: number;
}

const allowEntry = z
  .string()
  .min(1)
  .refine(
    (entry) => !entry.includes('/') || path.isAbsolute(entry),
    'give an executable name (looked up on PATH) or an absolute path',
  );

const envEntry = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_]*\*?$/, 'give a variable name, or a prefix ending in *')
  .refine((entry) => !overlapsForbidden(entry), {
    message: `may let through a variable that loads code (${FORBIDDEN_ENV.join(', ')}); these are never passed`,
  });

export const shellOptionsSchema = z
  .object({
    enabled: z.boolean().default(false),
    /** Executables allowed: names (resolved on the node's PATH) or absolute paths. */
    allow: z.array(allowEntry).default([]),
    /** Allow messages whose command is a string run by /bin/sh -c (the allowlist cannot constrain those). */
    allowShellStrings: z.boolean().default(false),
    /** Names of the node's environment passed to commands; the rest (secrets) is not. */
    inheritEnv: z.array(envEntry).default(SHELL_DEFAULTS.inheritEnv),
    /** Names a message's env may set. */
    messageEnv: z.array(envEntry).default(SHELL_DEFAULTS.messageEnv),
  })
  .strict()
  .refine(
    (o) => !o.enabled || o.allow.length > 0 || o.allowShellStrings,
    'shell is enabled with an empty allow list: list the executables shell tasks may run',
  );

export type ShellOptions = z.output<typeof shellOptionsSchema>;

/** What a worker thread needs (WorkerInit.shell); absent when the node has shell tasks disabled. */
export interface ShellPolicy {
  allow: string[];
  allowShellStrings: boolean;
  killGraceMs: number;
  /** Default SHELL_DEFAULTS.inheritEnv / messageEnv. */
  inheritEnv?: string[];
  messageEnv?: string[];
}

export type ShellTaskOptions = Omit<TaskDefinitionInput, 'handler' | 'name'> & { name?: string };

/**
 * A shell task definition. Retries are OFF unless given: a command is not known to be safe to repeat.
 * Define several (under other names) for different retry policies, limits or affinity.
 */
export function defineShellTask(options: ShellTaskOptions = {}): TaskDefinition<ShellMessage, ShellResult> {
  return defineTask<ShellMessage, ShellResult>({
    name: SHELL_TASK_NAME,
    retry: { mode: 'OFF' },
    ...options,
    handler: SHELL_HANDLER,
  });
}

/** The built-in shell task, `taskmill.shell`. */
export const shellTask = defineShellTask();

export function isShellTask(def: TaskDefinition): boolean {
  return def.handler === SHELL_HANDLER;
}

/** At node start: a node that runs shell tasks must enable them. */
export function assertShellConfig(tasks: readonly TaskDefinition[], options: ShellOptions): void {
  const shell = tasks.filter(isShellTask).map((d) => d.name);
  if (shell.length > 0 && !options.enabled) {
    throw new TaskmillError(
      'INVALID_CONFIG',
      `Task ${shell.join(', ')} runs OS commands and shell tasks are disabled on this node: ` +
        `pass shell: { enabled: true, allow: ['executable', ...] }, or remove the task from this node.`,
    );
  }
}

/** The policy sent to worker threads. */
export function workerShellPolicy(options: ShellOptions, abortGraceMs: number): ShellPolicy | undefined {
  if (!options.enabled) return undefined;
  return {
    allow: options.allow,
    allowShellStrings: options.allowShellStrings,
    killGraceMs: Math.min(SHELL_DEFAULTS.killGraceMs, Math.floor(abortGraceMs / 2)),
    inheritEnv: options.inheritEnv,
    messageEnv: options.messageEnv,
  };
}

const messageSchema = z
  .object({
    command: z.union([
      z
        .array(
          z
            .string()
            .min(1)
            .refine((s) => !s.includes('\0'), 'no NUL bytes'),
        )
        .min(1),
      z.string().min(1),
    ]),
    cwd: z
      .string()
      .refine((p) => path.isAbsolute(p), 'cwd must be an absolute path')
      .optional(),
    env: z
      .record(
        z.string().regex(ENV_NAME, 'environment names are letters, digits and _, not starting with a digit'),
        z.string().refine((v) => !v.includes('\0'), 'no NUL bytes'),
      )
      .optional(),
    timeoutMs: z.number().int().positive().max(SHELL_LIMITS.timeoutMs).default(SHELL_DEFAULTS.timeoutMs),
    maxOutputBytes: z
      .number()
      .int()
      .positive()
      .max(SHELL_LIMITS.maxOutputBytes)
      .default(SHELL_DEFAULTS.maxOutputBytes),
  })
  .strict();

/** A validated command, ready to spawn. */
export interface ResolvedCommand {
  file: string;
  args: string[];
  /** argv[0] as given (a name stays a name for the child). */
  argv0: string;
  /** For errors and logs. */
  display: string;
  cwd: string | undefined;
  /** The command's whole environment. */
  env: Record<string, string>;
  timeoutMs: number;
  maxOutputBytes: number;
}

/**
 * Validates a shell message against the node's policy. Throws INVALID_ARGUMENT (bad message),
 * NOT_ALLOWED (executable not allowed, shell string refused) or NOT_FOUND (not on PATH, no such cwd).
 * Names are resolved on the node's PATH, never the message's env, so a message cannot swap the binary.
 * `nodeEnv` is the node's environment, of which only the inherited names are passed.
 */
export function resolveCommand(
  message: unknown,
  policy: ShellPolicy,
  pathEnv = process.env.PATH ?? '',
  nodeEnv: NodeJS.ProcessEnv = process.env,
): ResolvedCommand {
  const parsed = messageSchema.safeParse(message);
  if (!parsed.success) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `Invalid shell task message: ${z.prettifyError(parsed.error)}`,
    );
  }
  const m = parsed.data;
  if (m.cwd !== undefined && !isDirectory(m.cwd)) {
    throw new TaskmillError(
      'NOT_FOUND',
      `Shell task cwd ${JSON.stringify(m.cwd)} is not an existing directory.`,
    );
  }
  const env = commandEnv(m.env ?? {}, policy, nodeEnv);
  const common = { cwd: m.cwd, env, timeoutMs: m.timeoutMs, maxOutputBytes: m.maxOutputBytes };
  if (typeof m.command === 'string') {
    if (!policy.allowShellStrings) {
      throw new TaskmillError(
        'NOT_ALLOWED',
        'Shell command strings are not allowed on this node: give command as an argument vector ' +
          `(["executable", "arg", ...]), or start the node with shell.allowShellStrings.`,
      );
    }
    return { ...common, file: '/bin/sh', args: ['-c', m.command], argv0: 'sh', display: m.command };
  }
  const [argv0, ...args] = m.command;
  const display = JSON.stringify(m.command);
  if (!isAllowed(argv0, policy.allow)) {
    throw new TaskmillError(
      'NOT_ALLOWED',
      `Executable ${JSON.stringify(argv0)} is not allowed on this node (allowed: ${policy.allow.join(', ') || 'none'}). ` +
        'Add it to the node option shell.allow, by name or absolute path.',
    );
  }
  const file = path.isAbsolute(argv0) ? argv0 : findOnPath(argv0, pathEnv);
  if (!file || !isExecutable(file)) {
    throw new TaskmillError(
      'NOT_FOUND',
      `Executable ${JSON.stringify(argv0)} was not found or is not executable on this node.`,
    );
  }
  return { ...common, file, args, argv0, display };
}

/** The inherited part of the node's environment plus the message's variables; NOT_ALLOWED on a refused name. */
function commandEnv(
  requested: Record<string, string>,
  policy: ShellPolicy,
  nodeEnv: NodeJS.ProcessEnv,
): Record<string, string> {
  const inherit = policy.inheritEnv ?? SHELL_DEFAULTS.inheritEnv;
  const settable = policy.messageEnv ?? SHELL_DEFAULTS.messageEnv;
  const refused = Object.keys(requested).filter(
    (name) => isForbiddenEnv(name) || !settable.some((entry) => matches(name, entry)),
  );
  if (refused.length > 0) {
    throw new TaskmillError(
      'NOT_ALLOWED',
      `Shell task env sets variables this node does not accept: ${refused.join(', ')} ` +
        `(accepted: ${settable.join(', ') || 'none'}). Add names to the node option shell.messageEnv; ` +
        `variables that load code (LD_*, DYLD_*, BASH_FUNC_*, NODE_OPTIONS...) are never accepted.`,
    );
  }
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(nodeEnv)) {
    if (value === undefined || isForbiddenEnv(name)) continue;
    if (inherit.some((entry) => matches(name, entry))) env[name] = value;
  }
  return Object.assign(env, requested);
}

/** A name matches a name entry; an absolute path matches the same absolute path entry. */
function isAllowed(argv0: string, allow: string[]): boolean {
  if (!argv0.includes('/')) return allow.includes(argv0);
  if (!path.isAbsolute(argv0)) return false;
  const wanted = path.normalize(argv0);
  return allow.some((entry) => path.isAbsolute(entry) && path.normalize(entry) === wanted);
}

function findOnPath(name: string, pathEnv: string): string | undefined {
  for (const dir of pathEnv.split(path.delimiter)) {
    if (!dir || !path.isAbsolute(dir)) continue;
    const candidate = path.join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

function isDirectory(dir: string): boolean {
  try {
    return statSync(dir).isDirectory();
  } catch {
    return false;
  }
}
