/**
 * Connections a run uses, as the server counts them: pg_stat_activity of the run's database, read every
 * `everyMs` on the harness's own pool (whose sessions, application_name `bench`, are left out), grouped
 * by application_name (taskmill-node, taskmill-listen, taskmill-worker, the workload's perf-handler...).
 *
 * States: idle -> sampling (start) -> stopped (stop, idempotent, returns the summary). Main thread of
 * the harness; the timer's reads never overlap.
 */
import type pg from 'pg';

export interface ConnectionSummary {
  samples: number;
  /** Most connections seen at once. */
  peak: number;
  /** Mean over the samples. */
  mean: number;
  /** The sample with the most connections, by application_name. */
  atPeak: Record<string, number>;
}

export class ConnectionSampler {
  private timer: NodeJS.Timeout | undefined;
  private reading: Promise<void> | undefined;
  private readonly counts: number[] = [];
  private atPeak: Record<string, number> = {};
  private stopped: Promise<ConnectionSummary> | undefined;

  constructor(
    private readonly db: Pick<pg.Pool, 'query'>,
    private readonly everyMs = 200,
  ) {}

  start(): void {
    if (this.timer || this.stopped) return;
    const tick = () => {
      this.reading = this.sample()
        .catch(() => {})
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.everyMs);
        });
    };
    tick();
  }

  stop(): Promise<ConnectionSummary> {
    this.stopped ??= (async () => {
      clearTimeout(this.timer);
      await this.reading;
      const n = this.counts.length;
      return {
        samples: n,
        peak: n === 0 ? 0 : Math.max(...this.counts),
        mean: n === 0 ? 0 : this.counts.reduce((a, b) => a + b, 0) / n,
        atPeak: this.atPeak,
      };
    })();
    return this.stopped;
  }

  private async sample(): Promise<void> {
    const { rows } = await this.db.query<{ app: string; n: number }>(
      `select coalesce(nullif(application_name, ''), '(none)') as app, count(*)::int as n
       from pg_stat_activity
       where datname = current_database() and application_name <> 'bench' and pid <> pg_backend_pid()
       group by 1`,
    );
    const total = rows.reduce((s, r) => s + r.n, 0);
    if (this.counts.length === 0 || total > Math.max(...this.counts)) {
      this.atPeak = Object.fromEntries(rows.map((r) => [r.app, r.n]));
    }
    this.counts.push(total);
  }
}
