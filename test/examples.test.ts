import { expect, it } from 'vitest';
import { createTestDatabase } from './helpers/database.ts';

it('the README quick start runs end to end', async () => {
  const db = await createTestDatabase();
  const previous = process.env.DATABASE_URL;
  process.env.DATABASE_URL = db.url;
  try {
    const { quickstart } = await import('../examples/quickstart.ts');
    expect(await quickstart()).toEqual({
      url: 'https://example.com/cat.png',
      width: 320,
      resizedBy: 'resize-image',
      attempt: 1,
    });
  } finally {
    if (previous === undefined) delete process.env.DATABASE_URL;
    else process.env.DATABASE_URL = previous;
    await db.drop();
  }
});
