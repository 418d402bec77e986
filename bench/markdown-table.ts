/** Rows of cells as a GitHub markdown table; the columns are those of the first row, in order. */
export function markdownTable(rows: Record<string, string | number>[], columns?: string[]): string {
  if (rows.length === 0) return '';
  const cols = columns ?? Object.keys(rows[0]);
  const cell = (value: string | number | undefined) =>
    String(value ?? '')
      .replace(/\|/g, '\\|')
      .replace(/\n/g, ' ');
  const line = (cells: (string | number | undefined)[]) => `| ${cells.map(cell).join(' | ')} |`;
  return [line(cols), line(cols.map(() => '---')), ...rows.map((r) => line(cols.map((c) => r[c])))].join(
    '\n',
  );
}
