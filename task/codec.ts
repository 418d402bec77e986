/**
 * msgpack encoding of task messages and results. Plain maps (no shared record structures), so bytes
 * written by any node or thread decode anywhere. Values msgpack would silently drop (functions) or
 * cannot represent (symbols, cycles) or would rename (a "__proto__" key) are refused with a clear error
 * instead.
 *
 * Every encoded value owns an ArrayBuffer of exactly its size. msgpackr packs into one reusable buffer
 * that grows to fit the largest value it has packed and hands out views onto it; a view posted to
 * another thread (structured clone) copies its whole backing buffer, so after one 20 MB result every
 * tiny outcome of that thread cost a 20 MB+ copy and kept that much alive on the main thread. The copy
 * made here costs the value's own size (measured: no slower than the view for small values, 1e6
 * encodes of a small object in about 0.3 s either way), and a packer whose buffer grew past
 * PACKER_RESET_BYTES is replaced, so a large value's buffer is not kept for the life of the thread.
 *
 * Size limits (documented in docs/limits.md) are named here, next to the encoding they bound.
 *
 * Module state (the packer) belongs to the thread that imported the module: main thread or worker.
 */
import { Packr, Unpackr } from 'msgpackr';
import { TaskmillError } from './errors.ts';

const MiB = 1024 * 1024;

/**
 * Largest encoded task message or join message (node option limits.maxMessageBytes bounds what
 * handlers send; schedule calls apply this default).
 */
export const DEFAULT_MAX_MESSAGE_BYTES = MiB;
/** Largest encoded result a handler may return (node option limits.maxResultBytes). */
export const DEFAULT_MAX_RESULT_BYTES = 16 * MiB;
/** Longest stored error text, in UTF-8 bytes; longer ones are truncated (node option limits.maxErrorBytes). */
export const DEFAULT_MAX_ERROR_BYTES = 64 * 1024;
/**
 * Ceiling of the message and result limits. A batch of outcomes travels to PostgreSQL as hex text
 * (twice the bytes) inside one JavaScript string, which V8 caps near 512 M characters.
 */
export const MAX_PAYLOAD_LIMIT_BYTES = 128 * MiB;

const PACKER_OPTIONS = { useRecords: false, moreTypes: false } as const;
/** A packer whose buffer grew past this is dropped after use and a fresh one starts small. */
const PACKER_RESET_BYTES = MiB;
const MAX_DEPTH = 100;

let packr = new Packr(PACKER_OPTIONS);
const unpackr = new Unpackr(PACKER_OPTIONS);

/**
 * Encodes a value as msgpack into a buffer of its own. `maxBytes` bounds the encoded size: over it, a
 * TaskmillError RESULT_TOO_LARGE (when `what` is 'result') or MESSAGE_TOO_LARGE is thrown.
 */
export function encode(value: unknown, what = 'message', maxBytes = Infinity): Buffer {
  assertEncodable(value, what, 0, []);
  let packed: Buffer;
  try {
    packed = packr.pack(value);
  } catch (error) {
    packr = new Packr(PACKER_OPTIONS);
    throw new TaskmillError(
      'ENCODE_FAILED',
      `The ${what} cannot be encoded as msgpack: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
  if (packed.buffer.byteLength > PACKER_RESET_BYTES) packr = new Packr(PACKER_OPTIONS);
  assertWithinLimit(packed, maxBytes, what);
  const own = Buffer.allocUnsafeSlow(packed.length);
  packed.copy(own);
  return own;
}

export function decode<T = unknown>(bytes: Uint8Array | null | undefined): T {
  if (!bytes || bytes.length === 0) return undefined as T;
  return unpackr.unpack(bytes) as T;
}

/**
 * Throws when encoded bytes exceed `maxBytes`: RESULT_TOO_LARGE for a result (`what` 'result'),
 * MESSAGE_TOO_LARGE for anything else (a task message, a join message).
 */
export function assertWithinLimit(bytes: Uint8Array, maxBytes: number, what: string): void {
  if (bytes.byteLength <= maxBytes) return;
  throw new TaskmillError(
    what === 'result' ? 'RESULT_TOO_LARGE' : 'MESSAGE_TOO_LARGE',
    `The ${what} encodes to ${formatBytes(bytes.byteLength)}, over the limit of ${formatBytes(maxBytes)}: ` +
      `store large data elsewhere (a table, an object store) and pass a reference, or raise ` +
      `the node option limits.${what === 'result' ? 'maxResultBytes' : 'maxMessageBytes'}.`,
  );
}

export function formatBytes(n: number): string {
  if (n >= MiB) return `${+(n / MiB).toFixed(1)} MiB (${n} bytes)`;
  if (n >= 1024) return `${+(n / 1024).toFixed(1)} KiB (${n} bytes)`;
  return `${n} bytes`;
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
  if (Object.hasOwn(value as object, '__proto__')) {
    // msgpackr decodes this key as '__proto_' (its guard against prototype pollution): refused rather
    // than delivered renamed.
    throw new TaskmillError(
      'ENCODE_FAILED',
      `The ${what} has a key named "__proto__", which does not survive decoding: rename it.`,
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
