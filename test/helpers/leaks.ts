/**
 * What the leak check of every test file (leak-check.ts) looks at: test helpers register what they
 * track here (nodes.ts its nodes, spawn.ts its node processes, leak-check.ts the pg pools). No vitest
 * import: the helpers that register are also loaded by fixture processes. Main thread only.
 */

export interface LeakSource {
  /** What leaked, e.g. "test nodes still running". */
  what: string;
  /** Descriptions of what is left (empty: nothing leaked). */
  left(): string[];
  /** Stops, kills or ends what is left. */
  cleanUp(): Promise<void>;
}

const sources: LeakSource[] = [];

/** Adds a kind of resource to the leak check (once per module instance). */
export function trackLeaks(source: LeakSource): void {
  sources.push(source);
}

/** Runs the check; throws naming every leak after cleaning them up. */
export async function checkLeaks(): Promise<void> {
  const leaks = sources.flatMap((s) => {
    const left = s.left();
    return left.length > 0 ? [`${s.what}: ${left.join('; ')}`] : [];
  });
  // Nodes first (they end their own pools), pools last.
  for (const s of sources.toReversed()) await s.cleanUp();
  if (leaks.length > 0) throw new Error(`the test file leaked:\n  ${leaks.join('\n  ')}`);
}
