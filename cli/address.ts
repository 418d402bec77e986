/** Parses `host:port`, `[v6]:port`, `host`, `:port` or `port` (the --http option of `node` and `serve`). */
import { HTTP_DEFAULTS } from '../http/auth.ts';
import { CliError, EXIT } from './output.ts';

export function parseAddress(value: string | true | undefined): { host: string; port: number } {
  if (value === undefined || value === true || value === '') return { ...HTTP_DEFAULTS };
  if (/^\d+$/.test(value)) return { host: HTTP_DEFAULTS.host, port: checkPort(Number(value), value) };
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*))(?::(\d+))?$/.exec(value);
  if (!m)
    throw new CliError(EXIT.USAGE, `Expected host:port (IPv6 as [::1]:port), got ${JSON.stringify(value)}.`);
  return {
    host: m[1] ?? (m[2] || HTTP_DEFAULTS.host),
    port: m[3] === undefined ? HTTP_DEFAULTS.port : checkPort(Number(m[3]), value),
  };
}

function checkPort(port: number, value: string): number {
  if (port > 65535) throw new CliError(EXIT.USAGE, `Port out of range in ${JSON.stringify(value)}.`);
  return port;
}
