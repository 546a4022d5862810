/**
 * Generators of JWT-like strings for the property tests: validly signed
 * (HS256, with the key of {@link LEGACY_POLICY}) with claims of every JSON
 * type and edge value, unsigned, truncated, re-joined, or garbage.
 */
import { createHmac, createSecretKey, randomBytes } from "node:crypto";
import fc from "fast-check";
import type { LegacyJwtPolicy } from "../../src/domain/legacy-jwt.js";
import { NO_LEGACY } from "../support/fakes.js";
import { nastyString } from "./support.js";

const SECRET = randomBytes(32);
/** A legacy policy accepting HS256 JWTs signed by the generators here. */
export const LEGACY_POLICY: LegacyJwtPolicy = { ...NO_LEGACY, keys: [{ alg: "HS256", key: createSecretKey(SECRET), label: "test" }] };
/** The time the properties run at (the fakes' fixed clock). */
export const NOW = new Date("2026-11-22T12:00:00.000Z");
const NOW_S = NOW.getTime() / 1000;

/** base64url of a string, or of a value's JSON. */
export const b64 = (value: unknown) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** A compact JWS over any header and payload text, HS256-signed with the test key (so it reaches claim checks). */
export function sign(header: unknown, payload: unknown): string {
  const input = `${b64(header)}.${b64(payload)}`;
  return `${input}.${createHmac("sha256", SECRET).update(input).digest("base64url")}`;
}

/** Claim values of every JSON type, with numbers at and past every edge a Date or an int64 has. */
const claimValue = fc.oneof(
  fc.constantFrom(NOW_S + 3600, NOW_S - 3600, 0, -1, -62_135_596_801, -62_135_596_800, 253_402_300_799, 253_402_300_800, 1e300, -1e300, 8.64e12, 8.64e12 + 1, -8.64e12 - 1, 2 ** 63, -(2 ** 63), 2 ** 53 + 1, 0.5, 1e-300, Number.MAX_VALUE),
  fc.double(),
  fc.integer(),
  nastyString,
  fc.jsonValue({ maxDepth: 2 }),
);

const claims = fc.record(
  {
    sub: fc.oneof(nastyString, claimValue),
    exp: fc.oneof({ weight: 3, arbitrary: fc.constant(NOW_S + 3600) }, { weight: 2, arbitrary: claimValue }),
    iat: claimValue,
    nbf: claimValue,
    jti: fc.oneof(nastyString, claimValue),
    iss: fc.oneof(nastyString, claimValue),
    aud: fc.oneof(nastyString, fc.array(nastyString, { maxLength: 3 }), claimValue),
    env: fc.oneof(fc.constantFrom("development", "production", "dev", "prod"), nastyString, claimValue),
    teams: fc.oneof(fc.array(nastyString, { maxLength: 4 }), claimValue),
    namespaces: fc.oneof(fc.array(nastyString, { maxLength: 4 }), claimValue),
    scopes: fc.oneof(fc.array(nastyString, { maxLength: 4 }), claimValue),
    scope: fc.oneof(nastyString, claimValue),
    user: fc.oneof(fc.record({ email: fc.oneof(nastyString, claimValue), full_name: fc.oneof(nastyString, claimValue), is_admin: claimValue }, { requiredKeys: [] }), claimValue),
    is_admin: claimValue,
  },
  { requiredKeys: [] },
);

const header = fc.oneof(
  { weight: 4, arbitrary: fc.constant({ alg: "HS256", typ: "JWT" }) },
  { weight: 1, arbitrary: fc.record({ alg: fc.oneof(fc.constantFrom("HS256", "none", "None", "RS256", "ES256", "HS512", ""), claimValue), kid: fc.oneof(nastyString, claimValue), typ: claimValue }, { requiredKeys: [] }) },
  { weight: 1, arbitrary: fc.constantFrom({ alg: "HS256", jwk: {} }, { alg: "HS256", crit: ["exp"] }, { alg: "HS256", jku: "https://x" }, { alg: "HS256", b64: false, crit: ["b64"] }) },
);

/** Any JWT-like string: signed with odd claims, unsigned, truncated, re-joined, or plain garbage. */
export const jwtish = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(header, claims).map(([h, c]) => sign(h, c)) },
  { weight: 1, arbitrary: fc.tuple(header, fc.jsonValue({ maxDepth: 2 })).map(([h, p]) => sign(h, p)) },
  { weight: 1, arbitrary: fc.tuple(fc.string({ unit: "binary", maxLength: 40 }), fc.string({ unit: "binary", maxLength: 40 })).map(([h, p]) => sign(h, p)) },
  { weight: 1, arbitrary: fc.tuple(claims, fc.nat(200)).map(([c, cut]) => sign({ alg: "HS256" }, c).slice(0, -cut - 1)) },
  { weight: 1, arbitrary: fc.array(fc.oneof(nastyString, fc.constant("eyJhbGciOiJIUzI1NiJ9")), { minLength: 1, maxLength: 6 }).map((parts) => parts.join(".")) },
  { weight: 1, arbitrary: nastyString.map((s) => `eyJ${s}`) },
);

