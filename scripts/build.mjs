// `npm run build` (also run by `npm pack` / `npm publish` through prepack): compiles the package's
// TypeScript to dist/ (tsconfig.build.json: JavaScript, declaration files, source maps), then copies the
// files the compiled code reads next to itself: the worker-thread and CLI entry points, the SQL
// migrations and the dashboard pages.
import { execFileSync } from 'node:child_process';
import { cpSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';

const root = path.resolve(import.meta.dirname, '..');
const dist = path.join(root, 'dist');
const ASSETS = [
  'worker/worker-entry.mjs',
  'cli/taskmill.mjs',
  'http/dashboard.html',
  'http/pages.html',
  'http/pages.css',
  ...readdirSync(path.join(root, 'migrations'))
    .filter((file) => file.endsWith('.sql'))
    .map((file) => `migrations/${file}`),
];

rmSync(dist, { recursive: true, force: true });
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
execFileSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
for (const file of ASSETS) cpSync(path.join(root, file), path.join(dist, file));
