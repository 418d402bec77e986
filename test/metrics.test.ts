/**
 * The metrics of node/metrics.ts added for operators (docs/observability.md): schedule-to-start,
 * completer batches and flush times, pg pool connections, tasks waiting per key (top keys, leader only,
 * read at an interval), leader changes; and the Grafana dashboard of docs/, whose every query must name
 * metrics this exporter exports.
 */
import { readFileSync } from 'node:fs';
import { parser } from '@prometheus-io/lezer-promql';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineTask, type TaskmillNode } from '../index.ts';
import { TaskmillMetrics } from '../node/metrics.ts';
import { createLogger } from '../log/logger.ts';
import type { FlushResult } from '../node/completer.ts';
import { echo, noop } from './fixtures/definitions.ts';
import { insertTask } from './helpers/factory.ts';
import { until, useTestDatabase, waitForTasks } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const silent = createLogger('silent');
const db = useTestDatabase();
/** Leads the cluster first; runs `noop`. */
let leader: TaskmillNode;
/** Runs `echo`; leads once `leader` stopped. */
let follower: TaskmillNode;
const exporters: TaskmillMetrics[] = [];
/** No node runs it: its tasks stay waiting, for the per-key gauge. */
const parked = defineTask({ name: 'parked', handler: new URL('./fixtures/noop.ts', import.meta.url) });

function exporter(options: ConstructorParameters<typeof TaskmillMetrics>[0] = {}): TaskmillMetrics {
  const metrics = new TaskmillMetrics({ db: db.pool, processMetrics: false, log: silent, ...options });
  exporters.push(metrics);
  return metrics;
}

function observing(node: TaskmillNode, options: ConstructorParameters<typeof TaskmillMetrics>[0]) {
  const metrics = exporter(options);
  metrics.observe(node);
  return metrics;
}

beforeAll(async () => {
  leader = await startTestNode(db.url, { tasks: [noop] });
  await until(() => leader.isLeader);
  follower = await startTestNode(db.url, { tasks: [echo], planner: { leaseTtlMs: 600 } });
});
afterAll(async () => {
  for (const m of exporters) m.close();
  await stopAllNodes();
});

type Values = MetricValue<string>[];
async function scrape(metrics: TaskmillMetrics): Promise<Map<string, Values>> {
  const all = (await metrics.registry.getMetricsAsJSON()) as MetricObjectWithValues<MetricValue<string>>[];
  return new Map(all.map((m) => [m.name, m.values]));
}
/** The value of the series of `name` whose labels include `labels` (metricName picks _bucket/_sum/_count). */
function valueOf(values: Values | undefined, labels: Record<string, string | number>, metricName?: string) {
  return values?.find(
    (v) =>
      (metricName === undefined || (v as { metricName?: string }).metricName === metricName) &&
      Object.entries(labels).every(([k, want]) => v.labels[k] === want),
  )?.value;
}

const keys = (m: Map<string, Values>) =>
  (m.get('taskmill_key_waiting_tasks') ?? [])
    .map((v) => `${v.labels.kind} ${v.labels.group}/${v.labels.key} ${v.value}`)
    .sort();

describe('node metrics', () => {
  it('time schedule-to-start from the due time, and count completer batches and flush times', async () => {
    const metrics = exporter();
    metrics.observe(leader);
    const written = new Set<string>();
    let onWritten = () => {};
    const onFlush = (flush: FlushResult) => {
      for (const a of flush.accepted) written.add(a.id);
      onWritten();
    };
    leader.on('flush', onFlush);
    // Due a minute ago: its schedule-to-start is at least 60 s.
    const late = await insertTask(db.pool, { name: 'noop', notBeforeInMs: -60_000 });
    const ids = await leader.client.scheduleMany(
      noop,
      Array.from({ length: 20 }, () => ({})),
    );
    const all = [late.id, ...ids];
    await waitForTasks(leader.client, all);
    await new Promise<void>((resolve) => {
      onWritten = () => all.every((id) => written.has(id)) && resolve();
      onWritten();
    }).finally(() => leader.off('flush', onFlush));

    const m = await scrape(metrics);
    const start = m.get('taskmill_task_schedule_to_start_seconds');
    expect(valueOf(start, { task: 'noop' }, 'taskmill_task_schedule_to_start_seconds_count')).toBe(21);
    expect(
      valueOf(start, { task: 'noop' }, 'taskmill_task_schedule_to_start_seconds_sum'),
    ).toBeGreaterThanOrEqual(60);
    // The late one alone is above 30 s.
    expect(valueOf(start, { task: 'noop', le: 30 }, 'taskmill_task_schedule_to_start_seconds_bucket')).toBe(
      20,
    );

    const batches = m.get('taskmill_completer_batch_size');
    const flushes = valueOf(batches, {}, 'taskmill_completer_batch_size_count')!;
    expect(flushes).toBeGreaterThanOrEqual(1);
    expect(valueOf(batches, {}, 'taskmill_completer_batch_size_sum')).toBe(21);
    const times = m.get('taskmill_completer_flush_seconds');
    expect(valueOf(times, {}, 'taskmill_completer_flush_seconds_count')).toBe(flushes);
    expect(valueOf(times, {}, 'taskmill_completer_flush_seconds_sum')).toBeGreaterThan(0);
  });

  it("report each node's pg pool and the exporter's own", async () => {
    const metrics = exporter();
    metrics.observe(leader);
    const m = await scrape(metrics);
    const connections = m.get('taskmill_db_pool_connections');
    // The pools keep working while the scrape reads them: check what must hold at any instant.
    const total = valueOf(connections, { node: leader.name, pool: 'node', state: 'total' })!;
    const idle = valueOf(connections, { node: leader.name, pool: 'node', state: 'idle' })!;
    expect(total).toBeGreaterThan(0);
    expect(total).toBeLessThanOrEqual(leader.client.pool.options.max!);
    expect(idle).toBeLessThanOrEqual(total);
    expect(valueOf(connections, { node: '', pool: 'exporter', state: 'total' })).toBeGreaterThan(0);
    expect(
      valueOf(m.get('taskmill_db_pool_waiting_clients'), { node: leader.name, pool: 'node' }),
    ).toBeGreaterThanOrEqual(0);
  });
});

describe('tasks waiting per key', () => {
  beforeAll(async () => {
    // Key i holds i due tasks (1..12); a delayed task is not waiting yet.
    for (let i = 1; i <= 12; i++) {
      await leader.client.scheduleMany(
        parked,
        Array.from({ length: i }, () => ({ affinityGroup: 'g', affinity: `a${i}` })),
      );
      await leader.client.scheduleMany(
        parked,
        Array.from({ length: i }, () => ({ concurrencyKey: `c${i}` })),
      );
    }
    await leader.client.scheduleMany(
      parked,
      Array.from({ length: 50 }, () => ({ affinity: 'later', delayMs: 3_600_000 })),
    );
  });

  it('are exported for the top keys of each kind by the leader', async () => {
    const m = await scrape(observing(leader, { topKeys: 3, keyStatsIntervalMs: 0 }));
    expect(keys(m)).toEqual(
      [
        'affinity g/a10 10',
        'affinity g/a11 11',
        'affinity g/a12 12',
        'concurrency /c10 10',
        'concurrency /c11 11',
        'concurrency /c12 12',
      ].sort(),
    );
  });

  it('are read again only after keyStatsIntervalMs', async () => {
    const cached = observing(leader, { topKeys: 1, keyStatsIntervalMs: 3_600_000 });
    const fresh = observing(leader, { topKeys: 1, keyStatsIntervalMs: 0 });
    expect(keys(await scrape(cached))).toEqual(['affinity g/a12 12', 'concurrency /c12 12']);
    await leader.client.schedule(parked, { affinityGroup: 'g', affinity: 'a12' });
    expect(keys(await scrape(cached))).toEqual(['affinity g/a12 12', 'concurrency /c12 12']);
    expect(keys(await scrape(fresh))).toEqual(['affinity g/a12 13', 'concurrency /c12 12']);
  });

  it('are not exported by a process whose nodes do not lead', async () => {
    const m = await scrape(observing(follower, { keyStatsIntervalMs: 0 }));
    expect(keys(m)).toEqual([]);
  });
});

describe('exporter configuration', () => {
  it('refuses a topKeys or keyStatsIntervalMs out of range', () => {
    for (const options of [
      { topKeys: 0 },
      { topKeys: 1.5 },
      { topKeys: 1_001 },
      { keyStatsIntervalMs: -1 },
      { keyStatsIntervalMs: Number.NaN },
    ])
      expect(() => new TaskmillMetrics(options)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
  });
});

describe('leader changes', () => {
  it('are counted on the node that takes the lease over, which then exports the per-key gauge', async () => {
    const metrics = observing(follower, { keyStatsIntervalMs: 0 });
    await leader.stop();
    await until(() => follower.isLeader);
    const m = await scrape(metrics);
    expect(valueOf(m.get('taskmill_leader_changes_total'), { node: follower.name })).toBe(1);
    expect(keys(m).length).toBeGreaterThan(0);
  });
});

/** Metric names a series of each registered metric may carry in PromQL. */
function exportedSeriesNames(metrics: TaskmillMetrics): Set<string> {
  const names = new Set<string>();
  for (const metric of metrics.registry.getMetricsAsArray()) {
    const { name, type } = metric as unknown as { name: string; type: string };
    names.add(name);
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(name + suffix);
  }
  return names;
}

/** The metric names a PromQL expression selects, parsed by Prometheus's own grammar. */
function selectedMetrics(expr: string): string[] {
  // Grafana's interval variables are not PromQL; any duration parses the same way.
  const promql = expr.replaceAll('$__rate_interval', '5m');
  const tree = parser.parse(promql);
  const names: string[] = [];
  const cursor = tree.cursor();
  do {
    if (cursor.type.isError) throw new Error(`${expr}: does not parse at ${cursor.from}`);
    if (cursor.name === 'Identifier' && cursor.node.parent?.name === 'VectorSelector')
      names.push(promql.slice(cursor.from, cursor.to));
  } while (cursor.next());
  return names;
}

describe('the Grafana dashboard (docs/grafana-dashboard.json)', () => {
  const dashboard = JSON.parse(
    readFileSync(new URL('../docs/grafana-dashboard.json', import.meta.url), 'utf8'),
  ) as {
    panels: { title: string; targets?: { expr: string }[] }[];
  };
  const queries = dashboard.panels.flatMap((p) =>
    (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })),
  );

  it('queries only metrics the exporter exports', () => {
    const exported = exportedSeriesNames(exporter({ processMetrics: true }));
    expect(queries.length).toBeGreaterThan(10);
    const unknown = queries.flatMap(({ panel, expr }) => {
      const names = selectedMetrics(expr);
      expect(names.length, `${panel}: ${expr}`).toBeGreaterThan(0);
      return names.filter((n) => !exported.has(n)).map((n) => `${panel}: ${n}`);
    });
    expect(unknown).toEqual([]);
  });

  it('shows every metric added for operators', () => {
    const used = new Set(
      queries.flatMap(({ expr }) => selectedMetrics(expr)).map((n) => n.replace(/_(bucket|sum|count)$/, '')),
    );
    for (const name of [
      'taskmill_task_schedule_to_start_seconds',
      'taskmill_key_waiting_tasks',
      'taskmill_db_pool_connections',
      'taskmill_db_pool_waiting_clients',
      'taskmill_completer_batch_size',
      'taskmill_completer_flush_seconds',
      'taskmill_leader_changes_total',
    ])
      expect(used).toContain(name);
  });

  it('finds a metric the exporter does not have', () => {
    expect(
      selectedMetrics('sum(rate(taskmill_nothing_total[$__rate_interval])) / taskmill_node_leader'),
    ).toEqual(['taskmill_nothing_total', 'taskmill_node_leader']);
    expect(() => selectedMetrics('sum(rate(')).toThrow(/does not parse/);
  });
});
