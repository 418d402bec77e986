import { expect, it } from 'vitest';
import { releaseDanglingWaits } from '../store/waits.ts';
import { count, useTestDatabase } from './helpers/database.ts';
import { insertTask } from './helpers/factory.ts';

const db = useTestDatabase();

it('settles waits whose target vanished without tm_after_end: joins released, dependents failed', async () => {
  const gone = await insertTask(db.pool, { state: 'ready' });
  const completed = await insertTask(db.pool, { state: 'ready' });
  const join = await insertTask(db.pool, { state: 'waiting' });
  const dependent = await insertTask(db.pool, { state: 'waiting' });
  const happy = await insertTask(db.pool, { state: 'waiting' });
  await db.pool.query(
    `insert into tm_task_waits (task_id, waits_for, kind) values ($1, $2, 'j'), ($3, $2, 'd'), ($4, $5, 'd')`,
    [join.id, gone.id, dependent.id, happy.id, completed.id],
  );
  // Both targets leave the hot table behind tm_after_end's back; one of them completed.
  await db.pool.query(`delete from tm_tasks where id = any($1)`, [[gone.id, completed.id]]);
  await db.pool.query(
    `insert into tm_history (id, name, workflow_id, state, attempts, created_at) values ($1, 'noop', $2, 'completed', 1, now())`,
    [completed.id, completed.workflowId],
  );
  expect(await releaseDanglingWaits(db.pool)).toBe(2);
  const state = async (id: string) =>
    (
      await db.pool.query(
        `select state from tm_tasks where id = $1 union all select state from tm_history where id = $1`,
        [id],
      )
    ).rows[0]?.state;
  expect(await state(join.id)).toBe('ready');
  expect(await state(happy.id)).toBe('ready');
  expect(await state(dependent.id)).toBe('failed');
  expect(await count(db.pool, `select count(*) from tm_task_waits`)).toBe(0);
  expect(await releaseDanglingWaits(db.pool)).toBe(0);
});

it('a planning pass promotes a waiting task left with nothing to wait for (two enders that missed each other)', async () => {
  const { Planner } = await import('../planner/planner.ts');
  const orphan = await insertTask(db.pool, { state: 'waiting' });
  const stillWaiting = await insertTask(db.pool, { state: 'waiting' });
  const target = await insertTask(db.pool, { state: 'ready', notBeforeInMs: 60_000 });
  await db.pool.query(`insert into tm_task_waits (task_id, waits_for, kind) values ($1, $2, 'j')`, [
    stillWaiting.id,
    target.id,
  ]);
  const planner = new Planner({
    db: db.pool,
    isLeader: () => true,
    onError: (e) => {
      throw e;
    },
  });
  await planner.runOnce();
  const state = async (id: string) =>
    (await db.pool.query(`select state from tm_tasks where id = $1`, [id])).rows[0]?.state;
  expect(await state(orphan.id)).toBe('ready');
  expect(await state(stillWaiting.id)).toBe('waiting');
});
