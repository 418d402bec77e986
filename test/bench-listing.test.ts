/**
 * `taskmill bench` lists each benchmark with the opening sentence of its header: every document it
 * points to exists, with the sections it names.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { listBenches } from '../cli/commands/bench.ts';

const ROOT = path.resolve(import.meta.dirname, '..');

describe('the benchmark listing', () => {
  it('points only to documents and sections that exist', () => {
    const benches = listBenches();
    expect(benches.map((b) => b.name)).toContain('workflow');
    let references = 0;
    for (const bench of benches) {
      // `(README.md, "Performance", "The benchmark workload")` or `(docs/x.md "Section")`.
      for (const [, file, sections] of bench.description.matchAll(/([\w./-]+\.md)((?:,?\s*"[^"]+")*)/g)) {
        references++;
        const doc = path.join(ROOT, file);
        expect(existsSync(doc), `${bench.name} points to ${file}`).toBe(true);
        const headings = readFileSync(doc, 'utf8')
          .split('\n')
          .filter((l) => /^#+ /.test(l))
          .map((l) => l.replace(/^#+ /, '').trim());
        for (const [, section] of sections.matchAll(/"([^"]+)"/g))
          expect(headings, `${bench.name}: ${file} has a section "${section}"`).toContain(section);
      }
    }
    expect(references).toBeGreaterThan(0);
  });
});
