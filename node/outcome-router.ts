/**
 * What becomes of each outcome on a node: settle() (task/settle.ts) decides it under the task's
 * definition, then the completer commits it (a success, a failed attempt, or an exactly-once outcome
 * its thread committed, which the completer only reports), or the task is handed back (its node is
 * stopping; the node's stop releases it). A task cancelled before it started takes the same path, as
 * an attempt failed by its cancellation.
 *
 * Stateless but for the ids handed back, written and read by the node's main thread.
 */
import type { Logger } from '../log/logger.ts';
import type { Outcome, OutcomeTask } from '../task/outcome.ts';
import { settle, type SettleDefinition } from '../task/settle.ts';
import type { Completer } from './completer.ts';

export interface OutcomeRouterOptions {
  definitionOf: (name: string) => SettleDefinition | undefined;
  completer: Pick<Completer, 'add'>;
  log: Logger;
  now?: () => number;
}

export class OutcomeRouter {
  /** Tasks whose run the node's stop aborted: handed back with the node's release, uncharged. */
  readonly handedBack: string[] = [];

  constructor(private readonly options: OutcomeRouterOptions) {}

  route(outcome: Outcome): void {
    const { task } = outcome;
    const now = this.options.now?.() ?? Date.now();
    const settlement = settle(outcome, this.options.definitionOf(task.name), task, now);
    if (settlement.action === 'hand-back') {
      // A run lost with its task (taken back from this node) has nothing to hand back.
      if (outcome.reason !== 'lost') this.handedBack.push(task.id);
      return;
    }
    if (settlement.action === 'fail' && outcome.kind === 'failed') {
      this.options.log.debug(
        {
          task: task.id,
          name: task.name,
          error: outcome.error.message,
          retryDelayMs: settlement.retryDelayMs,
        },
        'task failed',
      );
    }
    this.options.completer.add(outcome, settlement);
  }

  /** A task whose cancellation arrived before it started: never retried, recorded cancelled. */
  cancelledBeforeStart(task: OutcomeTask): void {
    this.route({
      kind: 'failed',
      task,
      error: { name: 'TaskmillError', code: 'TASK_CANCELLED', message: 'cancelled before it started' },
      stopRetry: false,
      reason: 'cancel',
    });
  }
}
