/**
 * The `taskmill` command line (commander). `runCli(argv, io)` runs one command and resolves with its
 * exit code; it never exits the process, so tests run commands in-process. `main()` wires it to the
 * real process: stdout/stderr, the environment, and SIGINT/SIGTERM (the first one asks long-running
 * commands to stop gracefully, a second one exits at once).
 */
import { Command, CommanderError } from 'commander';
import { registerDbCommands } from './commands/db.ts';
import { registerMigrateCommands } from './commands/migrate.ts';
import { registerNodeCommand } from './commands/node.ts';
import { registerClusterCommand } from './commands/cluster.ts';
import { registerServeCommand } from './commands/serve.ts';
import { registerScheduleCommand } from './commands/schedule.ts';
import { registerStatusCommand } from './commands/status.ts';
import { registerTaskCommands } from './commands/task.ts';
import { registerWorkflowCommands } from './commands/workflow.ts';
import { registerDltCommands } from './commands/dlt.ts';
import { registerBenchCommands } from './commands/bench.ts';
import { EXIT, exitCodeOf, type CliIo } from './output.ts';

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
  registerClusterCommand(program, ctx);
  registerServeCommand(program, ctx);
  registerScheduleCommand(program, ctx);
  registerStatusCommand(program, ctx);
  registerTaskCommands(program, ctx);
  registerWorkflowCommands(program, ctx);
  registerDltCommands(program, ctx);
  registerBenchCommands(program, ctx);
  return program;
}

/** Runs one command line (without the program name); resolves with the exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  let code: number = EXIT.OK;
  const program = buildProgram({ io, exit: (c) => (code = c) });
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version end with exit code 0; every parse error is a usage error.
      return error.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    }
    io.err(`taskmill: ${(error as Error).message}\n`);
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
  });
}
