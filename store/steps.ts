/**
 * Checkpoints of durable handlers (tm_task_steps, migrations/009): finished steps, sleeps and event
 * waits, the suspension of an attempt on a wait, events and the planner's wake-up of waits ended by
 * time. The worker thread reads and writes a running task's steps (fenced by node and assignment), the
 * client sends events, the planner wakes sleepers; every decision is one SQL function.
 */
import type { Queryable } from './queryable.ts';

export type StepKind = 'done' | 'sleep' | 'wait' | 'event' | 'timeout';

/** A recorded step: its kind, its msgpack value (a step's result, an event's payload), its wake time. */
export interface StepRecord {
  kind: StepKind;
  result: Buffer | null;
  wakeAt: Date | null;
}

/** The steps recorded for a task, by name, and the database's time (what wake times compare with). */
export async function readSteps(
  db: Queryable,
  taskId: string,
): Promise<{ steps: Map<string, StepRecord>; now: Date }> {
  const { rows } = await db.query<{
    name: string | null;
    kind: StepKind | null;
    result: Buffer | null;
    wake_at: Date | null;
    now: Date;
  }>(
    `select s.name, s.kind, s.result, s.wake_at, now() as now
     from (select now()) n left join tm_task_steps s on s.task_id = $1`,
    [taskId],
  );
  const steps = new Map<string, StepRecord>();
  for (const r of rows) {
    if (r.name !== null) steps.set(r.name, { kind: r.kind!, result: r.result, wakeAt: r.wake_at });
  }
  return { steps, now: rows[0].now };
}

/** Which task run writes: the task, its node and assignment (the fence). */
export interface StepFence {
  taskId: string;
  nodeId: string;
  assignment: number;
}

/** Records a finished step (tm_step_save); false when the task is no longer this run's (fenced out). */
export async function saveStep(
  db: Queryable,
  fence: StepFence,
  name: string,
  result: Uint8Array | null,
): Promise<boolean> {
  const { rows } = await db.query<{ saved: boolean }>(`select tm_step_save($1, $2, $3, $4, $5) as saved`, [
    fence.taskId,
    fence.nodeId,
    fence.assignment,
    name,
    result && Buffer.from(result.buffer, result.byteOffset, result.byteLength),
  ]);
  return rows[0].saved;
}

/** A wait that ends an attempt: a sleep, or a wait for an event (timeoutMs null: none). */
export type Wait =
  { step: string; sleepMs: number } | { step: string; event: string; key: string; timeoutMs: number | null };

/** What tm_suspend made of the task: see migrations/009. */
export type Suspension = 'sleeping' | 'ready' | 'cancelled' | 'stale';

/** Ends the running attempt of a task on a wait (tm_suspend): one statement, fenced. */
export async function suspendTask(db: Queryable, fence: StepFence, wait: Wait): Promise<Suspension> {
  const event = 'event' in wait ? wait : undefined;
  const { rows } = await db.query<{ outcome: Suspension }>(
    `select tm_suspend($1, $2, $3, $4, $5, $6, $7, $8) as outcome`,
    [
      fence.taskId,
      fence.nodeId,
      fence.assignment,
      wait.step,
      'sleepMs' in wait ? wait.sleepMs : null,
      event?.event ?? null,
      event?.key ?? null,
      event?.timeoutMs ?? null,
    ],
  );
  return rows[0].outcome;
}

/** Sends an event (tm_send_event): the tasks waiting for (name, key) get the payload. Returns how many. */
export async function sendEvent(
  db: Queryable,
  name: string,
  key: string,
  payload: Uint8Array,
): Promise<number> {
  const { rows } = await db.query<{ woken: number }>(`select tm_send_event($1, $2, $3) as woken`, [
    name,
    key,
    Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
  ]);
  return rows[0].woken;
}

/** Wakes up to `limit` sleeping tasks whose wait ended by time (tm_wake_sleeping); returns how many. */
export async function wakeSleeping(db: Queryable, limit = 1_000): Promise<number> {
  const { rows } = await db.query<{ woken: number }>(`select tm_wake_sleeping($1) as woken`, [limit]);
  return rows[0].woken;
}
