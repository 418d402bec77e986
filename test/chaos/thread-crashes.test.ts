/**
 * Poison tasks on one node: a crashed, out-of-memory or terminated worker thread charges only the task
 * that caused it; its batch-mates and thread-mates run again without being charged, and their timeouts
 * measure their own runs. Poison definitions retry once, healthy ones too: a healthy task charged for a
 * neighbour would show two attempts or an error.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { workerExecArgv } from '../../node/dispatcher.ts';
import type { TaskmillNode } from '../../index.ts';
import * as chaos from '../fixtures/chaos-definitions.ts';
import { count, useTestDatabase } from '../helpers/database.ts';
import { startTestNode, stopAllNodes } from '../helpers/nodes.ts';

const db = useTestDatabase();

afterAll(stopAllNodes);

const THREAD_HEAP_MB = 128;

async function start(threads: number): Promise<TaskmillNode> {
  return startTestNode(db.url, { tasks: chaos.all, threads, threadHeapLimitMb: THREAD_HEAP_MB });
}

/** Resolves once every task in `ids` has ended (history or dead letters), woken by their notifications. */
async function ended(node: TaskmillNode, ids: string[], timeoutMs: number): Promise<void> {
  await Promise.all(ids.map((id) => node.client.waitForTask(id, { timeoutMs })));
}

/** History rows of ids that did not complete at the first attempt without error. */
async function charged(ids: string[]): Promise<unknown[]> {
  const { rows } = await db.pool.query(
    `select id, name, state, attempts, error from tm_history
     where id = any($1) and (state <> 'completed' or attempts <> 1 or error is not null)
     union all
     select id, name, 'dead', attempts, error from tm_dead_letters where id = any($1)`,
    [ids],
  );
  return rows;
}

async function deadLetters(ids: string[]): Promise<{ id: string; attempts: number; error: string }[]> {
  const { rows } = await db.pool.query(
    `select id::text, attempts, error from tm_dead_letters where id = any($1)`,
    [ids],
  );
  return rows;
}

/** MaxListenersExceededWarning messages emitted while the current test runs. */
function listenerLeaks(): string[] {
  const leaks: string[] = [];
  const onWarning = (w: Error) => w.name === 'MaxListenersExceededWarning' && leaks.push(w.message);
  process.on('warning', onWarning);
  onTestFinished(() => void process.off('warning', onWarning));
  return leaks;
}

const sleepers = (n: number, ms: number) => Array.from({ length: n }, () => ({ message: { ms } }));
const empties = (n: number) => Array.from({ length: n }, () => ({}));

describe('thread crashes charge only the task that caused them', () => {
  it('a handler that allocates without end ends its own thread, not the node', async () => {
    const node = await start(2);
    const healthy = await node.client.scheduleMany(chaos.healthy, empties(50));
    const [oom] = await node.client.scheduleMany(chaos.poisonRetried.oom, [{}]);
    await ended(node, [oom, ...healthy], 120_000);
    const [dead] = await deadLetters([oom]);
    expect(dead).toMatchObject({ attempts: 2 });
    expect(dead.error).toContain('ERR_WORKER_OUT_OF_MEMORY');
    expect(await charged(healthy)).toEqual([]);
    expect(node.state).toBe('running');
    await node.stop();
  }, 180_000);

  it('a spinning neighbour does not make the timeouts of its thread-mates fire', async () => {
    // One thread: the spinner and the sleepers share it, and the sleepers queue behind the spinner.
    const node = await start(1);
    const sleeping = await node.client.scheduleMany(chaos.sleepWithTimeout, sleepers(20, 100));
    const [spin] = await node.client.scheduleMany(chaos.poisonRetried.spin, [{}]);
    const more = await node.client.scheduleMany(chaos.sleepWithTimeout, sleepers(20, 100));
    await ended(node, [spin, ...sleeping, ...more], 120_000);
    expect(await charged([...sleeping, ...more])).toEqual([]);
    const [dead] = await deadLetters([spin]);
    expect(dead).toMatchObject({ attempts: 2 });
    expect(dead.error).toContain('TASK_TIMEOUT');
    await node.stop();
  }, 180_000);

  it('a thread terminated for one task timeout runs its other tasks again, uncharged', async () => {
    // The hanging task leaves its thread responsive: it alone is charged, at its first timeout.
    const node = await start(1);
    const sleeping = await node.client.scheduleMany(chaos.sleepWithTimeout, sleepers(20, 600));
    const [hang] = await node.client.scheduleMany(chaos.poisonRetried.hang, [{}]);
    const healthy = await node.client.scheduleMany(chaos.healthy, empties(50));
    await ended(node, [hang, ...sleeping, ...healthy], 120_000);
    expect(await charged([...sleeping, ...healthy])).toEqual([]);
    const [dead] = await deadLetters([hang]);
    expect(dead).toMatchObject({ attempts: 2 });
    expect(dead.error).toContain('TASK_TIMEOUT');
    await node.stop();
  }, 180_000);

  it('a blocked thread whose tasks all time out together is terminated once, and only its blocker is charged', async () => {
    // Each Worker.terminate() adds an exit listener: twelve aborts of one blocked thread terminating it
    // twelve times went past Node's limit of ten (and each rewrote the blame).
    const leaks = listenerLeaks();
    const node = await start(1);
    const group = randomUUID();
    const waiters = await node.client.scheduleMany(
      chaos.blockingWaiter,
      Array.from({ length: 12 }, () => ({ message: { role: 'waiter' as const, group, ms: 800 } })),
    );
    const [blocker] = await node.client.scheduleMany(chaos.blocker, [
      { message: { role: 'blocker', group, waiters: 12 } },
    ]);
    await ended(node, [blocker, ...waiters], 120_000);
    // The waiters ran again alone, uncharged; the blocker, alone on a fresh thread, timed out itself.
    expect(await charged(waiters)).toEqual([]);
    const [dead] = await deadLetters([blocker]);
    expect(dead).toMatchObject({ attempts: 1 });
    expect(dead.error).toContain('TASK_TIMEOUT');
    expect(leaks).toEqual([]);
    await node.stop();
  }, 180_000);

  it('25 poison tasks among 250 healthy ones: the healthy run once, the poison end in the dead letters', async () => {
    // Retries after a crash run alone on the isolation threads: many of them add no listeners each.
    const leaks = listenerLeaks();
    const node = await start(2);
    const healthy: string[] = [];
    const poison: string[] = [];
    // Interleaved, so poison tasks share batches and threads with healthy ones.
    for (let round = 0; round < 5; round++) {
      healthy.push(...(await node.client.scheduleMany(chaos.healthy, empties(30))));
      healthy.push(...(await node.client.scheduleMany(chaos.sleepWithTimeout, sleepers(20, 20))));
      poison.push(...(await node.client.scheduleMany(chaos.poisonOnce.exit, empties(2))));
      poison.push(...(await node.client.scheduleMany(chaos.poisonOnce.oom, empties(1))));
      poison.push(...(await node.client.scheduleMany(chaos.poisonOnce.spin, empties(1))));
      poison.push(...(await node.client.scheduleMany(chaos.poisonOnce.hang, empties(1))));
    }
    expect(healthy).toHaveLength(250);
    expect(poison).toHaveLength(25);
    await ended(node, [...healthy, ...poison], 540_000);

    expect(await charged(healthy)).toEqual([]);
    expect(await count(db.pool, `select count(*) from tm_history where id = any($1)`, [healthy])).toBe(250);
    const dead = await deadLetters(poison);
    expect(dead).toHaveLength(25);
    for (const d of dead) {
      expect(d.attempts).toBe(1);
      expect(d.error).toMatch(/WORKER_EXITED|TASK_TIMEOUT/);
    }
    expect(node.state).toBe('running');
    expect(leaks).toEqual([]);
    await node.stop();
  }, 600_000);
});

describe('Node flags of the worker threads', () => {
  it('leaves out the flags Node refuses for threads (V8 options), keeps the others', () => {
    expect(
      workerExecArgv([
        '--max-old-space-size=2048',
        '--enable-source-maps',
        '--stack-size=2000',
        '--import',
        'tsx',
        '--conditions',
        'development',
        '--expose-gc',
      ]),
    ).toEqual(['--enable-source-maps', '--conditions', 'development']);
  });

  it('refuses a workerExecArgv option that threads cannot take, saying what to do', async () => {
    await expect(
      startTestNode(db.url, {
        tasks: chaos.all,
        planner: false,
        workerExecArgv: ['--max-old-space-size=512'],
      }),
    ).rejects.toMatchObject({
      code: 'INVALID_CONFIG',
      message: expect.stringContaining('--max-old-space-size=512'),
    });
  });
});
