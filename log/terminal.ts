/**
 * Whether live output (progress bars, views redrawn in place) goes to a stream: only to a terminal and
 * never when CI is set, so logs and CI output stay clean.
 */
export function wantsLiveOutput(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): boolean {
  const ci = env.CI;
  return Boolean(stream.isTTY) && (ci === undefined || ci === '' || ci === 'false' || ci === '0');
}
