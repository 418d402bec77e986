/** What a store function runs its statements on: a pool, a checked-out client or a transaction's client. */
import type pg from 'pg';

export type Queryable = Pick<pg.ClientBase, 'query'>;
