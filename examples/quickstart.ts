// quickstart.ts: `npx tsx quickstart.ts` prints the result, then exits
import { openDatabase, startNode } from '../runtime/index.ts';
import { resizeImage } from './tasks.ts';

const db = await openDatabase(); // DATABASE_URL, or an embedded PostgreSQL (data under ./.taskmill)
const node = await startNode({ connectionString: db.url, tasks: [resizeImage], logLevel: 'warn' });
try {
  const id = await node.client.schedule(resizeImage, {
    message: { url: 'https://example.com/cat.png', width: 320 },
    affinityGroup: 'images',
    affinity: 'cat.png', // tasks touching the same image never run at once
  });
  // schedule() returns once the task is stored (state 'ready'): poll until it has ended.
  const ended = ['completed', 'failed', 'cancelled', 'dead'];
  let task = await node.client.getTask(id);
  while (task && !ended.includes(task.state)) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    task = await node.client.getTask(id);
  }
  console.log(task?.state, task?.result); // completed { url: 'https://example.com/cat.png', width: 320 }
} finally {
  await node.stop(); // finishes running tasks, hands queued ones back
  await db.stop(); // stops the embedded server if this process started it
}
