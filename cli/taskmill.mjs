#!/usr/bin/env node
// Entry point of the `taskmill` command: runs the CLI (main.js when compiled, as in the published
// package; main.ts through the tsx loader when run from taskmill's sources) and exits with its code.
import { existsSync } from 'node:fs';
import process from 'node:process';
import { fileURLToPath, URL } from 'node:url';

const compiled = existsSync(fileURLToPath(new URL('./main.js', import.meta.url)));
if (!compiled) {
  const { register } = await import('tsx/esm/api');
  register();
}
const { main } = await import(compiled ? './main.js' : './main.ts');
process.exit(await main(process.argv.slice(2)));
