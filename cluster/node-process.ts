/**
 * The one harness for taskmill node processes on this machine, shared by `taskmill cluster`
 * (local-cluster.ts), the benchmarks (bench/cluster.ts) and the multi-process tests
 * (test/helpers/spawn.ts): spawn a Node.js process running an entry module, capture its output line
 * by line, hear its IPC messages, learn when its node has registered, stop it (SIGTERM, then SIGKILL
 * after a grace period) and know when it has exited.
 *
 * An entry written in TypeScript (taskmill's sources, a checkout) runs with the tsx loader; a compiled
 * one (`.js`, as in the installed package) with plain node. A loader the user asked for through
 * NODE_OPTIONS reaches the child with the environment.
 *
 * Protocol: the child has an IPC channel and says `{ type: 'registered', id, name }`
 * (reportRegistered()) once its node is in tm_nodes; any other message goes to `onMessage`. Its
 * stdin is a pipe that the child may watch (onParentGone()): it closes when the parent dies.
 *
 * States of a process: running -> registered -> exited (or running -> exited). Every process started
 * here is tracked until it exits (liveNodeProcesses(), killAllNodeProcesses()); unless `detached`,
 * one still alive when this process exits is SIGKILLed. Main thread of the parent only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fstatSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Lines of output kept per process for error messages. */
const KEEP_LINES = 200;

/** What a node process tells its parent over IPC once its node is in tm_nodes. */
export interface RegisteredMessage {
  type: 'registered';
  id: string;
  name: string;
}

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface NodeProcessOptions {
  /** The module the process runs. */
  entry: string | URL;
  args?: string[];
  /** Node.js flags (the benchmarks pass their own, e.g. a profiler's). */
  execArgv?: string[];
  /** The process's whole environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** Its working directory (default: this process's). */
  cwd?: string;
  /** Names the process in errors. */
  name: string;
  /**
   * A process group of its own, so a terminal's Ctrl-C reaches only the parent, which stops it in
   * order. A detached process is not killed when the parent exits: it watches its stdin instead.
   */
  detached?: boolean;
  /** Every line the process writes (default: none kept beyond the last KEEP_LINES). */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
  /** IPC messages other than `registered`. */
  onMessage?: (message: unknown) => void;
}

/** `node [flags] [--import tsx] <entry> args...`: the loader for a TypeScript entry, unless in `flags`. */
export function nodeArgs(entry: string | URL, args: string[] = [], flags: string[] = []): string[] {
  const file = entry instanceof URL ? fileURLToPath(entry) : entry;
  const loader =
    /\.[cm]?ts$/.test(file) && !flags.some((f) => f.includes('tsx'))
      ? ['--import', import.meta.resolve('tsx')]
      : [];
  return [...flags, ...loader, file, ...args];
}

/**
 * The file of a module beside `base` (pass import.meta.url): `<name>.ts` when `base` runs from
 * TypeScript sources, `<name>.js` when compiled.
 */
export function sibling(name: string, base: string): URL {
  return new URL(`./${name}${/\.ts$/.test(base) ? '.ts' : '.js'}`, base);
}

const alive = new Set<ChildProcess>();
/** Detached processes outlive this one: they stop by themselves when their stdin pipe closes. */
const detached = new WeakSet<ChildProcess>();
process.once('exit', () => {
  for (const child of alive) if (!detached.has(child)) child.kill('SIGKILL');
});

export class NodeProcess {
  readonly child: ChildProcess;
  readonly name: string;
  /** Resolves once the process has exited. */
  readonly exited: Promise<ProcessExit>;
  /** Resolves when the node registered; rejects when the process exits first. */
  readonly registered: Promise<{ id: string; name: string }>;
  private readonly lines: string[] = [];

  constructor(options: NodeProcessOptions) {
    this.name = options.name;
    const args = nodeArgs(options.entry, options.args, options.execArgv);
    this.child = spawn(process.execPath, args, {
      env: options.env ?? process.env,
      cwd: options.cwd,
      stdio: ['pipe', 'pipe', 'pipe', 'ipc'],
      detached: options.detached ?? false,
    });
    const child = this.child;
    alive.add(child);
    if (options.detached) detached.add(child);
    // Nothing to do about a write to a process that is gone: its exit says what happened.
    child.stdin!.on('error', () => {});
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        alive.delete(child);
        child.stdin?.destroy();
        resolve({ code, signal });
      });
    });
    const keep = (line: string) => {
      this.lines.push(line);
      if (this.lines.length > KEEP_LINES) this.lines.shift();
    };
    onLines(child.stdout!, (line) => {
      keep(line);
      options.onLine?.(line, 'stdout');
    });
    onLines(child.stderr!, (line) => {
      keep(`stderr: ${line}`);
      options.onLine?.(line, 'stderr');
    });
    this.registered = new Promise((resolve, reject) => {
      child.on('message', (message: RegisteredMessage | undefined) => {
        if (message?.type === 'registered') resolve({ id: message.id, name: message.name });
        else options.onMessage?.(message);
      });
      void this.exited.then(({ code, signal }) =>
        reject(
          new Error(
            `${this.name} exited (${signal ?? `code ${code}`}) before registering a node:\n${this.output()}`,
          ),
        ),
      );
    });
    // A caller that only waits for the exit must not see an unhandled rejection.
    this.registered.catch(() => {});
    child.on('error', (error) => keep(`spawn error: ${error.message}`));
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends an IPC message, if the channel is still open. */
  send(message: unknown): void {
    if (this.child.connected) this.child.send(message as object);
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.running) this.child.kill(signal);
  }

  /** SIGTERM, then SIGKILL after `graceMs` (calling `onKill` first); resolves once it has exited. */
  async stop(graceMs: number, onKill?: () => void): Promise<ProcessExit> {
    if (!this.running) return this.exited;
    const timer = setTimeout(() => {
      onKill?.();
      this.kill('SIGKILL');
    }, graceMs);
    this.kill('SIGTERM');
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }

  /** The process's recent output lines (stderr ones prefixed), for error messages. */
  output(): string {
    return this.lines.join('\n');
  }
}

/** Node processes started here that have not exited yet. */
export function liveNodeProcesses(): ChildProcess[] {
  return [...alive];
}

/** SIGKILLs every node process started here that is still alive, and waits until they have exited. */
export async function killAllNodeProcesses(): Promise<void> {
  await Promise.all(
    [...alive].map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once('exit', () => resolve());
          child.kill('SIGKILL');
        }),
    ),
  );
}

/** Calls `fn` for each line a stream writes (the last one even without a final newline). */
export function onLines(stream: NodeJS.ReadableStream, fn: (line: string) => void): void {
  let rest = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const parts = (rest + chunk).split('\n');
    rest = parts.pop()!;
    for (const line of parts) fn(line);
  });
  stream.on('end', () => {
    if (rest) fn(rest);
  });
}

// ---- the child's side ----

/** In a node process: tells the parent that its node is in tm_nodes. */
export function reportRegistered(id: string, name: string): void {
  const message: RegisteredMessage = { type: 'registered', id, name };
  process.send?.(message);
}

/**
 * In a node process: calls `fn` when stdin is the parent's pipe and it closes (the parent died).
 * Returns a function that cancels the watch.
 */
export function onParentGone(fn: () => void): () => void {
  const stdin = fstatSync(0);
  if (!stdin.isFIFO() && !stdin.isSocket()) return () => {};
  process.stdin.on('end', fn);
  process.stdin.resume();
  return () => {
    process.stdin.removeListener('end', fn);
    process.stdin.pause();
  };
}
