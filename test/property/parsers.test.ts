import { createHash, randomBytes } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { TokenError } from "../../src/domain/errors.js";
import { verifyLegacyJwt } from "../../src/domain/legacy-jwt.js";
import { PageTokens } from "../../src/domain/paging.js";
import { classifyToken, digestKey, digestToken, displayHint, keyOfDigest, mintToken } from "../../src/domain/token-format.js";
import { EARLIEST_TIME_MS, LATEST_TIME_MS } from "../../src/domain/validation.js";
import { LEGACY_POLICY as POLICY, NOW, b64, jwtish } from "./jwt-arbitraries.js";
import { VOCABULARY, counted, echoIn, nastyString, params, reportCases, timeout } from "./support.js";

/**
 * Properties of the parsers that see presented values before anything else:
 * the opaque token format, the legacy JWT verifier and page tokens. They
 * never throw on any input, refuse with fixed messages, and never repeat
 * what they were given.
 */
reportCases("parsers.test.ts");

const OPAQUE = /^(cf|cfstg|cfprd)-[0-9A-Za-z]{22}$/;
const PREFIX_ENV = { cf: "development", cfstg: "staging", cfprd: "production" } as const;

/** Strings near the opaque token shape: right and wrong prefixes, lengths and alphabets. */
const tokenish = fc.oneof(
  nastyString,
  fc.tuple(fc.constantFrom("cf-", "cfstg-", "cfprd-", "cf_", "cfprd", "Cf-", "cfprd--", ""), fc.stringMatching(/^[0-9A-Za-z]{20,24}$/)).map(([p, b]) => p + b),
  fc.tuple(fc.constantFrom("cf-", "cfstg-", "cfprd-"), fc.string({ unit: "binary", minLength: 22, maxLength: 22 })).map(([p, b]) => p + b),
);

describe("opaque token format", () => {
  it("classifies any string without throwing, as opaque exactly when it has the shape", () => {
    fc.assert(
      fc.property(tokenish, (value) => {
        counted();
        const shape = classifyToken(value);
        if (OPAQUE.test(value)) expect(shape).toEqual({ shape: "opaque", environment: PREFIX_ENV[value.slice(0, value.indexOf("-")) as keyof typeof PREFIX_ENV] });
        else expect(shape.shape).toBe(value.startsWith("eyJ") ? "jwt" : "malformed");
      }),
      params(20_000),
    );
  }, timeout(30_000));

  it("shows at most the prefix and last four characters of any value", () => {
    fc.assert(
      fc.property(tokenish, (value) => {
        counted();
        const hint = displayHint(value);
        expect(echoIn(hint, [value])).toBeUndefined();
        if (OPAQUE.test(value)) expect(hint).toBe(`${value.slice(0, value.indexOf("-"))}-…${value.slice(-4)}`);
        else expect(hint).toMatch(/^(eyJ…)?\(\d+ chars\)$/);
      }),
      params(15_000),
    );
  }, timeout(30_000));

  it("digests any string the same way in every form", () => {
    fc.assert(
      fc.property(tokenish, (value) => {
        counted();
        const digest = digestToken(value);
        expect(digest).toHaveLength(32);
        expect(keyOfDigest(digest)).toBe(digestKey(value));
        expect(digest.equals(createHash("sha256").update(value).digest())).toBe(true);
      }),
      params(10_000),
    );
  }, timeout(30_000));

  it("mints tokens of the shape it parses", () => {
    fc.assert(
      fc.property(fc.constantFrom("development", "staging", "production") as fc.Arbitrary<"development" | "staging" | "production">, (environment) => {
        counted();
        const minted = mintToken(environment);
        expect(classifyToken(minted.token)).toEqual({ shape: "opaque", environment });
        expect(minted.digest.equals(digestToken(minted.token))).toBe(true);
        expect(minted.displayHint).toBe(displayHint(minted.token));
      }),
      params(3_000),
    );
  }, timeout(30_000));
});

// ------------------------------------------------------------------ legacy JWT

const VALID_DATE = (d: Date | undefined) => d === undefined || (Number.isFinite(d.getTime()) && d.getTime() >= EARLIEST_TIME_MS && d.getTime() <= LATEST_TIME_MS);

describe("legacy JWT verifier", () => {
  it("never throws, and either yields claims of the right types and valid dates or refuses without repeating the JWT", async () => {
    await fc.assert(
      fc.asyncProperty(jwtish, async (jwt) => {
        counted();
        const result = await verifyLegacyJwt(POLICY, jwt, NOW);
        if (result.ok) {
          const c = result.claims;
          expect(typeof c.subject === "string" && c.subject !== "").toBe(true);
          for (const list of [c.teams, c.scopes, c.namespaces]) expect(list.every((v) => typeof v === "string")).toBe(true);
          expect(VALID_DATE(c.expiresAt ?? undefined), `exp gives ${String(c.expiresAt)}`).toBe(true);
          expect(VALID_DATE(c.issuedAt), `iat gives ${String(c.issuedAt)}`).toBe(true);
          expect(VALID_DATE(c.notBefore), `nbf gives ${String(c.notBefore)}`).toBe(true);
          expect(c.jti === undefined || typeof c.jti === "string").toBe(true);
          expect(c.issuer === undefined || typeof c.issuer === "string", `iss is ${typeof c.issuer}`).toBe(true);
          expect(c.audience.every((a) => typeof a === "string"), "aud entries are strings").toBe(true);
        } else {
          expect(["malformed", "invalid", "expired"]).toContain(result.reason);
          expect(echoIn(result.message, jwt.split("."), VOCABULARY), result.message).toBeUndefined();
        }
      }),
      params(12_000),
    );
  }, timeout(60_000));
});

// ------------------------------------------------------------------ page tokens

const pages = new PageTokens(randomBytes(32));
const uuid = fc.uuid();
const cursorTime = fc.integer({ min: EARLIEST_TIME_MS, max: LATEST_TIME_MS }).map((ms) => new Date(ms));
const filters = fc.jsonValue({ maxDepth: 2 });

function refusal(run: () => unknown): string | undefined {
  try {
    run();
    return undefined;
  } catch (error) {
    expect(error).toBeInstanceOf(TokenError);
    expect((error as TokenError).code).toBe("invalid_argument");
    expect((error as TokenError).field).toBe("page_token");
    return (error as TokenError).message;
  }
}

describe("page tokens", () => {
  it("round-trip any cursor under the same filters, ids and legacy subjects alike", () => {
    // Legacy usage pages by subject: any string of 1 to 256 characters (the list's own check).
    const subject = fc.string({ unit: fc.oneof(fc.constantFrom("\u0000", "\"", "中", "\uD800"), fc.string({ unit: "binary", minLength: 1, maxLength: 1 })), minLength: 1, maxLength: 256, size: "max" }).map((v) => v.slice(0, 256)); // code points may take two UTF-16 units
    const isSubject = (id: string) => id.length > 0 && id.length <= 256;
    fc.assert(
      fc.property(cursorTime, fc.oneof(uuid, subject), filters, (at, id, f) => {
        counted();
        expect(pages.decode("page_token", pages.encode({ at, id }, f), f, isSubject)).toEqual({ at, id });
      }),
      params(5_000),
    );
  }, timeout(30_000));

  it("refuse any string that is not one of ours, cleanly and without repeating it", () => {
    const forged = fc.oneof(
      nastyString,
      fc.record({ v: fc.oneof(fc.constant(2), fc.jsonValue()), t: fc.oneof(fc.constantFrom(1e300, -1e300, 8.64e15 + 1, NaN, 0), fc.double(), fc.jsonValue()), i: fc.oneof(uuid, fc.jsonValue()), f: fc.jsonValue() }, { requiredKeys: [] })
        .chain((body) => fc.tuple(fc.constant(b64(body)), fc.oneof(fc.constant(""), fc.base64String(), fc.stringMatching(/^[A-Za-z0-9_-]{43}$/))))
        .map(([body, mac]) => `${body}.${mac}`),
    );
    fc.assert(
      fc.property(forged, (token) => {
        counted();
        const message = refusal(() => pages.decode("page_token", token, {}));
        if (token !== "") expect(message).toBe("page_token: is not a page token from this service");
        if (message) expect(echoIn(message, [token], VOCABULARY)).toBeUndefined();
      }),
      params(10_000),
    );
  }, timeout(30_000));

  it("refuse a real token with any one character changed, added or removed", () => {
    fc.assert(
      fc.property(cursorTime, uuid, fc.nat(), fc.constantFrom("replace", "insert", "delete"), fc.stringMatching(/^[A-Za-z0-9_.=+/-]$/), (at, id, where, how, char) => {
        const token = pages.encode({ at, id }, {});
        const i = where % token.length;
        const changed = how === "replace" ? token.slice(0, i) + char + token.slice(i + 1) : how === "insert" ? token.slice(0, i) + char + token.slice(i) : token.slice(0, i) + token.slice(i + 1);
        fc.pre(changed !== token);
        counted();
        expect(refusal(() => pages.decode("page_token", changed, {}))).toBe("page_token: is not a page token from this service");
      }),
      params(5_000),
    );
  }, timeout(30_000));

  it("refuse a token under other filters, or from another key", () => {
    const other = new PageTokens(randomBytes(32));
    fc.assert(
      fc.property(cursorTime, uuid, filters, filters, (at, id, f, g) => {
        fc.pre(JSON.stringify(f) !== JSON.stringify(g));
        counted();
        expect(refusal(() => pages.decode("page_token", pages.encode({ at, id }, f), g))).toMatch(/^page_token: was made for other filters/);
        expect(refusal(() => pages.decode("page_token", other.encode({ at, id }, f), f))).toBe("page_token: is not a page token from this service");
      }),
      params(3_000),
    );
  }, timeout(30_000));
});
