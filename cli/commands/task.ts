/** `taskmill task show|cancel|list`. */
import type { Command } from 'commander';
import type pg from 'pg';
import { TaskmillError } from '../../task/errors.ts';
import { listTasks, type TaskPage } from '../../store/inspect.ts';
import {
  describeRetryPolicy,
  TASK_STATES,
  type RetryOutlook,
  type TaskStatus,
} from '../../task/task-states.ts';
import { toJson } from '../../http/to-json.ts';
import { withPool } from '../database-url.ts';
import { CliError, EXIT, intOption, print, table } from '../output.ts';
import { parseDuration } from '../../http/schemas.ts';
import { WAIT_FOR_TASK_DEFAULTS } from '../../client/task-waiter.ts';
import type { CommandContext } from '../main.ts';

interface ListOptions {
  state?: string;
  name?: string;
  workflow?: string;
  limit: number;
  cursor?: string;
  json?: boolean;
}

export function registerTaskCommands(program: Command, ctx: CommandContext): void {
  const cmd = program.command('task').description('Look at or cancel one task');

  cmd
    .command('show')
    .description(
      'Show a task wherever it is (pending, history, dead letters), with its result (exit code 3 if unknown)',
    )
    .argument('<id>', 'task id')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }, command: Command) => {
      const task = await withPool(command.optsWithGlobals(), ctx.io, (pool) =>
        client(pool).then((c) => c.getTask(id)),
      );
      if (!task) throw new TaskmillError('NOT_FOUND', `No task ${id} (unknown, or past history retention).`);
      print(ctx.io, opts.json, { ...task, result: toJson(task.result) }, ({ retry, ...t }) =>
        [
          ...Object.entries(t).map(
            ([k, v]) =>
              `${`${k}:`.padEnd(12)} ${v instanceof Date ? v.toISOString() : typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v ?? '')}`,
          ),
          ...(retry ? renderRetry(retry, new Date()) : []),
        ].join('\n'),
      );
    });

  cmd
    .command('wait')
    .description(
      'Wait for a task to end and show it; progress goes to stderr (exit code 0 completed, 6 failed, cancelled or dead, 7 not ended within --timeout, 3 unknown)',
    )
    .argument('<id>', 'task id')
    .option('--timeout <duration>', 'how long to wait: 500ms, 30s, 10m (a bare number is seconds)', '60s')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { timeout: string; json?: boolean }, command: Command) => {
      const timeoutMs = parseDuration(opts.timeout, WAIT_FOR_TASK_DEFAULTS.maxTimeoutMs, '--timeout');
      const task = await withPool(command.optsWithGlobals(), ctx.io, async (pool) => {
        const c = await client(pool);
        try {
          return await c.waitForTask(id, {
            timeoutMs,
            signal: ctx.io.signal,
            onProgress: (value) => ctx.io.err(`progress: ${JSON.stringify(value)}\n`),
          });
        } finally {
          await c.close();
        }
      });
      print(ctx.io, opts.json, { ...task, result: toJson(task.result) }, (t) =>
        [
          `${t.state} ${t.id}`,
          ...(t.error ? [t.error] : []),
          ...(t.result !== undefined && t.result !== null ? [JSON.stringify(t.result)] : []),
        ].join('\n'),
      );
      if (task.state !== 'completed') {
        throw new CliError(EXIT.TASK_FAILED, `Task ${id} ended ${task.state}.`);
      }
    });

  cmd
    .command('cancel')
    .description('Cancel a task (exit code 3 if unknown, 4 if it can no longer be cancelled)')
    .argument('<id>', 'task id')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }, command: Command) => {
      const outcome = await withPool(command.optsWithGlobals(), ctx.io, (pool) =>
        client(pool).then((c) => c.cancel(id)),
      );
      print(ctx.io, opts.json, { id, outcome }, () =>
        outcome === 'cancelled' ? `cancelled ${id}` : `asked the node running ${id} to abort it`,
      );
    });

  cmd
    .command('list')
    .description('List tasks, newest first')
    .option('--state <states>', `comma-separated: ${TASK_STATES.join(', ')}`)
    .option('--name <name>', 'task name')
    .option('--workflow <id>', 'workflow id')
    .option('--limit <n>', 'page size', intOption('--limit', 1, 1000), 50)
    .option('--cursor <cursor>', 'the next-page cursor a previous page printed')
    .option('--json', 'print JSON')
    .action(async (opts: ListOptions, command: Command) => {
      const page = await withPool(command.optsWithGlobals(), ctx.io, (pool) =>
        listTasks(pool, {
          states: opts.state?.split(',') as TaskStatus[] | undefined,
          name: opts.name,
          workflowId: opts.workflow,
          limit: opts.limit,
          cursor: opts.cursor,
        }),
      );
      print(ctx.io, opts.json, page, renderPage);
    });
}

/** Loaded on use: the client brings the task-definition schema (zod), which other commands do without. */
async function client(pool: pg.Pool) {
  const { TaskmillClient } = await import('../../client/client.ts');
  return new TaskmillClient({ pool });
}

/** When and how often a pending task will still be tried, in words. */
export function renderRetry(r: RetryOutlook, now: Date): string[] {
  const when = (d: Date) => {
    const s = Math.round((d.getTime() - now.getTime()) / 1000);
    return `${d.toISOString()} (${s <= 0 ? 'due now' : `in ${s} s`})`;
  };
  return [
    `${'retry:'.padEnd(12)} ${describeRetryPolicy(r.policy)}${r.registered ? '' : ' (the default: no node registered this task)'}`,
    `${'failed:'.padEnd(12)} ${r.attemptsSoFar} attempt${r.attemptsSoFar === 1 ? '' : 's'} so far`,
    `${'attempts left:'.padEnd(12)} ${r.attemptsLeft === null ? 'no limit' : `at most ${r.attemptsLeft}, the ${r.nextAttemptAt ? 'next' : 'current'} one included`}`,
    ...(r.nextAttemptAt ? [`${'next attempt:'.padEnd(12)} ${when(r.nextAttemptAt)}`] : []),
    ...(r.lastAttemptBy && r.attemptsLeft !== null && r.attemptsLeft > 1
      ? [`${'last attempt:'.padEnd(12)} by ${r.lastAttemptBy.toISOString()} at the latest`]
      : []),
  ];
}

export function renderPage(page: TaskPage): string {
  const rows = page.tasks.map((t) => [
    t.id,
    t.name,
    t.state,
    t.attempts,
    t.state === 'delayed' || t.state === 'retrying' || t.state === 'sleeping'
      ? (t.notBefore?.toISOString() ?? '')
      : '',
    t.createdAt.toISOString(),
    (t.error ?? '').split('\n')[0].slice(0, 60),
  ]);
  return [
    rows.length
      ? table(['id', 'name', 'state', 'attempts', 'next attempt', 'created', 'error'], rows)
      : '(no task)',
    ...(page.nextCursor ? [`next page: --cursor ${page.nextCursor}`] : []),
  ].join('\n');
}
