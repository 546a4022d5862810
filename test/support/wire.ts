/**
 * A few protobuf wire-format writers for tests that need bytes no generated
 * encoder would produce (unknown fields, wrong wire types, groups, repeated
 * occurrences, truncation): https://protobuf.dev/programming-guides/encoding/.
 */

/** Wire types. */
export const WT = { varint: 0, i64: 1, len: 2, sgroup: 3, egroup: 4, i32: 5 } as const;

/** A varint of a non-negative integer below 2^64. */
export function varint(value: number | bigint): Uint8Array {
  let v = BigInt(value);
  const out: number[] = [];
  do {
    const byte = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v > 0n ? byte | 0x80 : byte);
  } while (v > 0n);
  return Uint8Array.from(out);
}

/** A tag: field number and wire type. */
export function tag(field: number, wireType: number): Uint8Array {
  return varint((BigInt(field) << 3n) | BigInt(wireType));
}

/** Concatenates byte arrays. */
export function concat(...parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A LEN record: tag, length, payload. */
export function lenField(field: number, payload: Uint8Array): Uint8Array {
  return concat(tag(field, WT.len), varint(payload.length), payload);
}

/** A string record (UTF-8). */
export function strField(field: number, text: string): Uint8Array {
  return lenField(field, new TextEncoder().encode(text));
}

/** A `map<string, string>` entry record. */
export function mapEntry(field: number, key: string | undefined, value: string | undefined): Uint8Array {
  return lenField(field, concat(key === undefined ? new Uint8Array() : strField(1, key), value === undefined ? new Uint8Array() : strField(2, value)));
}
