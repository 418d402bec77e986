/**
 * Per-affinity mailboxes of a node: the tasks it has fetched and not yet dispatched.
 *
 * - A task without affinity waits in the free queue of its task name.
 * - A task with an affinity key waits in the mailbox of that key. A strict key lets one task out at a
 *   time, in arrival order; a workflow key lets out the tasks of one workflow at a time (in parallel)
 *   and the next workflow only when none of the previous one is in flight.
 * - A task name at its per-node limit (maxParallelInNode) lets nothing out until one of its tasks ends.
 *
 * `take()` hands out dispatchable tasks, never two of one strict key, so a micro-batch built from its
 * output cannot break ordering. `release()` is called when a taken task has ended.
 *
 * Owned by the main thread of a node (the node's pump is the only caller).
 */
export interface MailboxTask {
  id: string;
  name: string;
  workflowId: string;
  affinityGroup: string | null;
  affinity: string | null;
  strictAffinity: boolean;
}

interface Box<T> {
  queue: T[];
  inFlight: number;
  workflow: string | undefined;
}

export class Mailboxes<T extends MailboxTask> {
  private readonly free = new Map<string, T[]>();
  private readonly boxes = new Map<string, Box<T>>();
  /** Keys whose head may be dispatchable, in round-robin order. */
  private readonly ready = new Set<string>();
  private readonly running = new Map<string, number>();
  /** Every waiting task by id: remove() answers "not here" without scanning the queues. */
  private readonly byId = new Map<string, T>();
  private queued = 0;

  constructor(private readonly limitOf: (name: string) => number | undefined = () => undefined) {}

  /** Tasks waiting (not dispatched). */
  get size(): number {
    return this.queued;
  }

  push(task: T): void {
    this.queued++;
    this.byId.set(task.id, task);
    const key = keyOf(task);
    if (key === undefined) {
      let queue = this.free.get(task.name);
      if (!queue) this.free.set(task.name, (queue = []));
      queue.push(task);
      return;
    }
    let box = this.boxes.get(key);
    if (!box) this.boxes.set(key, (box = { queue: [], inFlight: 0, workflow: undefined }));
    box.queue.push(task);
    if (box.queue.length === 1) this.ready.add(key);
  }

  take(max: number): T[] {
    const out: T[] = [];
    let progress = true;
    while (out.length < max && progress) {
      progress = false;
      for (const key of [...this.ready]) {
        if (out.length >= max) break;
        const box = this.boxes.get(key)!;
        const head = box.queue[0];
        if (!head || !this.headMayRun(box, head)) {
          if (!head || box.inFlight > 0) this.ready.delete(key);
          continue;
        }
        box.queue.shift();
        box.inFlight++;
        box.workflow = head.workflowId;
        this.started(head, out);
        progress = true;
        if (box.queue.length === 0) this.ready.delete(key);
      }
      for (const [name, queue] of this.free) {
        if (out.length >= max) break;
        const limit = this.limitOf(name);
        const room =
          limit === undefined
            ? max - out.length
            : Math.min(max - out.length, limit - (this.running.get(name) ?? 0));
        for (let i = 0; i < room && queue.length > 0; i++) {
          this.started(queue.shift()!, out);
          progress = true;
        }
        if (queue.length === 0) this.free.delete(name);
      }
    }
    return out;
  }

  /** A taken task has ended (or was handed back): frees its key and its per-node slot. */
  release(task: T): void {
    this.running.set(task.name, (this.running.get(task.name) ?? 1) - 1);
    const key = keyOf(task);
    if (key === undefined) return;
    const box = this.boxes.get(key);
    if (!box) return;
    box.inFlight--;
    if (box.inFlight === 0) box.workflow = undefined;
    if (box.queue.length > 0) this.ready.add(key);
    else if (box.inFlight === 0) this.boxes.delete(key);
  }

  /** Every waiting task. */
  waiting(): T[] {
    return [...[...this.free.values()].flat(), ...[...this.boxes.values()].flatMap((b) => b.queue)];
  }

  /** Removes and returns every waiting task (shutdown). */
  drain(): T[] {
    const all = [...[...this.free.values()].flat(), ...[...this.boxes.values()].flatMap((b) => b.queue)];
    this.free.clear();
    for (const [key, box] of this.boxes) {
      box.queue = [];
      if (box.inFlight === 0) this.boxes.delete(key);
    }
    this.ready.clear();
    this.byId.clear();
    this.queued = 0;
    return all;
  }

  /**
   * Removes one waiting task by id (cancellation), if `which` accepts it; undefined when no such task
   * waits here.
   */
  remove(id: string, which: (task: T) => boolean = () => true): T | undefined {
    const waiting = this.byId.get(id);
    if (!waiting || !which(waiting)) return undefined;
    this.byId.delete(id);
    for (const [name, queue] of this.free) {
      const i = queue.findIndex((t) => t.id === id && which(t));
      if (i >= 0) {
        this.queued--;
        const [task] = queue.splice(i, 1);
        if (queue.length === 0) this.free.delete(name);
        return task;
      }
    }
    for (const box of this.boxes.values()) {
      const i = box.queue.findIndex((t) => t.id === id && which(t));
      if (i >= 0) {
        this.queued--;
        return box.queue.splice(i, 1)[0];
      }
    }
    return undefined;
  }

  private headMayRun(box: Box<T>, head: T): boolean {
    const limit = this.limitOf(head.name);
    if (limit !== undefined && (this.running.get(head.name) ?? 0) >= limit) return false;
    if (box.inFlight === 0) return true;
    return !head.strictAffinity && box.workflow === head.workflowId;
  }

  private started(task: T, out: T[]): void {
    this.queued--;
    this.byId.delete(task.id);
    this.running.set(task.name, (this.running.get(task.name) ?? 0) + 1);
    out.push(task);
  }
}

export function keyOf(task: MailboxTask): string | undefined {
  return task.affinity === null ? undefined : `${task.affinityGroup ?? ''}\u0000${task.affinity}`;
}
