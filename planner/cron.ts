/**
 * Cron: a task definition with a `cron` option gets one task instance per slot of its expression
 * (croner: 5 to 7 fields, seconds supported, named time zone), created by the planner leader on its
 * own loop.
 *
 * One instance per slot, whatever the number of nodes or failovers: tm_cron keeps per task the last
 * slot handled (`last_slot`). A pass moves it forward with a compare-and-set
 * (`where last_slot < <first slot this pass handles>`) in the statement that inserts the instances, so
 * two leaders racing, or a pass repeated after a failover, can never handle a slot twice: the loser's
 * update matches no row and inserts nothing. `last_slot` only moves forward.
 *
 * Slots due at a pass (last_slot < slot <= now):
 *   - at most `missedAfterMs` old (default 30 s, longer than a leader failover): one instance each,
 *     oldest first, so a failover neither duplicates nor drops a slot;
 *   - older: missed (the cluster had no leader). `missed: 'run-once'` (default): one catch-up instance
 *     for the most recent missed slot; `'skip'`: none. Either way they are then handled.
 * An instance's message is a CronMessage. "now" is the database clock unless a clock is injected.
 *
 * At most one instance waits per cron: while the last instance a pass created has not started (still
 * `ready` with no failed attempt: no node has taken it, e.g. no live node runs the task), due slots
 * create nothing and count as missed. `run-once`: the waiting instance stands for them (its message
 * becomes the most recent held-back slot, `catchUp: true`), so it runs once when a node takes it;
 * `'skip'`: it keeps its own slot. last_slot moves past the held-back slots with the same
 * compare-and-set, in a statement that also locks the waiting instance, so an instance the planner
 * claims meanwhile is seen as started and the slots get instances as usual.
 *
 * States: stopped -> running -> stopped; passes do nothing unless this node leads.
 * tm_cron rows are written by registering nodes (definition columns) and by the leader (last_slot).
 */
import { Cron as CronPattern } from 'croner';
import type pg from 'pg';
import { z } from 'zod';
import { Loop, type Timers } from '../runtime/loop.ts';
import { newTask, type NewTask } from '../runtime/schedule-context.ts';
import type { TaskDefinition } from '../runtime/task-definition.ts';
import { INSERT_COLUMNS, PLANNER_CHANNEL, UNNEST_NEW_TASKS, insertParams } from '../runtime/task-store.ts';

export const CRON_DEFAULTS = {
  timezone: 'UTC',
  missed: 'run-once' as CronMissedPolicy,
  /** A slot older than this when the leader first sees it counts as missed. */
  missedAfterMs: 30_000,
  /** Longest sleep between passes: how soon a cron registered by another node is picked up. */
  maxSleepMs: 5_000,
  /** Sleep between passes while this node does not lead (leadership changes also wake the loop). */
  followerSleepMs: 1_000,
  /** Most instances one pass creates for one cron; the next pass, at once, continues. */
  maxInstancesPerPass: 1_000,
};

export type CronMissedPolicy = 'run-once' | 'skip';

export const cronOptionSchema = z
  .object({
    /** 5 fields (minute precision), 6 (leading seconds) or 7 (trailing year); `@daily` style nicknames. */
    expression: z.string().min(1),
    /** IANA time zone the expression is read in (default UTC, so every node computes the same slots). */
    timezone: z.string().min(1).default(CRON_DEFAULTS.timezone),
    /** What to do with slots missed while the cluster had no leader for longer than missedAfterMs. */
    missed: z.enum(['run-once', 'skip']).default(CRON_DEFAULTS.missed),
  })
  .strict()
  .superRefine((option, ctx) => {
    const problem = cronProblem(option.expression, option.timezone);
    // Reported at the option that is wrong: a bad time zone is not a bad expression.
    const path = problem && timezoneProblem(option.timezone) ? ['timezone'] : ['expression'];
    if (problem) ctx.addIssue({ code: 'custom', message: problem, path });
  });

export type CronOptionInput = z.input<typeof cronOptionSchema>;
export type CronOption = z.output<typeof cronOptionSchema>;

/** The message of every cron instance. */
export interface CronMessage {
  /** The slot this instance stands for. */
  slot: Date;
  /** True for the one instance standing for slots missed while the cluster had no leader. */
  catchUp: boolean;
}

/** Why a time zone cannot be used, or undefined when it can. */
function timezoneProblem(timezone: string): string | undefined {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: timezone });
    return undefined;
  } catch {
    return `unknown time zone ${JSON.stringify(timezone)}: use an IANA name such as "Europe/Paris" or "UTC"`;
  }
}

/** Why an expression cannot be used, or undefined when it can. */
export function cronProblem(expression: string, timezone: string): string | undefined {
  const zone = timezoneProblem(timezone);
  if (zone) return zone;
  let pattern: CronPattern;
  try {
    pattern = schedule(expression, timezone);
  } catch (error) {
    return (
      `invalid cron expression ${JSON.stringify(expression)} (${(error as Error).message}); ` +
      'use 5 fields (m h dom mon dow), 6 with leading seconds, or 7 with a trailing year'
    );
  }
  if (!pattern.nextRun()) return `cron expression ${JSON.stringify(expression)} never fires after now`;
  return undefined;
}

const patterns = new Map<string, CronPattern>();

/** A parsed expression (no timer is started: croner only schedules when given a callback). */
function schedule(expression: string, timezone: string): CronPattern {
  const key = `${timezone}\u0000${expression}`;
  let pattern = patterns.get(key);
  if (!pattern) {
    pattern = new CronPattern(expression, { timezone, paused: true });
    patterns.set(key, pattern);
  }
  return pattern;
}

export interface SlotPlan {
  /** Instances to create, oldest first. */
  create: CronMessage[];
  /** First due slot: the compare-and-set requires last_slot to be before it. */
  firstDue: Date;
  /** New last_slot. */
  handledUpTo: Date;
  /** Whether some slots were missed (older than missedAfterMs). */
  missed: boolean;
  /** More slots are due than one pass creates. */
  more: boolean;
}

/** Pure: which instances a pass creates for one cron, or undefined when no slot is due. */
export function planSlots(
  option: Pick<CronOption, 'expression' | 'timezone' | 'missed'>,
  lastSlot: Date,
  now: Date,
  missedAfterMs: number = CRON_DEFAULTS.missedAfterMs,
): SlotPlan | undefined {
  const pattern = schedule(option.expression, option.timezone);
  const firstDue = pattern.nextRun(lastSlot);
  if (!firstDue || firstDue > now) return undefined;
  const create: CronMessage[] = [];
  const cutoff = new Date(now.getTime() - missedAfterMs);
  let cursor = lastSlot;
  let missed = false;
  if (firstDue < cutoff) {
    missed = true;
    // The most recent slot strictly before the cutoff (croner: previousRuns excludes the reference).
    const latestMissed = pattern.previousRuns(1, cutoff)[0] ?? firstDue;
    cursor = latestMissed < firstDue ? firstDue : latestMissed;
    if (option.missed === 'run-once') create.push({ slot: cursor, catchUp: true });
  }
  let slot = pattern.nextRun(cursor);
  for (
    ;
    slot && slot <= now && create.length < CRON_DEFAULTS.maxInstancesPerPass;
    slot = pattern.nextRun(slot)
  ) {
    create.push({ slot, catchUp: false });
    cursor = slot;
  }
  return { create, firstDue, handledUpTo: cursor, missed, more: !!slot && slot <= now };
}

/**
 * Records the cron options of the definitions a node registers (after tm_task_defs). A new cron starts
 * at `at` (default: database now): its first slot is the first one after it. Re-registering keeps
 * `last_slot`; a definition registered without cron removes its row.
 */
export async function registerCronTasks(
  db: Pick<pg.Pool, 'query'>,
  defs: readonly TaskDefinition[],
  at?: Date,
): Promise<void> {
  const crons = defs.filter((d) => d.cron);
  const plain = defs.filter((d) => !d.cron).map((d) => d.name);
  if (crons.length > 0) {
    await db.query(
      `insert into tm_cron (name, expression, timezone, missed, last_slot)
       select u.name, u.expression, u.timezone, u.missed, date_trunc('milliseconds', coalesce($5, now()))
       from unnest($1::text[], $2::text[], $3::text[], $4::text[]) as u(name, expression, timezone, missed)
       on conflict (name) do update set expression = excluded.expression, timezone = excluded.timezone,
         missed = excluded.missed, updated_at = now()`,
      [
        crons.map((d) => d.name),
        crons.map((d) => d.cron!.expression),
        crons.map((d) => d.cron!.timezone),
        crons.map((d) => d.cron!.missed),
        at ?? null,
      ],
    );
  }
  if (plain.length > 0) await db.query(`delete from tm_cron where name = any($1::text[])`, [plain]);
}

export interface CronPassResult {
  leader: boolean;
  /** Instances created (catch-up ones included). */
  created: number;
  /** Catch-up instances created for missed slots (`run-once`). */
  caughtUp: number;
  /** Crons whose missed slots were skipped (`skip`). */
  skipped: number;
  /** Crons whose due slots were held back: their last instance had not started. */
  heldBack: number;
  /** Crons another leader had handled first (compare-and-set lost). */
  lost: number;
  /** Time to the next due slot of any cron, if any. */
  nextInMs: number | undefined;
}

export interface CronOptions {
  db: pg.Pool;
  isLeader: () => boolean;
  onError: (error: unknown) => void;
  onResult?: (result: CronPassResult) => void;
  missedAfterMs?: number;
  maxSleepMs?: number;
  /** Injected clock; default: the database clock. */
  now?: () => Date;
  timers?: Timers;
}

interface CronRow {
  name: string;
  expression: string;
  timezone: string;
  missed: CronMissedPolicy;
  last_slot: Date;
  last_task_id: string | null;
  /** The last instance has not started (still ready, no failed attempt). */
  last_waiting: boolean;
  options: Record<string, unknown>;
  db_now: Date;
}

export class Cron {
  private readonly loop: Loop<CronPassResult>;

  constructor(private readonly options: CronOptions) {
    const maxSleepMs = options.maxSleepMs ?? CRON_DEFAULTS.maxSleepMs;
    this.loop = new Loop({
      name: 'cron',
      runOnce: () => this.runOnce(),
      delayMs: (r) =>
        !r?.leader
          ? CRON_DEFAULTS.followerSleepMs
          : Math.min(maxSleepMs, Math.max(5, (r.nextInMs ?? maxSleepMs) + 2)),
      onError: options.onError,
      timers: options.timers,
    });
  }

  start(): void {
    this.loop.start();
  }

  stop(): Promise<void> {
    return this.loop.stop();
  }

  /** Runs a pass now (leadership gained). */
  wake(): void {
    this.loop.wake();
  }

  async runOnce(): Promise<CronPassResult> {
    const result: CronPassResult = {
      leader: this.options.isLeader(),
      created: 0,
      caughtUp: 0,
      skipped: 0,
      heldBack: 0,
      lost: 0,
      nextInMs: undefined,
    };
    if (!result.leader) return result;
    const { rows } = await this.options.db.query<CronRow>(
      `select c.name, c.expression, c.timezone, c.missed, c.last_slot, c.last_task_id,
         coalesce(t.state = 'ready' and t.attempt = 0, false) as last_waiting, d.options,
         clock_timestamp() as db_now
       from tm_cron c join tm_task_defs d using (name) left join tm_tasks t on t.id = c.last_task_id
       order by c.name`,
    );
    for (const row of rows) {
      const now = this.options.now?.() ?? row.db_now;
      try {
        const more = await this.runCron(row, now, result);
        const next = more ? now : schedule(row.expression, row.timezone).nextRun(now);
        if (next) result.nextInMs = Math.min(result.nextInMs ?? Infinity, next.getTime() - now.getTime());
      } catch (error) {
        this.options.onError(error);
      }
    }
    if (result.created + result.skipped + result.heldBack + result.lost > 0) this.options.onResult?.(result);
    return result;
  }

  /** Returns whether more slots are due than this pass created. */
  private async runCron(row: CronRow, now: Date, result: CronPassResult): Promise<boolean> {
    const plan = planSlots(row, row.last_slot, now, this.options.missedAfterMs);
    if (!plan) return false;
    const def = { ...row.options, name: row.name } as TaskDefinition;
    if (row.last_waiting && row.last_task_id) {
      const latest = schedule(row.expression, row.timezone).previousRuns(1, new Date(now.getTime() + 1))[0];
      const stand =
        row.missed === 'run-once' ? newTask(def, { message: { slot: latest, catchUp: true } }) : undefined;
      const held = await holdBack(this.options.db, row.name, row.last_task_id, plan.firstDue, latest, stand);
      if (held === 'lost') result.lost++;
      if (held === 'held') result.heldBack++;
      // 'started': the instance left the queue meanwhile; the slots get instances as usual.
      if (held !== 'started') return false;
    }
    const tasks: NewTask[] = plan.create.map((message) => newTask(def, { message }));
    const inserted = await createInstances(this.options.db, row.name, plan, tasks);
    if (inserted === undefined) {
      result.lost++;
      return false;
    }
    result.created += inserted;
    result.caughtUp += plan.create.filter((m) => m.catchUp).length;
    if (plan.missed && row.missed === 'skip') result.skipped++;
    return plan.more;
  }
}

/**
 * Moves last_slot to `latest` without an instance while the cron's last instance has not started, in
 * one statement that locks that instance first (a claim by the planner in progress is waited for) and,
 * for `run-once`, makes its message stand for `latest`. 'started': the instance had left the queue
 * (nothing changed); 'lost': last_slot had already moved (another leader).
 */
async function holdBack(
  db: Pick<pg.Pool, 'query'>,
  name: string,
  waitingId: string,
  firstDue: Date,
  latest: Date,
  stand: NewTask | undefined,
): Promise<'held' | 'started' | 'lost'> {
  const { rows } = await db.query<{ waiting: number; advanced: number }>(
    `with waiting as (
       select id from tm_tasks where id = $1 and state = 'ready' and attempt = 0 for update),
     cas as (
       update tm_cron set last_slot = $3, updated_at = now()
       where name = $2 and last_slot < $4 and exists (select 1 from waiting)
       returning name),
     stand as (
       update tm_tasks set message = $5 where $5::bytea is not null and id in (select id from waiting)
         and exists (select 1 from cas)
       returning 1)
     select (select count(*) from waiting)::int as waiting, (select count(*) from cas)::int as advanced,
       (select count(*) from stand)::int as stood`,
    [waitingId, name, latest, firstDue, stand?.message ?? null],
  );
  if (rows[0].waiting === 0) return 'started';
  return rows[0].advanced === 1 ? 'held' : 'lost';
}

/**
 * Moves last_slot past the plan's slots and inserts their instances, in one statement. Returns the
 * number inserted, or undefined when last_slot had already moved (another leader handled the slots).
 */
async function createInstances(
  db: Pick<pg.Pool, 'query'>,
  name: string,
  plan: SlotPlan,
  tasks: NewTask[],
): Promise<number | undefined> {
  const { rows } = await db.query<{ advanced: number; inserted: number }>(
    `with cas as (
       update tm_cron set last_slot = $16, last_task_id = coalesce($18::uuid, last_task_id), updated_at = now()
       where name = $15 and last_slot < $17
       returning name),
     ins as (
       insert into tm_tasks (${INSERT_COLUMNS})
       select * from (${UNNEST_NEW_TASKS}) k where exists (select 1 from cas)
       returning 1)
     select (select count(*) from cas)::int as advanced, (select count(*) from ins)::int as inserted,
       case when exists (select 1 from ins) then pg_notify('${PLANNER_CHANNEL}', '') end`,
    [...insertParams(tasks), name, plan.handledUpTo, plan.firstDue, tasks.at(-1)?.id ?? null],
  );
  return rows[0].advanced === 1 ? rows[0].inserted : undefined;
}
