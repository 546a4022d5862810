import { invalidArgument } from "./errors.js";

/**
 * Input rules shared by every use case. Each function either returns the
 * normalised value or throws `invalid_argument` naming the field and the rule,
 * before anything is written.
 */

// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]{1,128}$/;
const LABEL = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;
const METADATA_KEY = /^[A-Za-z0-9_.-]{1,64}$/;
/** A UUID in its textual form (RFC 9562 §4). */
export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// C0 and C1 controls, and the Unicode line/paragraph separators: they forge log lines.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** Most entries in one list field. */
export const MAX_LIST_ENTRIES = 64;
/** Most metadata entries. */
export const MAX_METADATA_ENTRIES = 32;

/** A required single line of text: trimmed, 1..max characters, no control characters. */
export function requiredText(field: string, value: string, max: number): string {
  const text = value.trim();
  if (text.length === 0) throw invalidArgument(field, "is required");
  return optionalText(field, text, max);
}

/** An optional single line of text: at most max characters, no control characters. */
export function optionalText(field: string, value: string, max: number): string {
  if (value.length > max) throw invalidArgument(field, `must be at most ${max} characters`);
  if (CONTROL.test(value)) throw invalidArgument(field, "must not contain control characters");
  return value.trim();
}

function list(field: string, values: readonly string[], pattern: RegExp, rule: string): string[] {
  if (values.length > MAX_LIST_ENTRIES) throw invalidArgument(field, `must have at most ${MAX_LIST_ENTRIES} entries`);
  const seen = new Set<string>();
  values.forEach((value, index) => {
    if (!pattern.test(value)) throw invalidArgument(`${field}[${index}]`, rule);
    seen.add(value);
  });
  // Duplicates carry no meaning; keep the first occurrence's order.
  return [...seen];
}

/** Scopes: RFC 6749 §3.3 scope tokens, de-duplicated. */
export function scopes(field: string, values: readonly string[]): string[] {
  return list(field, values, SCOPE_TOKEN, 'must be 1 to 128 printable ASCII characters without space, " or \\ (RFC 6749 §3.3)');
}

/** Team or namespace names, de-duplicated. */
export function labels(field: string, values: readonly string[]): string[] {
  return list(field, values, LABEL, "must be 1 to 128 letters, digits or ._:/- and start with a letter or digit");
}

/** A single team or namespace name (a filter); empty means none. */
export function optionalLabel(field: string, value: string): string | undefined {
  if (value === "") return undefined;
  if (!LABEL.test(value)) throw invalidArgument(field, "must be 1 to 128 letters, digits or ._:/- and start with a letter or digit");
  return value;
}

/**
 * Free-form labels: bounded in count and size, keys of a safe alphabet. A bad
 * entry is named by its index in key order (UTF-16 code unit order, the order
 * the stored labels come back in), never by its key: a key may be anything a
 * caller pasted, a token included, and error messages must not repeat it.
 */
export function metadata(field: string, values: Readonly<Record<string, string>>): Record<string, string> {
  const entries = Object.entries(values);
  if (entries.length > MAX_METADATA_ENTRIES) throw invalidArgument(field, `must have at most ${MAX_METADATA_ENTRIES} entries`);
  const out: Record<string, string> = {};
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  entries.forEach(([key, value], index) => {
    const at = `${field}[${index}]`;
    if (!METADATA_KEY.test(key)) throw invalidArgument(at, `keys must be 1 to 64 letters, digits or ._- ${IN_KEY_ORDER}`);
    if (value.length > MAX_METADATA_VALUE) throw invalidArgument(at, `values must be at most ${MAX_METADATA_VALUE} characters ${IN_KEY_ORDER}`);
    if (CONTROL.test(value)) throw invalidArgument(at, `values must not contain control characters ${IN_KEY_ORDER}`);
    out[key] = value.trim();
  });
  return out;
}

const MAX_METADATA_VALUE = 512;
const IN_KEY_ORDER = "(entries counted in key order from 0)";

/** A token id: a UUID, lower-cased. */
export function uuid(field: string, value: string): string {
  if (value === "") throw invalidArgument(field, "is required");
  if (!UUID_PATTERN.test(value)) throw invalidArgument(field, "must be a UUID");
  return value.toLowerCase();
}

/** A page size: 0 means the default; otherwise 1..max. */
export function pageSize(field: string, value: number, defaultSize: number, max: number): number {
  if (value === 0) return defaultSize;
  if (!Number.isInteger(value) || value < 1 || value > max) throw invalidArgument(field, `must be between 1 and ${max} (0 means ${defaultSize})`);
  return value;
}

/** Milliseconds as the largest whole unit, e.g. `90d`, `12h`, `1s`, `100ms`. */
export function formatDuration(ms: number): string {
  // Zero is a whole number of every unit; "0s" reads best.
  if (ms === 0) return "0s";
  const units: [string, number][] = [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]];
  for (const [unit, size] of units) if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

/**
 * A span of time in milliseconds, within [minMs, maxMs]. NaN (what the edge
 * passes for a Duration outside protobuf's own range) fails like any other
 * out-of-range value, so every bad span gets the same message naming the
 * field and its range, and never the value sent.
 */
export function durationWithin(field: string, ms: number, minMs: number, maxMs: number): number {
  // Written as a negated conjunction so NaN fails too.
  if (!(ms >= minMs && ms <= maxMs)) throw invalidArgument(field, `must be between ${formatDuration(minMs)} and ${formatDuration(maxMs)}`);
  return ms;
}

/**
 * The span of instants protobuf's Timestamp can hold (google/protobuf/
 * timestamp.proto: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z);
 * both JavaScript's Date and PostgreSQL's timestamptz hold it whole.
 */
export const EARLIEST_TIME_MS = Date.parse("0001-01-01T00:00:00.000Z");
/** See {@link EARLIEST_TIME_MS}. */
export const LATEST_TIME_MS = Date.parse("9999-12-31T23:59:59.999Z");

/**
 * An instant within protobuf's Timestamp range. An invalid Date (what the
 * edge passes for a Timestamp outside that range) fails too.
 */
export function time(field: string, at: Date): Date {
  const ms = at.getTime();
  if (!(ms >= EARLIEST_TIME_MS && ms <= LATEST_TIME_MS)) {
    throw invalidArgument(field, "must be a valid time between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z");
  }
  return at;
}
