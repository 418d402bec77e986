/**
 * Progress of a long run (done of total, rate, ETA) as a bar on one line of a terminal (cli-progress):
 * benchmarks on stderr, `taskmill workflow wait`. Drawn only on a terminal and never when CI is set
 * (log/terminal.ts), so logs and CI output stay clean. Main thread only.
 */
import cliProgress from 'cli-progress';
import { wantsLiveOutput } from './terminal.ts';

export interface ProgressOptions {
  label: string;
  /** Expected total; without it the line shows the count and the rate, no bar and no ETA. */
  total?: number;
  /** Where the bar is drawn (default: stderr). */
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
  /** Force on or off (default: the stream is a terminal and CI is not set). */
  enabled?: boolean;
  /** Least time between two redraws (default 250 ms). */
  everyMs?: number;
}

export class Progress {
  private readonly bar: cliProgress.SingleBar | undefined;
  private readonly started = performance.now();
  private begun = false;

  constructor(private readonly options: ProgressOptions) {
    const stream = options.stream ?? process.stderr;
    if (!(options.enabled ?? wantsLiveOutput(stream))) return;
    const counted = options.total === undefined ? '{value}' : '{bar} {value}/{total}';
    const eta = options.total === undefined ? '' : '  ETA {eta}s';
    this.bar = new cliProgress.SingleBar(
      {
        format: `{label}: ${counted}  {rate}/s${eta}`,
        stream,
        fps: 1000 / (options.everyMs ?? 250),
        clearOnComplete: true,
        hideCursor: false,
        noTTYOutput: options.enabled === true,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  /** Shows `done` (and a new total, when the expected total grew). */
  update(done: number, total?: number): void {
    if (!this.bar) return;
    const seconds = (performance.now() - this.started) / 1000;
    const payload = { label: this.options.label, rate: Math.round(seconds > 0 ? done / seconds : 0) };
    if (!this.begun) {
      this.begun = true;
      this.bar.start(total ?? this.options.total ?? 0, done, payload);
      return;
    }
    if (total !== undefined) this.bar.setTotal(total);
    this.bar.update(done, payload);
  }

  /** Clears the line. */
  end(): void {
    if (this.begun) this.bar?.stop();
  }
}

/** Whether progress goes to stderr (benchmark status lines use it too). */
export function progressWanted(): boolean {
  return wantsLiveOutput(process.stderr);
}
