/**
 * Shared pieces of the property-based tests: how many cases to run, the
 * count of cases that ran, adversarial value generators, and the checks
 * every case makes of an error (right code, nothing echoed).
 */
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import fc from "fast-check";
import { afterAll, expect, inject } from "vitest";

/**
 * Multiplies every property's case count. 1 in `npm test`; `npm run fuzz`
 * sets `FUZZ_SCALE` (20 unless given) for long runs.
 */
export const FUZZ_SCALE = Math.max(1, Number(process.env["FUZZ_SCALE"] ?? "1") || 1);

/** Cases for a property: its default count times {@link FUZZ_SCALE}. */
export function runs(defaultRuns: number): number {
  return Math.round(defaultRuns * FUZZ_SCALE);
}

/** A test timeout that grows with the scale: `ms` per unit of scale. */
export function timeout(ms: number): number {
  return ms * FUZZ_SCALE;
}

/**
 * fast-check parameters: the run count, and a seed from `FUZZ_SEED` when a
 * failure is being replayed (fast-check prints the seed and path of every
 * counterexample).
 */
export function params(defaultRuns: number): fc.Parameters<unknown> {
  const seed = process.env["FUZZ_SEED"];
  return { numRuns: runs(defaultRuns), ...(seed ? { seed: Number(seed) } : {}) };
}

let cases = 0;
/** Counts one generated case; every property calls it once per case. */
export function counted(): void {
  cases++;
}

/**
 * After each file, adds its case count to the run's tally, which the global
 * setup (`count-cases.ts`) sums and prints when the run ends.
 */
export function reportCases(file: string): void {
  afterAll(() => {
    const dir = inject("propertyCaseDir" as never) as string | undefined;
    console.log(`property cases in ${file}: ${cases}`);
    if (dir) appendFileSync(join(dir, "counts"), `${cases}\n`);
  });
}

// ---------------------------------------------------------------- generators

/** int64 edges and their neighbours, and huge values of both signs. */
export const INT64_EDGES = [
  0n, 1n, -1n, 2n ** 31n - 1n, -(2n ** 31n), 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, -(2n ** 53n) - 1n,
  2n ** 63n - 1n, -(2n ** 63n), 2n ** 63n - 2n, -(2n ** 63n) + 1n,
  9_000_000_000_000n, 5_800_000_000_000_000_000n, -9_200_000_000_000_000_000n,
  315_576_000_000n, 315_576_000_001n, -315_576_000_001n, 253_402_300_799n, 253_402_300_800n, -62_135_596_800n, -62_135_596_801n,
];

/** An int64, weighted to the edges. */
export const int64 = fc.oneof(
  { weight: 2, arbitrary: fc.constantFrom(...INT64_EDGES) },
  { weight: 2, arbitrary: fc.bigInt(-(2n ** 63n), 2n ** 63n - 1n) },
  { weight: 1, arbitrary: fc.bigInt(-100_000_000_000n, 100_000_000_000n) },
);

/** An int32, weighted to the edges. */
export const int32 = fc.oneof(
  fc.constantFrom(0, 1, -1, 50, 499, 500, 501, 2 ** 31 - 1, -(2 ** 31), 1000),
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  fc.integer({ min: -10, max: 600 }),
);

/** Protobuf nanos: in range, just outside it, and at the int32 edges. */
export const nanos = fc.oneof(
  fc.constantFrom(0, 1, -1, 999_999_999, -999_999_999, 1_000_000_000, -1_000_000_000, 2 ** 31 - 1, -(2 ** 31), 500_000_000),
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
);

/** A Duration or Timestamp shape with any int64 seconds and any int32 nanos. */
export const secondsAndNanos = fc.record({ seconds: int64, nanos });

/**
 * Adversarial strings: anything at all (lone surrogates included), long
 * runs, control and separator characters, token look-alikes, JSON and SQL
 * fragments, number-ish text.
 */
export const nastyString: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.string({ unit: "binary", maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: "grapheme", maxLength: 20 }) },
  { weight: 2, arbitrary: fc.string({ maxLength: 30 }) },
  { weight: 1, arbitrary: fc.constantFrom("", " ", "\t", "\u0000", "\u2028", "\u0085", "\uFEFF", "\uD800", "💥", "e\u0301", "null", "NaN", "-0", "1e309", "0x7fffffffffffffff", "'; DROP TABLE tokens;--", "{\"v\":1}", "../../etc/passwd", "%00", "${7*7}", "a".repeat(129), "b".repeat(513), "c".repeat(4097)) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom("cf-", "cfstg-", "cfprd-", "cfdev-", "CF-", "eyJ"), fc.stringMatching(/^[0-9A-Za-z]{0,30}$/)).map(([p, b]) => p + b) },
  { weight: 1, arbitrary: fc.tuple(fc.string({ maxLength: 3 }), fc.integer({ min: 0, max: 600 })).map(([s, n]) => s.repeat(Math.max(1, n))) },
);

// ---------------------------------------------------------------- checks

/** Codes that mean the service failed: never the answer to bad input. */
export const SERVER_FAULTS: readonly Code[] = [Code.Internal, Code.Unknown, Code.Unavailable, Code.DataLoss, Code.Unimplemented];

/** Every string in a value (map keys included), recursively. */
export function stringsIn(value: unknown, out: string[] = []): string[] {
  if (typeof value === "string") out.push(value);
  else if (Array.isArray(value)) for (const v of value) stringsIn(v, out);
  else if (value !== null && typeof value === "object" && !(value instanceof Uint8Array)) {
    for (const [k, v] of Object.entries(value)) {
      out.push(k);
      stringsIn(v, out);
    }
  }
  return out;
}

/** How many consecutive characters of a presented value a message may repeat. */
export const MAX_ECHO = 7;

/**
 * The first run of more than {@link MAX_ECHO} characters of any presented
 * string that `message` repeats, or undefined. Runs that are part of the
 * service's own wording (`vocabulary`) do not count: a caller that sends
 * "must be between" has not had its input echoed.
 */
export function echoIn(message: string, presented: readonly string[], vocabulary = ""): string | undefined {
  const width = MAX_ECHO + 1;
  for (const value of presented) {
    for (let i = 0; i + width <= value.length; i++) {
      const run = value.slice(i, i + width);
      if (message.includes(run) && !vocabulary.includes(run)) return run;
    }
  }
  return undefined;
}

/** The code and message of what a call threw, or OK. */
export function outcome(error: unknown): { code: Code | "ok"; message: string } {
  if (error === undefined) return { code: "ok", message: "" };
  const e = ConnectError.from(error);
  return { code: e.code, message: e.rawMessage };
}

/**
 * The checks every failing case makes: not a server fault, the expected code
 * when one is known, and no echo of anything presented.
 */
export function expectCleanRefusal(
  got: { code: Code | "ok"; message: string },
  presented: readonly string[],
  allowed: readonly (Code | "ok")[],
  context: unknown,
): void {
  if (got.code !== "ok") expect(SERVER_FAULTS, `server fault ${Code[got.code]} "${got.message}" for ${preview(context)}`).not.toContain(got.code);
  expect(allowed, `code ${got.code === "ok" ? "OK" : Code[got.code]} "${got.message}" for ${preview(context)}`).toContain(got.code);
  const echo = echoIn(got.message, presented, VOCABULARY);
  expect(echo, `message "${got.message}" repeats presented text`).toBeUndefined();
}

/** A short, safe description of a failing case (fast-check prints the full counterexample too). */
export function preview(value: unknown): string {
  const text = JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? `<${v.length} bytes>` : v)) ?? String(value);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

/**
 * The service's own wording, which a presented value may happen to contain:
 * field names, rules and fixed messages. An echo check ignores runs found here.
 */
export const VOCABULARY = [
  "name subject full_name scopes teams namespaces metadata ttl expire_time token token_id legacy_jti reason target team page_size page_token since type min_severity heartbeat_interval token_type_hint",
  "is required must be at most characters must not contain control characters must have at most entries must be 1 to 128 printable ASCII characters without space, \" or \\ (RFC 6749 §3.3)",
  "must be 1 to 128 letters, digits or ._:/- and start with a letter or digit keys must be 1 to 64 letters, digits or ._- values must be at most 512 characters (entries counted in key order from 0)",
  "must be a UUID must be between 1 and 500 (0 means 50) must be between 1s and 365d must be at least 1s and at most 365d from now must be between 100ms and 1m",
  "must be a valid time between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z is not a page token from this service was made for other filters; repeat the request with the same filters or start without a page token",
  "set one of token, token_id or legacy_jti is required (or give token_id) token_id: no such token only admins may you may only grant you hold yourself; of those asked for are not held",
  "caller credential refused: missing or malformed Authorization header this call needs the scope, which your token does not have",
  "The token is malformed. The token is not signed with an accepted key and algorithm. Unsigned JWTs are not accepted. Encrypted JWTs (JWE) are not accepted. The token has expired.",
  "Token environment mismatch: development token used in production staging token used in development production token used in development",
  // RotateToken and RevokeTokens (issue 13).
  "selector selector.subject selector.team selector.issued_by_token_id selector.name selector.created_before selector.expire_before grace_period dry_run revoke_on_successor_use",
  "set at least one of subject, team, issued_by_token_id, name, created_before, expire_before set one of token or token_id must be between 0s and 7d token: no such token",
  "the token is active expired revoked; only an active token can be rotated the token was rotated already; rotate its successor (successor_id) instead only admins may revoke another subject's tokens",
].join(" ");
