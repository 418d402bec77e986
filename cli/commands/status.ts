/** `taskmill status`: nodes, leader, queue depths by state and task, throughput, recent failures. */
import type { Command } from 'commander';
import type pg from 'pg';
import { clusterStats, type ClusterStats } from '../../store/inspect.ts';
import { DEPTH_STATES } from '../../task/task-states.ts';
import { withPool } from '../database-url.ts';
import sparkly from 'sparkly';
import { liveView } from '../live-view.ts';
import { CliError, EXIT, intOption, print, table } from '../output.ts';
import type { CommandContext } from '../main.ts';

/** How long `taskmill status` spends counting throughput before it answers without it. */
export const STATUS_THROUGHPUT_TIMEOUT_MS = 500;

export function registerStatusCommand(program: Command, ctx: CommandContext): void {
  program
    .command('status')
    .description('Show nodes, the leader, queue depths by state and task, throughput and recent failures')
    .option('--window <minutes>', 'throughput window', intOption('--window', 1, 1440), 15)
    .option('--bucket <seconds>', 'throughput bucket', intOption('--bucket', 1, 86400), 60)
    .option('--failures <n>', 'recent failures to show', intOption('--failures', 0, 1000), 5)
    .option(
      '--node-timeout <ms>',
      'heartbeat age after which a node counts as dead',
      intOption('--node-timeout'),
    )
    .option(
      '--throughput-timeout <ms>',
      'stop counting throughput after this long (a large history), so status still answers',
      intOption('--throughput-timeout', 1, 600_000),
      STATUS_THROUGHPUT_TIMEOUT_MS,
    )
    .option('--json', 'print JSON (with --watch: one JSON document per line and refresh)')
    .option('--watch', 'refresh until Ctrl-C: in place on a terminal, else one view per refresh')
    .option(
      '--interval <ms>',
      'time between two refreshes of --watch',
      intOption('--interval', 100, 3_600_000),
      2000,
    )
    .option('--refreshes <n>', 'with --watch: stop after this many refreshes', intOption('--refreshes'))
    .action(
      async (
        opts: {
          window: number;
          bucket: number;
          failures: number;
          nodeTimeout?: number;
          throughputTimeout: number;
          json?: boolean;
          watch?: boolean;
          interval: number;
          refreshes?: number;
        },
        command: Command,
      ) => {
        const read = (pool: pg.Pool) =>
          clusterStats(pool, {
            windowMinutes: opts.window,
            bucketSeconds: Math.min(opts.bucket, opts.window * 60),
            failures: opts.failures,
            nodeTimeoutMs: opts.nodeTimeout,
            throughputTimeoutMs: opts.throughputTimeout,
          });
        if (!opts.watch && opts.refreshes !== undefined) {
          throw new CliError(EXIT.USAGE, '--refreshes applies to --watch only.');
        }
        if (!opts.watch) {
          const stats = await withPool(command.optsWithGlobals(), ctx.io, read);
          print(ctx.io, opts.json, stats, renderStatus);
          return;
        }
        await withPool(command.optsWithGlobals(), ctx.io, (pool) =>
          liveView(ctx.io, {
            read: () => read(pool),
            render: renderStatus,
            intervalMs: opts.interval,
            json: opts.json,
            refreshes: opts.refreshes,
            title: `taskmill status, every ${opts.interval / 1000} s (Ctrl-C to stop)`,
          }),
        );
      },
    );
}

export function renderStatus(s: ClusterStats): string {
  const byTask = new Map<string, Record<string, number>>();
  for (const d of s.depths) byTask.set(d.name, { ...byTask.get(d.name), [d.state]: d.count });
  const tp = s.throughput;
  const ended = tp.buckets.map((b) => b.completed + b.failed + b.cancelled + b.dead);
  const max = Math.max(0, ...ended);
  const spark = sparkly(ended, { minimum: 0, maximum: Math.max(1, max) });
  const windowMin = Math.round((tp.buckets.length * tp.bucketSeconds) / 60);
  const sum = (k: 'completed' | 'failed' | 'cancelled' | 'dead') => tp.buckets.reduce((a, b) => a + b[k], 0);
  const lines = [
    `leader: ${s.leader ? `${s.leader.nodeName ?? s.leader.nodeId} (lease until ${s.leader.expiresAt.toISOString()})` : 'none'}`,
    ...(s.leader
      ? []
      : [
          'warning: no node leads the planner, so ready tasks are not handed out; start a node with its ' +
            'planner enabled (not --no-planner). A failover takes at most the lease time (5 s by default).',
        ]),
    '',
    'nodes',
    s.nodes.length === 0
      ? '  (none registered)'
      : indent(
          table(
            [
              'name',
              'status',
              'leader',
              'in flight',
              'capacity',
              'held',
              'cpu %',
              'connections',
              'heartbeat',
            ],
            s.nodes.map((n) => [
              n.name,
              n.alive ? 'alive' : 'dead',
              n.leader ? 'yes' : '',
              n.inFlight,
              n.capacity,
              n.held,
              Math.round(n.cpu * 100),
              // In use of the budget, as of the last heartbeat; '-' for a node that does not report them.
              n.maxConnections === null ? '-' : `${n.connections}/${n.maxConnections}`,
              `${Math.max(0, Math.round((s.at.getTime() - n.heartbeatAt.getTime()) / 1000))} s ago`,
            ]),
          ),
        ),
    '',
    `queue: ${DEPTH_STATES.map((k) => `${k} ${s.totals[k]}`).join(', ')}`,
    byTask.size === 0
      ? '  (nothing pending)'
      : indent(
          table(
            ['task', ...DEPTH_STATES],
            [...byTask].map(([name, c]) => [name, ...DEPTH_STATES.map((k) => c[k] ?? 0)]),
          ),
        ),
    '',
    ...(tp.timedOut
      ? [
          'throughput: not counted, the history of the window is too large to count in time ' +
            '(use a smaller --window or a larger --throughput-timeout)',
        ]
      : [
          `throughput, last ${windowMin} min (${tp.bucketSeconds} s buckets): ${tp.perSecond.toFixed(2)} tasks/s`,
          `  ${spark}  max ${max} per bucket`,
          `  completed ${sum('completed')}, failed ${sum('failed')}, dead-lettered ${sum('dead')}, cancelled ${sum('cancelled')}`,
        ]),
  ];
  if (s.recentFailures.length > 0) {
    lines.push(
      '',
      'recent failures',
      indent(
        table(
          ['when', 'task', 'id', 'kind', 'error'],
          s.recentFailures.map((f) => [
            f.failedAt.toISOString(),
            f.name,
            f.id,
            f.state === 'dead' ? 'dead letter' : 'failed',
            (f.error ?? '').split('\n')[0].slice(0, 80),
          ]),
        ),
      ),
    );
  }
  return lines.join('\n');
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n');
}
