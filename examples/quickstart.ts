// quickstart.ts: `npx tsx quickstart.ts` prints the result, then exits
import { openDatabase, startNode } from '../index.ts';
import { resizeImage } from './tasks.ts';

const db = await openDatabase(); // DATABASE_URL, or an embedded PostgreSQL (data under ./.taskmill)
const node = await startNode({ connectionString: db.url, tasks: [resizeImage], logLevel: 'warn' });
try {
  const id = await node.client.schedule(resizeImage, {
    message: { url: 'https://example.com/cat.png', width: 320 },
    affinityGroup: 'images',
    affinity: 'cat.png', // tasks touching the same image never run at once
  });
  // schedule() returns once the task is stored (state 'ready'); waitForTask() once it has ended.
  const task = await node.client.waitForTask(id, { timeoutMs: 30_000 });
  console.log(task.state, task.result); // completed { url: 'https://example.com/cat.png', width: 320 }
} finally {
  await node.stop(); // finishes running tasks, hands queued ones back
  await db.stop(); // stops the embedded server if this process started it
}
