/**
 * The README's quick start, run by test/examples.test.ts:
 *   npx tsx examples/quickstart.ts
 */
import { openDatabase, startNode } from '../runtime/index.ts';
import { resizeImage } from './tasks.ts';

export async function quickstart(): Promise<unknown> {
  const db = await openDatabase(); // DATABASE_URL, or an embedded PostgreSQL in .taskmill/pg
  const node = await startNode({ connectionString: db.url, tasks: [resizeImage], logLevel: 'warn' });
  try {
    const id = await node.client.schedule(resizeImage, {
      message: { url: 'https://example.com/cat.png', width: 320 },
      affinityGroup: 'images',
      affinity: 'cat.png', // tasks touching the same image never run at once
    });
    for (;;) {
      const task = await node.client.getTask(id);
      if (task?.state === 'completed') return task.result;
      if (task?.state === 'dead') throw new Error(task.error ?? 'failed');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    await node.stop();
    await db.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await quickstart());
