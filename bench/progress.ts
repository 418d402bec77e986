/**
 * Progress of a long run (done, rate, ETA) on one rewritten line of stderr. Only on a TTY and never
 * when CI is set, so logs and CI output stay clean. Main thread only.
 */
export interface ProgressOptions {
  label: string;
  /** Expected total; without it no ETA is shown. */
  total?: number;
  /** Force on or off (default: stderr is a TTY and CI is not set). */
  enabled?: boolean;
  everyMs?: number;
}

export class Progress {
  private readonly enabled: boolean;
  private readonly started = performance.now();
  private last = 0;
  private shown = false;

  constructor(private readonly options: ProgressOptions) {
    this.enabled = options.enabled ?? progressWanted();
  }

  update(done: number): void {
    if (!this.enabled) return;
    const now = performance.now();
    if (now - this.last < (this.options.everyMs ?? 250)) return;
    this.last = now;
    const seconds = (now - this.started) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    const { total } = this.options;
    const parts = [`${this.options.label}: ${done}${total ? `/${total}` : ''}`, `${Math.round(rate)}/s`];
    if (total && rate > 0) parts.push(`ETA ${Math.max(0, (total - done) / rate).toFixed(0)} s`);
    process.stderr.write(`\r${parts.join('  ')}\u001b[K`);
    this.shown = true;
  }

  /** Clears the line. */
  end(): void {
    if (this.shown) process.stderr.write('\r\u001b[K');
    this.shown = false;
  }
}

export function progressWanted(): boolean {
  const ci = process.env.CI;
  return Boolean(process.stderr.isTTY) && (ci === undefined || ci === '' || ci === 'false' || ci === '0');
}
