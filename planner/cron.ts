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
import type pg from 'pg';
import { LoopingPart, type Timers } from '../loop/loop.ts';
import { newTask, type NewTask } from '../task/schedule-context.ts';
import type { TaskDefinition } from '../task/task-definition.ts';
import { createInstances, holdBack, readCrons, registerCrons, type CronRow } from '../store/crons.ts';
import { CRON_OPTION_DEFAULTS, cronPattern, type CronMessage, type CronOption } from '../task/cron-option.ts';

export {
  cronOptionSchema,
  cronProblem,
  type CronMessage,
  type CronMissedPolicy,
  type CronOption,
  type CronOptionInput,
} from '../task/cron-option.ts';

export const CRON_DEFAULTS = {
  ...CRON_OPTION_DEFAULTS,
  /** A slot older than this when the leader first sees it counts as missed. */
  missedAfterMs: 30_000,
  /** Longest sleep between passes: how soon a cron registered by another node is picked up. */
  maxSleepMs: 5_000,
  /** Sleep between passes while this node does not lead (leadership changes also wake the loop). */
  followerSleepMs: 1_000,
  /** Most instances one pass creates for one cron; the next pass, at once, continues. */
  maxInstancesPerPass: 1_000,
};

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
  const pattern = cronPattern(option.expression, option.timezone);
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
  await registerCrons(
    db,
    defs.flatMap((d) => (d.cron ? [{ name: d.name, ...d.cron }] : [])),
    defs.filter((d) => !d.cron).map((d) => d.name),
    at,
  );
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

export class Cron extends LoopingPart<CronPassResult> {
  constructor(private readonly options: CronOptions) {
    const maxSleepMs = options.maxSleepMs ?? CRON_DEFAULTS.maxSleepMs;
    super({
      name: 'cron',
      delayMs: (r) =>
        !r?.leader
          ? CRON_DEFAULTS.followerSleepMs
          : Math.min(maxSleepMs, Math.max(5, (r.nextInMs ?? maxSleepMs) + 2)),
      onError: options.onError,
      timers: options.timers,
    });
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
    for (const row of await readCrons(this.options.db)) {
      const now = this.options.now?.() ?? row.db_now;
      try {
        const more = await this.runCron(row, now, result);
        const next = more ? now : cronPattern(row.expression, row.timezone).nextRun(now);
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
      const latest = cronPattern(row.expression, row.timezone).previousRuns(
        1,
        new Date(now.getTime() + 1),
      )[0];
      const stand =
        row.missed === 'run-once' ? newTask(def, { message: { slot: latest, catchUp: true } }) : undefined;
      const held = await holdBack(this.options.db, row.name, row.last_task_id, plan.firstDue, latest, stand);
      if (held === 'lost') result.lost++;
      if (held === 'held') result.heldBack++;
      // 'started': the instance left the queue meanwhile; the slots get instances as usual.
      if (held !== 'started') return false;
    }
    const tasks: NewTask[] = plan.create.map((message) => newTask(def, { message }));
    const inserted = await createInstances(this.options.db, row.name, plan.handledUpTo, plan.firstDue, tasks);
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
