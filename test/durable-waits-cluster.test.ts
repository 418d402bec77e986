/**
 * Durable waits survive node kills: a node process SIGKILLed in the middle of a task's steps leaves its
 * finished steps recorded (the rerun on another node does not redo them), and a task sleeping when its
 * node died is woken by another node and continues there.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { TaskmillClient } from '../index.ts';
import { until, useTestDatabase, waitForTasks } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';
import { killAllNodes, spawnNode } from './helpers/spawn.ts';
import { all, durable } from './fixtures/definitions.ts';

const db = useTestDatabase();
const log = join(mkdtempSync(join(tmpdir(), 'taskmill-durable-cluster-')), 'steps.log');

afterAll(async () => {
  await killAllNodes();
  await stopAllNodes();
});

function runs(tag: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const line of readFileSync(log, { encoding: 'utf8', flag: 'a+' }).split('\n')) {
    const [t, step] = line.split(':');
    if (t === tag) counts[step] = (counts[step] ?? 0) + 1;
  }
  return counts;
}

it('a node killed mid-workflow: finished steps are not redone, and its sleeping task is woken by another node', async () => {
  const victim = await spawnNode(db.url);
  const client = new TaskmillClient({ connectionString: db.url });
  try {
    // T1 hangs in step b on the victim; T2 sleeps there between its steps.
    const t1 = await client.schedule(durable, {
      message: {
        log,
        tag: 't1',
        plan: [
          { step: 'a' },
          { step: 'b', hangInPid: victim.pid },
          { event: 'go', key: 't1' },
          { step: 'c' },
        ],
      },
    });
    const t2 = await client.schedule(durable, {
      message: { log, tag: 't2', plan: [{ step: 'x' }, { sleep: 3_000 }, { step: 'y' }] },
    });
    await until(async () => runs('t1').b === 1 && (await client.getTask(t2))?.state === 'sleeping');
    victim.kill('SIGKILL');
    expect(await victim.stopped).toBeNull();
    // Left sleeping by the dead node: nothing holds it, and only the survivor can wake it.
    expect((await client.getTask(t2))?.state).toBe('sleeping');

    // The survivor takes the planner lease, recovers T1 from the dead node and wakes T2 when it is due.
    const survivor = await startTestNode(db.url, { tasks: [...all, durable] });
    await until(async () => (await client.getTask(t1))?.state === 'sleeping');
    expect(await client.sendEvent('go', 't1', 'green')).toBe(1);
    const [r1, r2] = await waitForTasks(survivor.client, [t1, t2]);

    expect(r1.state).toBe('completed');
    expect(r1.result).toEqual([
      `a@${victim.pid}`,
      `b@${process.pid}`,
      { timedOut: false, payload: 'green' },
      `c@${process.pid}`,
    ]);
    // a finished before the kill: never again; b was cut short: run again, once.
    expect(runs('t1')).toEqual({ a: 1, b: 2, c: 1 });
    expect(r2.state).toBe('completed');
    expect(r2.result).toEqual([`x@${victim.pid}`, 'slept', `y@${process.pid}`]);
    expect(runs('t2')).toEqual({ x: 1, y: 1 });
  } finally {
    await client.close();
  }
});
