/** What a store function runs its statements on: a pool, a checked-out client or a transaction's client. */
import type pg from 'pg';
import { isUndefinedTable, notMigratedError } from '../task/errors.ts';

export type Queryable = Pick<pg.ClientBase, 'query'>;

/**
 * One statement of an operator's read: on a database taskmill never migrated it fails with
 * NOT_MIGRATED (saying what to run) instead of the server's "relation does not exist".
 */
export async function readQuery<R extends object>(
  db: Queryable,
  sql: string,
  params: unknown[] = [],
): Promise<pg.QueryResult<R>> {
  try {
    return await db.query<R>(sql, params);
  } catch (error) {
    throw isUndefinedTable(error) ? notMigratedError(error) : error;
  }
}
