/**
 * Turns a decoded task result (msgpack: may hold bigint, bytes, Map, Set, Date) into plain JSON:
 * bigint as a decimal string, bytes as base64, Map as an object, Set as an array, Date as ISO text.
 */
export function toJson(value: unknown, depth = 0): unknown {
  if (depth > 100) return null;
  if (typeof value === 'bigint') return value.toString();
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') return null;
  if (value === null || typeof value !== 'object') return value;
  if (value instanceof Date) return value.toISOString();
  if (value instanceof Uint8Array)
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
  if (value instanceof Map) {
    return Object.fromEntries([...value].map(([k, v]) => [String(k), toJson(v, depth + 1)]));
  }
  if (value instanceof Set) return [...value].map((v) => toJson(v, depth + 1));
  if (Array.isArray(value)) return value.map((v) => toJson(v, depth + 1));
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v, depth + 1)]));
}
