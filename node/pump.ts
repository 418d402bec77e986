/**
 * The pump of a node: moves tasks from the mailboxes to the dispatcher, never more than
 * `maxParallelTasksInNode` in flight, and none while the completer is saturated (backpressure: it
 * resumes once the completer drained). Requests are coalesced into one pass per turn of the event loop.
 *
 * States: idle -> scheduled (a pass is queued with setImmediate) -> idle. Main thread only.
 */
import type { Completer } from './completer.ts';
import type { Dispatcher } from './dispatcher.ts';
import type { Mailboxes } from './mailboxes.ts';
import type { FetchedTask } from '../store/tasks.ts';

export interface PumpOptions {
  mailboxes: Mailboxes<FetchedTask>;
  dispatcher: Pick<Dispatcher, 'inFlight' | 'dispatch'>;
  completer: Pick<Completer, 'saturated' | 'whenDrained'>;
  maxParallelTasksInNode: number;
}

export class Pump {
  private scheduled = false;

  constructor(private readonly options: PumpOptions) {}

  /** Asks for a dispatch pass (coalesced with the other requests of this turn). */
  pump(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.dispatchReady();
    });
  }

  private dispatchReady(): void {
    const { mailboxes, dispatcher, completer } = this.options;
    if (mailboxes.size === 0) return;
    if (completer.saturated) {
      void completer.whenDrained().then(() => this.pump());
      return;
    }
    const room = this.options.maxParallelTasksInNode - dispatcher.inFlight;
    if (room <= 0) return;
    const tasks = mailboxes.take(room);
    if (tasks.length > 0) dispatcher.dispatch(tasks);
  }
}
