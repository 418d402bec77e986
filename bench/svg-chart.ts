/**
 * A grouped bar chart as a standalone SVG document (no dependencies): one group per value of the first
 * grid dimension, one bar per combination of the others, with a legend, a y axis and values on bars.
 */
export interface BarGroup {
  label: string;
  bars: { series: string; value: number | null }[];
}

const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7'];

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function niceMax(value: number): number {
  if (value <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

export function groupedBarChart(options: {
  title: string;
  yLabel: string;
  xLabel: string;
  groups: BarGroup[];
}): string {
  const series = [...new Set(options.groups.flatMap((g) => g.bars.map((b) => b.series)))];
  const barWidth = 26;
  const groupGap = 24;
  const left = 70;
  const top = 50;
  const plotHeight = 260;
  const legendHeight = series.length > 1 ? 20 * Math.ceil(series.length / 3) + 10 : 0;
  const groupWidth = series.length * barWidth + groupGap;
  const width = Math.max(360, left + options.groups.length * groupWidth + 30);
  const height = top + plotHeight + 60 + legendHeight;
  const max = niceMax(Math.max(0, ...options.groups.flatMap((g) => g.bars.map((b) => b.value ?? 0))));
  const y = (v: number) => top + plotHeight - (v / max) * plotHeight;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">${escape(options.title)}</text>`,
  ];
  for (let i = 0; i <= 5; i++) {
    const v = (max * i) / 5;
    out.push(
      `<line x1="${left}" x2="${width - 20}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`,
      `<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${Math.round(v)}</text>`,
    );
  }
  out.push(
    `<text transform="translate(16 ${top + plotHeight / 2}) rotate(-90)" text-anchor="middle">${escape(options.yLabel)}</text>`,
    `<line x1="${left}" x2="${left}" y1="${top}" y2="${top + plotHeight}" stroke="#333"/>`,
  );
  options.groups.forEach((group, gi) => {
    const x0 = left + groupGap / 2 + gi * groupWidth;
    group.bars.forEach((bar) => {
      const si = series.indexOf(bar.series);
      const x = x0 + si * barWidth;
      if (bar.value === null) {
        out.push(`<text x="${x + barWidth / 2}" y="${y(0) - 4}" text-anchor="middle" fill="#c00">x</text>`);
        return;
      }
      out.push(
        `<rect x="${x + 2}" y="${y(bar.value)}" width="${barWidth - 4}" height="${y(0) - y(bar.value)}" fill="${PALETTE[si % PALETTE.length]}"><title>${escape(`${group.label} ${bar.series}: ${bar.value}`)}</title></rect>`,
        `<text x="${x + barWidth / 2}" y="${y(bar.value) - 3}" text-anchor="middle" font-size="9">${Math.round(bar.value)}</text>`,
      );
    });
    out.push(
      `<text x="${x0 + (series.length * barWidth) / 2}" y="${top + plotHeight + 16}" text-anchor="middle">${escape(group.label)}</text>`,
    );
  });
  out.push(
    `<text x="${left + (width - left) / 2}" y="${top + plotHeight + 36}" text-anchor="middle">${escape(options.xLabel)}</text>`,
  );
  if (series.length > 1) {
    series.forEach((s, i) => {
      const lx = left + (i % 3) * 180;
      const ly = top + plotHeight + 52 + Math.floor(i / 3) * 20;
      out.push(
        `<rect x="${lx}" y="${ly}" width="12" height="12" fill="${PALETTE[i % PALETTE.length]}"/>`,
        `<text x="${lx + 16}" y="${ly + 10}">${escape(s)}</text>`,
      );
    });
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
