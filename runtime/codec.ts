/**
 * msgpack encoding of task messages and results. Plain maps (no shared record structures), so bytes
 * written by any node or thread decode anywhere. Values msgpack would silently drop (functions) or
 * cannot represent (symbols, cycles) are refused with a clear error instead.
 */
import { Packr } from 'msgpackr';
import { TaskmillError } from './errors.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });
const MAX_DEPTH = 100;

export function encode(value: unknown, what = 'message'): Buffer {
  assertEncodable(value, what, 0, []);
  try {
    return packr.pack(value);
  } catch (error) {
    throw new TaskmillError(
      'ENCODE_FAILED',
      `The ${what} cannot be encoded as msgpack: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
}

export function decode<T = unknown>(bytes: Uint8Array | null | undefined): T {
  if (!bytes || bytes.length === 0) return undefined as T;
  return packr.unpack(bytes) as T;
}

function assertEncodable(value: unknown, what: string, depth: number, path: unknown[]): void {
  const type = typeof value;
  if (type === 'function' || type === 'symbol') {
    throw new TaskmillError('ENCODE_FAILED', `The ${what} contains a ${type}, which msgpack cannot carry.`);
  }
  if (value === null || type !== 'object') return;
  if (ArrayBuffer.isView(value) || value instanceof Date) return;
  if (depth > MAX_DEPTH || path.includes(value)) {
    throw new TaskmillError(
      'ENCODE_FAILED',
      `The ${what} is circular or nested deeper than ${MAX_DEPTH} levels.`,
    );
  }
  path.push(value);
  const children =
    value instanceof Map
      ? [...value.keys(), ...value.values()]
      : value instanceof Set
        ? [...value]
        : Object.values(value as object);
  for (const child of children) assertEncodable(child, what, depth + 1, path);
  path.pop();
}
