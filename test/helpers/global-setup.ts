/**
 * Starts one PostgreSQL for the whole test run (DATABASE_URL when set, otherwise an embedded server
 * in its own folder under .taskmill/test-pg, removed afterwards, so concurrent runs never share one)
 * and migrates a template database that each test file clones.
 *
 * A test file with a failed test keeps its databases (test/helpers/database.ts useTestDatabase()) and
 * lists them in `keptDatabasesFile`; when that list is not empty, the embedded server's data folder is
 * kept too, and the end of the run says how to open it.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { openDatabase, withDatabase } from '../../store/database.ts';
import { migrate } from '../../migrations/migrator.ts';
import { packFolder } from './package-project.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    serverUrl: string;
    templateDb: string;
    keptDatabasesFile: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const run = randomBytes(4).toString('hex');
  const dataDir = path.resolve(import.meta.dirname, '../../.taskmill/test-pg', run);
  const db = await openDatabase({ dataDir, port: 0 });
  const templateDb = `taskmill_test_${run}_template`;
  const admin = new pg.Client(db.url);
  await admin.connect();
  await admin.query(`create database ${pg.escapeIdentifier(templateDb)}`);
  await admin.end();

  const template = new pg.Pool({ connectionString: withDatabase(db.url, templateDb), max: 2 });
  await migrate(template);
  await template.end();

  project.provide('serverUrl', db.url);
  project.provide('templateDb', templateDb);
  const keptDatabasesFile = `${dataDir}.kept`;
  project.provide('keptDatabasesFile', keptDatabasesFile);
  return async () => {
    rmSync(packFolder(templateDb), { recursive: true, force: true });
    const kept = existsSync(keptDatabasesFile)
      ? readFileSync(keptDatabasesFile, 'utf8').split('\n').filter(Boolean)
      : [];
    rmSync(keptDatabasesFile, { force: true });
    if (db.owner) {
      await db.stop();
      if (kept.length > 0) {
        console.warn(
          `kept the test server's data folder ${dataDir} for the databases of failed test files: ` +
            `${kept.join(', ')}. Open it with \`TASKMILL_DATA_DIR=${dataDir} npx taskmill db start\`, ` +
            'then psql on the URL it prints; remove the folder when done.',
        );
      } else rmSync(dataDir, { recursive: true, force: true });
    } else {
      const c = new pg.Client(db.url);
      await c.connect();
      await c.query(`drop database if exists ${pg.escapeIdentifier(templateDb)} with (force)`);
      await c.end();
    }
  };
}
