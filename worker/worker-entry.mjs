// Worker-thread bootstrap (Piscina's filename). Loads the thread's code, worker.js when taskmill runs
// compiled (the published package) or worker.ts when it runs from its sources, and registers the tsx
// TypeScript loader in this thread first when something TypeScript must load: worker.ts itself, or a
// task handler module ending in .ts/.mts/.cts (an application run with tsx).
//
// Loader hooks do not reliably follow a program into its worker threads (on Node 20 hooks registered
// with module.register() stay in the thread that registered them, an `--import tsx` flag registers too
// late for the thread's first imports, and the dispatcher leaves tsx flags out of the threads' execArgv),
// so each thread registers its own. tsx is resolved from this file first (taskmill's own checkout), then
// from the handler modules' folders (the application's node_modules). Without tsx, .ts handlers are left
// to Node itself (which strips types natively from Node 22.18 on; on Node 20 their tasks fail with Node's
// ERR_UNKNOWN_FILE_EXTENSION).
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL, URL } from 'node:url';
import { workerData } from 'node:worker_threads';

const TYPESCRIPT = /\.[mc]?ts$/;
const compiled = existsSync(fileURLToPath(new URL('./worker.js', import.meta.url)));
const handlers = Object.values(workerData?.handlers ?? {}).filter((url) => url.startsWith('file:'));

if (!compiled || handlers.some((url) => TYPESCRIPT.test(url))) {
  const api = resolveTsx([import.meta.url, ...handlers]);
  if (api) {
    const { register } = await import(api);
    register();
  }
}

const worker = await import(compiled ? './worker.js' : './worker.ts');
export default worker.default;

/** URL of tsx's ESM API (its `import` export) as seen from the first of `parents` that has tsx. */
function resolveTsx(parents) {
  for (const parent of parents) {
    let manifest;
    try {
      manifest = createRequire(parent).resolve('tsx/package.json');
    } catch {
      continue; // Not installed where this module lives: try the next one.
    }
    const api = JSON.parse(readFileSync(manifest, 'utf8')).exports?.['./esm/api']?.import;
    const file = typeof api === 'string' ? api : api?.default;
    if (file) return pathToFileURL(path.join(path.dirname(manifest), file)).href;
  }
  return undefined;
}
