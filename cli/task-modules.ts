/**
 * Loads the task definitions a node runs from modules: every export that is a definition made by
 * defineTask(), or an array of them (the same definition exported twice counts once).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { isTaskDefinition, type TaskDefinition } from '../runtime/task-definition.ts';
import { CliError, EXIT } from './output.ts';

export async function loadTaskModules(specs: string[], cwd: string): Promise<TaskDefinition[]> {
  const found = new Set<TaskDefinition>();
  for (const spec of specs) {
    const file = path.resolve(cwd, spec);
    if (!existsSync(file)) throw new CliError(EXIT.USAGE, `Task module not found: ${file}`);
    const module = (await import(pathToFileURL(file).href).catch((error: { code?: string }) => {
      if (error.code !== 'ERR_UNKNOWN_FILE_EXTENSION') throw error;
      throw new CliError(
        EXIT.USAGE,
        `${spec} is TypeScript, which this Node.js does not load by itself: run taskmill with a ` +
          `TypeScript loader (NODE_OPTIONS="--import tsx" taskmill ...), or give it a .js/.mjs module.`,
      );
    })) as Record<string, unknown>;
    const defs = taskDefinitionsOf(module);
    for (const def of defs) found.add(def);
    if (defs.length === 0) {
      throw new CliError(
        EXIT.USAGE,
        `${spec} exports no task definition: export the results of defineTask(), or an array of them.`,
      );
    }
  }
  return [...found];
}

/**
 * The task definitions a loaded module exports: named exports, the default export, and arrays of them.
 * The one rule of what a tasks module is, shared by `taskmill node --tasks` and the node processes of
 * `taskmill cluster` (cluster/cluster-node.ts).
 */
export function taskDefinitionsOf(module: Record<string, unknown>): TaskDefinition[] {
  const defs = Object.values(module)
    .flatMap((value) => (Array.isArray(value) ? value : [value]))
    .filter(isTaskDefinition);
  return [...new Set(defs)];
}
