/** TaskmillClient.cluster(): the leader, the nodes and their load, as the database sees them. */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { TaskmillClient, TaskmillError } from '../index.ts';
import * as defs from './fixtures/definitions.ts';
import { until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const db = useTestDatabase();
let client: TaskmillClient;

beforeAll(async () => {
  client = new TaskmillClient({ pool: db.pool });
});
afterAll(stopAllNodes);

it('reports the leader since it took the lease, each node with its state and load, and totals', async () => {
  const empty = await client.cluster();
  expect(empty).toMatchObject({ leader: null, nodes: [], totals: { nodes: 0, alive: 0, capacity: 0 } });

  const leader = await startTestNode(db.url, { maxParallelTasksInNode: 3, tasks: [defs.sleep] });
  const follower = await startTestNode(db.url, {
    maxParallelTasksInNode: 2,
    planner: false,
    tasks: [defs.sleep],
  });
  await until(async () => (await client.cluster()).leader?.nodeId === leader.id);
  await client.scheduleMany(defs.sleep, [{ message: { ms: 3_000 } }, { message: { ms: 3_000 } }]);
  await until(async () => (await client.cluster()).totals.held === 2);

  const c = await client.cluster({ nodeTimeoutMs: 5_000 });
  expect(c.leader).toMatchObject({ nodeId: leader.id, nodeName: leader.name });
  expect(c.leader!.since.getTime()).toBeLessThanOrEqual(c.at.getTime());
  expect(c.nodes.map((n) => [n.id, n.state, n.leader, n.capacity])).toEqual([
    [leader.id, 'alive', true, 3],
    [follower.id, 'alive', false, 2],
  ]);
  for (const n of c.nodes) expect(n.lastHeartbeatAt).toBeInstanceOf(Date);
  expect(c.totals).toMatchObject({ nodes: 2, alive: 2, capacity: 5, held: 2 });

  await expect(client.cluster({ nodeTimeoutMs: -1 })).rejects.toBeInstanceOf(TaskmillError);
  await follower.stop();
  await until(async () => (await client.cluster()).nodes.length === 1);
});
