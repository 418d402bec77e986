/**
 * The ceiling: taskmill's own claim and completion statements (store/assignments.ts CLAIM_READY_TASKS,
 * store/tasks.ts completeTasks) driven by plain loops, with no planner, node, threads or
 * completer around them. Each loop claims a batch with FOR UPDATE SKIP LOCKED, marks it running and
 * completes it (delete from the hot table, insert into history) in the next statement.
 * Latency: a LISTEN on the planner channel triggers the claim, the "handler" starts when it returns.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { CLAIM_READY_TASKS } from '../../store/assignments.ts';
import { PLANNER_CHANNEL } from '../../store/channels.ts';
import { completeTasks } from '../../store/tasks.ts';
import { TaskmillClient } from '../../index.ts';
import { analyze } from '../bench-database.ts';
import { preInsert } from '../flat/measure.ts';
import { preciseNow, summarizeLatencies } from '../latency-histogram.ts';
import { benchNoop } from '../tasks/definitions.ts';
import { burnDownFigures, deferred, type Peer } from './peer.ts';

const CLAIM_AND_START = `with claimed as (${CLAIM_READY_TASKS})
  update tm_tasks t set state = 'running', node_id = $4, assignment = t.assignment + 1, assigned_at = now()
  from claimed where t.id = claimed.id
  returning t.id, t.assignment`;

export function bareSqlPeer(options: { loops: number; batch: number }): Peer {
  return {
    id: 'bare-sql',
    label: `bare SQL (${options.loops} loops x batch ${options.batch})`,
    settings: { ...options },
    usesTaskmillSchema: true,
    notes: ['taskmill statements without the runtime: the ceiling, not a usable system'],
    async burnDown(db, tasks) {
      const t = performance.now();
      await preInsert(db.pool, benchNoop, tasks);
      const insertSeconds = (performance.now() - t) / 1000;
      await analyze(db.pool);
      const pool = new pg.Pool({ connectionString: db.url, max: options.loops });
      try {
        // Open the connections before the clock starts.
        await Promise.all(Array.from({ length: options.loops }, () => pool.query('select 1')));
        const nodeId = randomUUID();
        const t0 = performance.now();
        await Promise.all(
          Array.from({ length: options.loops }, async () => {
            for (;;) {
              const claimed = await claimBatch(pool, nodeId, options.batch);
              if (claimed.length === 0) return;
              await complete(pool, nodeId, claimed);
            }
          }),
        );
        const t1 = performance.now();
        const { rows } = await db.pool.query<{ n: number }>('select count(*)::int as n from tm_history');
        if (rows[0].n !== tasks) throw new Error(`bare SQL completed ${rows[0].n} of ${tasks}`);
        return burnDownFigures(tasks, t0, undefined, t1, insertSeconds);
      } finally {
        await pool.end();
      }
    },
    async latency(db, samples) {
      const pool = new pg.Pool({ connectionString: db.url, max: 3 });
      const listener = new pg.Client({ connectionString: db.url });
      await listener.connect();
      try {
        const nodeId = randomUUID();
        let started = deferred<number>();
        listener.on('notification', () => {
          void (async () => {
            const claimed = await claimBatch(pool, nodeId, 1);
            if (claimed.length === 0) return;
            started.resolve(preciseNow());
            await complete(pool, nodeId, claimed);
          })();
        });
        await listener.query(`listen ${PLANNER_CHANNEL}`);
        const client = new TaskmillClient({ pool });
        const values: number[] = [];
        for (let i = 0; i < samples + 10; i++) {
          started = deferred<number>();
          const t = preciseNow();
          await client.schedule(benchNoop);
          const s = await started.promise;
          if (i >= 10) values.push(s - t);
        }
        return summarizeLatencies(values);
      } finally {
        await listener.end();
        await pool.end();
      }
    },
  };
}

async function claimBatch(pool: pg.Pool, nodeId: string, batch: number) {
  const { rows } = await pool.query<{ id: string; assignment: number }>(CLAIM_AND_START, [
    batch,
    [benchNoop.name],
    [],
    nodeId,
  ]);
  return rows;
}

async function complete(pool: pg.Pool, nodeId: string, claimed: { id: string; assignment: number }[]) {
  await completeTasks(
    pool,
    nodeId,
    claimed.map((task) => ({
      kind: 'done' as const,
      task,
      result: null,
      children: [],
      joinMessages: [],
    })),
  );
}
