/**
 * The worker threads' share of a node's connection budget (docs/connections.md): a counting semaphore
 * in a SharedArrayBuffer, created by the main thread and handed to every worker thread in its
 * workerData. A thread holds one slot for each database connection it has open (busy or idle), so the
 * threads of a node together never have more than `limit` connections, whatever their number.
 *
 * Layout (Int32Array cells):
 *   OPEN     connections open across the threads (slots taken); written by the threads (acquire,
 *            release) and by the main thread (reclaim); Atomics.notify on it wakes waiting threads.
 *   LIMIT    the share, written once by the main thread.
 *   WAITERS  acquisitions blocked for lack of a slot, across the threads; a thread with idle
 *            connections watches it and closes them so the waiter gets a slot (thread-pool.ts).
 *   SEATS    triples [threadId, slots held, acquisitions waiting] per thread that ever took or waited
 *            for a slot: when a thread dies (a terminated or crashed thread never releases), the main
 *            thread gives its slots back (reclaim, on the thread's exit event). A seat is claimed with a
 *            compare-exchange on its threadId cell (0: free) and freed by reclaim. The held and waiting
 *            counts also give each thread its fair share (thread-pool.ts): the limit divided among the
 *            threads that hold or wait for slots.
 */
/** Atomics.waitAsync (Node 16+; newer than this project's TypeScript lib). */
type WaitAsync = (
  cells: Int32Array,
  index: number,
  value: number,
  timeoutMs: number,
) => { async: false; value: string } | { async: true; value: Promise<string> };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

const OPEN = 0;
const LIMIT = 1;
const WAITERS = 2;
const SEATS = 3;
/** Cells per seat: threadId, slots held, acquisitions waiting. */
const SEAT_CELLS = 3;
/** A blocked acquisition re-checks at least this often (a safety net; notify wakes it first). */
const RECHECK_MS = 1_000;

export class ConnectionSlots {
  private readonly cells: Int32Array;
  private readonly seatCount: number;

  private constructor(readonly buffer: SharedArrayBuffer) {
    this.cells = new Int32Array(buffer);
    this.seatCount = (this.cells.length - SEATS) / SEAT_CELLS;
  }

  /** Main thread: `limit` slots, room for `seats` threads alive at once (with those just replaced). */
  static create(limit: number, seats: number): ConnectionSlots {
    const slots = new ConnectionSlots(
      new SharedArrayBuffer((SEATS + SEAT_CELLS * seats) * Int32Array.BYTES_PER_ELEMENT),
    );
    Atomics.store(slots.cells, LIMIT, limit);
    return slots;
  }

  /** Worker thread: the semaphore the main thread created. */
  static from(buffer: SharedArrayBuffer): ConnectionSlots {
    return new ConnectionSlots(buffer);
  }

  get limit(): number {
    return Atomics.load(this.cells, LIMIT);
  }

  /** Connections the threads have open now. */
  get open(): number {
    return Atomics.load(this.cells, OPEN);
  }

  /** Acquisitions waiting for a slot now, across the threads. */
  get waiting(): number {
    return Atomics.load(this.cells, WAITERS);
  }

  /** Takes a slot if one is free. */
  tryAcquire(threadId: number): boolean {
    const seat = this.seat(threadId);
    for (;;) {
      const open = Atomics.load(this.cells, OPEN);
      if (open >= this.limit) return false;
      if (Atomics.compareExchange(this.cells, OPEN, open, open + 1) === open) {
        Atomics.add(this.cells, seat + 1, 1);
        return true;
      }
    }
  }

  /** Takes a slot, waiting (without blocking the thread's event loop) until one is free. */
  async acquire(threadId: number): Promise<void> {
    while (!this.tryAcquire(threadId)) {
      const open = Atomics.load(this.cells, OPEN);
      if (open < this.limit) continue;
      const seat = this.seat(threadId);
      Atomics.add(this.cells, seat + 2, 1);
      Atomics.add(this.cells, WAITERS, 1);
      Atomics.notify(this.cells, WAITERS);
      try {
        const result = waitAsync(this.cells, OPEN, open, RECHECK_MS);
        if (result.async) await result.value;
      } finally {
        Atomics.sub(this.cells, WAITERS, 1);
        Atomics.sub(this.cells, seat + 2, 1);
      }
    }
  }

  /** Slots the thread holds now. */
  held(threadId: number): number {
    return Atomics.load(this.cells, this.seat(threadId) + 1);
  }

  /**
   * The thread's fair share now: the limit divided among the threads that hold or wait for slots,
   * rounded up (so shares that do not divide evenly stay put instead of passing a slot back and forth),
   * and whether some other thread waits holding none (its share must come from a thread at or under its
   * own, so that no thread starves when there are more threads than slots).
   */
  share(threadId: number): { fair: number; starved: boolean } {
    let active = 0;
    let starved = false;
    for (let i = 0; i < this.seatCount; i++) {
      const seat = SEATS + SEAT_CELLS * i;
      const id = Atomics.load(this.cells, seat);
      if (id === 0) continue;
      const held = Atomics.load(this.cells, seat + 1);
      const waiting = Atomics.load(this.cells, seat + 2);
      if (held > 0 || waiting > 0 || id === threadId) active++;
      if (id !== threadId && held === 0 && waiting > 0) starved = true;
    }
    return { fair: Math.ceil(this.limit / Math.max(1, active)), starved };
  }

  /** Gives a slot back (its connection closed). */
  release(threadId: number): void {
    Atomics.sub(this.cells, this.seat(threadId) + 1, 1);
    Atomics.sub(this.cells, OPEN, 1);
    Atomics.notify(this.cells, OPEN);
  }

  /**
   * Resolves with true once more than `above` acquisitions wait for a slot, or with false after
   * `timeoutMs`: a thread holding idle connections watches with it (`above`: its own waiting ones).
   */
  async wanted(timeoutMs: number, above = 0): Promise<boolean> {
    const waiting = Atomics.load(this.cells, WAITERS);
    if (waiting > above) return true;
    const result = waitAsync(this.cells, WAITERS, waiting, timeoutMs);
    if (result.async) await result.value;
    return Atomics.load(this.cells, WAITERS) > above;
  }

  /** Main thread: the slots a thread that ended still held go back; returns how many. */
  reclaim(threadId: number): number {
    for (let i = 0; i < this.seatCount; i++) {
      const seat = SEATS + SEAT_CELLS * i;
      if (Atomics.load(this.cells, seat) !== threadId) continue;
      const held = Atomics.exchange(this.cells, seat + 1, 0);
      // A thread that died waiting never ran its acquisition's cleanup: its waits end here too.
      const waiting = Atomics.exchange(this.cells, seat + 2, 0);
      if (waiting > 0) Atomics.sub(this.cells, WAITERS, waiting);
      Atomics.store(this.cells, seat, 0);
      if (held > 0) {
        Atomics.sub(this.cells, OPEN, held);
        Atomics.notify(this.cells, OPEN);
      }
      return held;
    }
    return 0;
  }

  /** Index of the thread's seat, claimed on first use. */
  private seat(threadId: number): number {
    for (let i = 0; i < this.seatCount; i++) {
      const seat = SEATS + SEAT_CELLS * i;
      if (Atomics.load(this.cells, seat) === threadId) return seat;
    }
    for (let i = 0; i < this.seatCount; i++) {
      const seat = SEATS + SEAT_CELLS * i;
      if (Atomics.compareExchange(this.cells, seat, 0, threadId) === 0) return seat;
    }
    // Seats are sized for every thread of both Piscina pools with room for replaced ones: a bug if hit.
    throw new Error(`no seat left in the worker threads' connection slots (${this.seatCount} in use)`);
  }
}
