/**
 * Signal handling of a node started with `handleSignals`: SIGINT or SIGTERM stops the node gracefully,
 * then ends the process (exit code 0, or 1 when the stop failed). Each signal is handled once.
 */
import type { Logger } from '../log/logger.ts';

export function stopOnSignals(stop: () => Promise<void>, log: Logger): void {
  const onSignal = (signal: NodeJS.Signals) => {
    log.info({ signal }, 'signal received, stopping');
    stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
}
