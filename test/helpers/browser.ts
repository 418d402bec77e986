/**
 * A headless Chromium for browser tests, with nothing installed by hand: the browser comes from the
 * `@sparticuz/chromium` dev dependency, which ships a brotli-compressed Chromium in its npm tarball.
 * It is inflated once per package version into `.taskmill/chromium/<version>` (staged in a private
 * folder and renamed into place, so concurrent test runs never see a half-written binary). When that
 * package cannot give a browser (another CPU architecture, say), Debian's `/usr/bin/chromium` is used
 * when present; with neither, launching fails with an error that says what to install.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';

const ROOT = path.resolve(import.meta.dirname, '../..');
const SYSTEM_CHROMIUM = '/usr/bin/chromium';
/** Headless, as root, on a machine whose only network is the loopback: no background connections. */
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Path of the packaged Chromium, inflated on first use. */
async function packagedChromium(): Promise<string> {
  const { dir: packageDir, version } = packageRoot(
    createRequire(import.meta.url).resolve('@sparticuz/chromium'),
    '@sparticuz/chromium',
  );
  const dir = path.join(ROOT, '.taskmill', 'chromium', version);
  const executable = path.join(dir, 'chromium');
  if (existsSync(executable)) return executable;

  mkdirSync(path.dirname(dir), { recursive: true });
  const staging = mkdtempSync(`${dir}.staging-`);
  // The package inflates into os.tmpdir(): point that at the staging folder for the call.
  const savedTmpdir = process.env.TMPDIR;
  process.env.TMPDIR = staging;
  try {
    const { default: Chromium } = await import('@sparticuz/chromium');
    await Chromium.executablePath(path.join(packageDir, 'bin'));
  } catch (error) {
    rmSync(staging, { recursive: true, force: true });
    throw error;
  } finally {
    if (savedTmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmpdir;
  }
  try {
    renameSync(staging, dir);
  } catch (error) {
    // Another run put it in place first.
    rmSync(staging, { recursive: true, force: true });
    if (!existsSync(executable)) throw error;
  }
  return executable;
}

/** The folder and version of package `name`, found from one of its files (its exports hide package.json). */
function packageRoot(entry: string, name: string): { dir: string; version: string } {
  for (let dir = path.dirname(entry); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const manifest = path.join(dir, 'package.json');
    if (!existsSync(manifest)) continue;
    const parsed = JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string; version: string };
    if (parsed.name === name) return { dir, version: parsed.version };
  }
  throw new Error(`no package.json of ${name} above ${entry}`);
}

/** The Chromium to drive: the packaged one, else /usr/bin/chromium. */
export async function chromiumExecutable(): Promise<string> {
  try {
    return await packagedChromium();
  } catch (error) {
    if (existsSync(SYSTEM_CHROMIUM)) return SYSTEM_CHROMIUM;
    throw new Error(
      `no Chromium for the browser tests: the @sparticuz/chromium dev dependency gave none (${String(error)}) ` +
        `and ${SYSTEM_CHROMIUM} is absent; run \`npm ci\`, or install Debian's chromium`,
      { cause: error },
    );
  }
}

export async function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: await chromiumExecutable(), headless: true, args: FLAGS });
}
