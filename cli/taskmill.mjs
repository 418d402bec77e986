#!/usr/bin/env node
// Entry point of the `taskmill` command: registers the TypeScript loader, then runs the CLI
// (cli/main.ts) and exits with its code.
import process from 'node:process';
import { register } from 'tsx/esm/api';

register();
const { main } = await import('./main.ts');
process.exit(await main(process.argv.slice(2)));
