/** `taskmill workflow show|cancel|wait` (client/workflows.ts). */
import type { Command } from 'commander';
import { TaskmillError } from '../../task/errors.ts';
import {
  cancelWorkflow,
  waitForWorkflow,
  workflowStatus,
  type WorkflowStatus,
} from '../../client/workflows.ts';
import { Progress } from '../../log/progress.ts';
import { withPool } from '../database-url.ts';
import { EXIT, intOption, print } from '../output.ts';
import type { CommandContext } from '../main.ts';

const COUNTS = [
  'ready',
  'waiting',
  'sleeping',
  'assigned',
  'running',
  'completed',
  'failed',
  'cancelled',
  'dead',
] as const;

export function registerWorkflowCommands(program: Command, ctx: CommandContext): void {
  const cmd = program.command('workflow').description('Look at, wait for or cancel a workflow');

  cmd
    .command('show')
    .description('Task counts of a workflow by state (exit code 3 if unknown)')
    .argument('<id>', 'workflow id')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }, command: Command) => {
      const status = await withPool(command.optsWithGlobals(), ctx.io, (pool) => workflowStatus(pool, id));
      if (!status) throw new TaskmillError('NOT_FOUND', `No workflow ${id}.`);
      print(ctx.io, opts.json, status, renderWorkflow);
    });

  cmd
    .command('wait')
    .description(
      'Wait until no task of the workflow is pending, with a progress bar on a terminal (exit code 1 on timeout or when one of its tasks failed)',
    )
    .argument('<id>', 'workflow id')
    .option('--timeout <ms>', 'give up after this long', intOption('--timeout'), 60_000)
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { timeout: number; json?: boolean }, command: Command) => {
      const stream = ctx.io.progressTerminal;
      let bar: Progress | undefined;
      const onStatus = (s: WorkflowStatus) => {
        bar ??= new Progress({ label: `workflow ${id}`, total: s.total, stream, enabled: true });
        bar.update(s.total - s.pending, s.total);
      };
      const status = await withPool(command.optsWithGlobals(), ctx.io, (pool) =>
        waitForWorkflow(pool, id, {
          timeoutMs: opts.timeout,
          signal: ctx.io.signal,
          onStatus: stream ? onStatus : undefined,
        }),
      ).finally(() => bar?.end());
      print(ctx.io, opts.json, status, renderWorkflow);
      if (status.failed + status.dead > 0) ctx.exit(EXIT.FAILURE);
    });

  cmd
    .command('cancel')
    .description(
      'Cancel a workflow: pending tasks end cancelled, running ones are aborted (exit code 3 if unknown)',
    )
    .argument('<id>', 'workflow id')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }, command: Command) => {
      const result = await withPool(command.optsWithGlobals(), ctx.io, (pool) => cancelWorkflow(pool, id));
      print(
        ctx.io,
        opts.json,
        { id, ...result },
        (r) => `cancelled ${r.cancelled} pending, asked nodes to abort ${r.requested} running`,
      );
    });
}

function renderWorkflow(s: WorkflowStatus): string {
  return [
    `workflow ${s.id}: ${s.done ? 'done' : `${s.pending} pending`} (${s.total} tasks)`,
    COUNTS.filter((k) => s[k] > 0)
      .map((k) => `${k} ${s[k]}`)
      .join(', '),
  ].join('\n');
}
