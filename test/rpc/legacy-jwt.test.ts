import { webcrypto } from "node:crypto";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { SignJWT, exportSPKI, generateKeyPair, type JWTPayload } from "jose";
import { beforeAll, describe, expect, it } from "vitest";
import { InactiveReason, TokenKind, TokenService } from "../../gen/tokens/v1/token_service_pb.js";
import { authenticateClient } from "../../src/domain/client-auth.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import type { LegacyJwtPolicy, LegacyKey } from "../../src/domain/legacy-jwt.js";
import { createLegacyAnswerCache } from "../../src/domain/introspect.js";
import { RevocationHub, type RevocationLog, type RevocationLogEntry, type RevocationLogPage } from "../../src/domain/revocation-hub.js";
import { watchRevocations, type WatchEvent } from "../../src/domain/watch.js";
import { TokenServiceHandler } from "../../src/rpc/token-service.js";
import { watchResponse } from "../../src/rpc/mapping.js";
import { NO_LEGACY, fakeDeps } from "../support/fakes.js";

const CURRENT = "current-secret-0123456789abcdef0123456789";
const PREVIOUS = "previous-secret-0123456789abcdef012345678";
const NOW = new Date("2026-11-22T12:00:00.000Z");
const nowSec = Math.floor(NOW.getTime() / 1000);

async function hmacKey(secret: string, label: string): Promise<LegacyKey> {
  const key = await webcrypto.subtle.importKey("raw", new TextEncoder().encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  return { alg: "HS256", key, label };
}

function hs256(payload: JWTPayload, secret = CURRENT, header: Record<string, unknown> = {}) {
  return new SignJWT(payload).setProtectedHeader({ alg: "HS256", typ: "JWT", ...header }).sign(new TextEncoder().encode(secret));
}

const rich = {
  sub: "alice@example.com",
  iss: "legacy-auth",
  aud: "api",
  jti: "jti-1",
  env: "development",
  iat: nowSec - 60,
  nbf: nowSec - 60,
  exp: nowSec + 3600,
  user: { email: "alice@example.com", full_name: "Alice Example", is_admin: false },
  teams: ["payments"],
  namespaces: ["prod-eu"],
  scopes: ["orders.read", "orders.write"],
};

/** The real service over Connect's in-memory transport, with legacy keys configured. */
async function setup(overrides: Partial<LegacyJwtPolicy> = {}, keys?: LegacyKey[]) {
  const policy: LegacyJwtPolicy = {
    ...NO_LEGACY,
    keys: keys ?? [await hmacKey(CURRENT, "hmac-current"), await hmacKey(PREVIOUS, "hmac-previous")],
    issuer: "legacy-auth",
    audience: ["api"],
    releaseAt: new Date("2026-11-01T00:00:00Z"),
    sunsetAt: new Date("2027-01-30T00:00:00Z"),
    ...overrides,
  };
  const base = fakeDeps({}, policy);
  // As main.ts wires it: verified answers kept until exp, evicted by jti through the hub.
  const legacyCache = createLegacyAnswerCache({ maxEntries: 100, maxBytes: 1 << 20, stalenessMs: 2000 });
  const log = new MemoryRevocationLog();
  const revocations = new RevocationHub(log);
  revocations.subscribe({ revoked: () => undefined, legacyRevoked: (jti) => legacyCache.evictJti(jti), confirmed: (at) => legacyCache.confirmUntil(at), reset: () => legacyCache.clear() });
  const f = { ...base, revocations, log, legacyCache, deps: { ...base.deps, revocations, legacy: { ...base.deps.legacy, cache: legacyCache } } };
  const admin = (await bootstrapAdmin(f.deps, "admin@example.com", "cli")).token;
  f.events.events.length = 0;
  // Count the store reads of revocations: a kept answer makes none.
  const isRevoked = f.legacyStore.isRevoked.bind(f.legacyStore);
  const revocationReads = { count: 0 };
  f.legacyStore.isRevoked = (jti: string) => {
    revocationReads.count++;
    return isRevoked(jti);
  };
  const transport = createRouterTransport(({ service }) => service(TokenService, new TokenServiceHandler(f.deps)));
  const client = createClient(TokenService, transport);
  /** Introspects and returns the answer with the response headers. */
  const introspect = async (token: string) => {
    let headers = new Headers();
    const answer = await client.introspectToken({ token }, { headers: { authorization: `Bearer ${admin}` }, onHeader: (h) => (headers = h) });
    return { answer, headers };
  };
  return { ...f, client, admin, introspect, revocationReads };
}

/** The revocation log of the store, in memory: what another replica's revocation leaves for this one to read. */
class MemoryRevocationLog implements RevocationLog {
  readonly entries: RevocationLogEntry[] = [];
  async readAfter(position: number, limit: number): Promise<RevocationLogPage> {
    const head = this.entries.length;
    return { entries: this.entries.filter((e) => e.position > position).slice(0, limit), head, prunedThrough: 0 };
  }
  async prune(): Promise<number> {
    return 0;
  }
  /** Logs a legacy jti revocation; returns its position. */
  legacy(jti: string): number {
    const position = this.entries.length + 1;
    this.entries.push({ position, kind: "legacy_jti", id: jti, key: undefined });
    return position;
  }
}

const noDeprecationHeaders = (headers: Headers) => {
  for (const name of ["x-auth-deprecation", "sunset", "link", "deprecation"]) expect(headers.get(name)).toBeNull();
};

describe("legacy JWT introspection", () => {
  it("answers a valid HS256 JWT with mapped claims, the deprecation notice and its headers", async () => {
    const s = await setup();
    const { answer, headers } = await s.introspect(await hs256(rich));
    expect(answer).toMatchObject({
      active: true, tokenKind: TokenKind.LEGACY_JWT, tokenType: "Bearer", sub: "alice@example.com", username: "alice@example.com", fullName: "Alice Example",
      scope: "orders.read orders.write", teams: ["payments"], namespaces: ["prod-eu"], isAdmin: false, jti: "jti-1", clientId: "jti-1",
      iss: "legacy-auth", aud: ["api"], exp: BigInt(nowSec + 3600), iat: BigInt(nowSec - 60), nbf: BigInt(nowSec - 60),
      deprecation: { notice: "JWT tokens are deprecated. Please migrate to API tokens.", link: "https://docs.example.com/migrate" },
    });
    expect(headers.get("x-auth-deprecation")).toBe("JWT tokens are deprecated. Please migrate to API tokens.");
    expect(headers.get("sunset")).toBe("Sat, 30 Jan 2027 00:00:00 GMT");
    expect(headers.get("deprecation")).toBe(`@${Date.parse("2026-11-01T00:00:00Z") / 1000}`);
    expect(headers.get("link")).toBe('<https://docs.example.com/migrate>; rel="deprecation"; type="text/html"');
    expect(s.legacyUsed).toEqual([{ subject: "alice@example.com", at: NOW }]);
    expect(s.events.events).toEqual([]);
  });

  it("accepts a JWT signed with the previous secret during rotation", async () => {
    const s = await setup();
    expect((await s.introspect(await hs256(rich, PREVIOUS))).answer.active).toBe(true);
  });

  it.each(["RS256", "ES256"] as const)("accepts a %s JWT verified with a configured public key", async (alg) => {
    const pair = await generateKeyPair(alg);
    const s = await setup({}, [{ alg, key: pair.publicKey, label: "pem" }]);
    const jwt = await new SignJWT(rich).setProtectedHeader({ alg }).sign(pair.privateKey);
    expect((await s.introspect(jwt)).answer).toMatchObject({ active: true, sub: "alice@example.com" });
  });

  it.each([
    ["an expired JWT", { ...rich, exp: nowSec - 1 }, InactiveReason.EXPIRED, "The token has expired."],
    ["a wrong issuer", { ...rich, iss: "someone-else" }, InactiveReason.INVALID, "The token was issued by an issuer this service does not accept."],
    ["a wrong audience", { ...rich, aud: "other-api" }, InactiveReason.INVALID, "The token is not meant for this audience."],
    ["a JWT not valid yet", { ...rich, nbf: nowSec + 600 }, InactiveReason.INVALID, "The token is not valid yet."],
    ["a JWT without exp", { ...rich, exp: undefined }, InactiveReason.INVALID, "The token has no expiry."],
  ])("refuses %s with no claims and no deprecation headers", async (_name, payload, reason, message) => {
    const s = await setup();
    const { answer, headers } = await s.introspect(await hs256(payload as JWTPayload));
    expect(answer).toMatchObject({ active: false, reason, message, sub: "", scopes: [] });
    expect(answer.deprecation).toBeUndefined();
    noDeprecationHeaders(headers);
  });

  it("refuses a JWT signed with an unknown secret", async () => {
    const s = await setup();
    expect((await s.introspect(await hs256(rich, "not-the-secret-at-all-0123456789abcdef"))).answer).toMatchObject({ active: false, reason: InactiveReason.INVALID, message: "The token's signature is not valid." });
  });

  it('refuses alg "none" before any signature work', async () => {
    const s = await setup();
    const none = `${Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url")}.${Buffer.from(JSON.stringify(rich)).toString("base64url")}.`;
    expect((await s.introspect(none)).answer).toMatchObject({ active: false, reason: InactiveReason.INVALID, message: "Unsigned JWTs are not accepted." });
  });

  it("refuses algorithm confusion: an HS256 JWT keyed with the RS256 public key", async () => {
    const pair = await generateKeyPair("RS256", { extractable: true });
    const pem = await exportSPKI(pair.publicKey);
    // Only the RSA key is configured: no HS256 key exists to be confused with it.
    const rsaOnly = await setup({}, [{ alg: "RS256", key: pair.publicKey, label: "pem" }]);
    const forged = await hs256(rich, pem);
    expect((await rsaOnly.introspect(forged)).answer).toMatchObject({ active: false, reason: InactiveReason.INVALID, message: "The token is not signed with an accepted key and algorithm." });
    // With an HMAC secret configured too, the public key is still never used as one.
    const both = await setup({}, [await hmacKey(CURRENT, "hmac-current"), { alg: "RS256", key: pair.publicKey, label: "pem" }]);
    expect((await both.introspect(forged)).answer).toMatchObject({ active: false, reason: InactiveReason.INVALID, message: "The token's signature is not valid." });
  });

  it.each([
    ["jwk", { jwk: { kty: "oct", k: "AAAA" } }],
    ["jku", { jku: "https://attacker.example/jwks.json" }],
    ["x5u", { x5u: "https://attacker.example/cert.pem" }],
  ])("refuses an embedded %s header", async (name, header) => {
    const s = await setup();
    expect((await s.introspect(await hs256(rich, CURRENT, header))).answer).toMatchObject({ active: false, reason: InactiveReason.INVALID, message: `JWTs with a "${name}" header are not accepted.` });
  });

  it("refuses a JWE and an oversized JWT as malformed", async () => {
    const s = await setup({ maxLength: 1000 });
    expect((await s.introspect("eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d")).answer).toMatchObject({ active: false, reason: InactiveReason.MALFORMED, message: "Encrypted JWTs (JWE) are not accepted." });
    const big = await hs256({ ...rich, padding: "x".repeat(1200) });
    expect((await s.introspect(big)).answer).toMatchObject({ active: false, reason: InactiveReason.MALFORMED });
  });

  it("accepts a JWT without jti with a counted warning event when REQUIRE_JTI is false", async () => {
    const s = await setup();
    const { answer, headers } = await s.introspect(await hs256({ ...rich, jti: undefined }));
    expect(answer).toMatchObject({ active: true, jti: "" });
    expect(headers.get("x-auth-deprecation")).not.toBeNull();
    expect(s.events.events).toEqual([expect.objectContaining({ type: "legacy_jwt_without_jti", severity: "warning", callerSubject: "alice@example.com" })]);
  });

  it("refuses a JWT without jti when REQUIRE_JTI is true", async () => {
    const s = await setup({ requireJti: true });
    expect((await s.introspect(await hs256({ ...rich, jti: undefined }))).answer).toMatchObject({ active: false, reason: InactiveReason.INVALID, message: "The token has no jti claim; this service requires one." });
  });

  it("refuses a JWT whose env claim names another environment, with the security event", async () => {
    const s = await setup();
    const { answer, headers } = await s.introspect(await hs256({ ...rich, env: "production" }));
    expect(answer).toMatchObject({ active: false, reason: InactiveReason.ENVIRONMENT_MISMATCH, message: "Token environment mismatch: production token used in development" });
    noDeprecationHeaders(headers);
    expect(s.events.events).toEqual([expect.objectContaining({ type: "environment_mismatch", severity: "critical", tokenEnvironment: "production", serviceEnvironment: "development" })]);
  });

  describe("a JWT without an env claim", () => {
    const noEnv = { ...rich, env: undefined, user: { ...rich.user, is_admin: true } };

    it("is inactive (INVALID, with a clear message) with a security event when LEGACY_JWT_REQUIRE_ENV is true", async () => {
      const s = await setup({ requireEnv: true });
      const { answer, headers } = await s.introspect(await hs256(noEnv));
      expect(answer).toMatchObject({ active: false, reason: InactiveReason.INVALID, message: 'The token names no environment ("env" claim); this service accepts legacy JWTs only for its own environment.', sub: "", isAdmin: false });
      noDeprecationHeaders(headers);
      expect(s.events.events).toEqual([expect.objectContaining({ type: "legacy_jwt_without_env", severity: "warning", serviceEnvironment: "development", callerSubject: "alice@example.com" })]);
      expect(s.legacyUsed).toEqual([]);
    });

    it("still accepts a JWT naming the service's own environment when LEGACY_JWT_REQUIRE_ENV is true", async () => {
      const s = await setup({ requireEnv: true });
      expect((await s.introspect(await hs256(rich))).answer).toMatchObject({ active: true, sub: "alice@example.com" });
      expect(s.events.events).toEqual([]);
    });

    it("is accepted in the service's environment when LEGACY_JWT_REQUIRE_ENV is false", async () => {
      const s = await setup({ requireEnv: false });
      expect((await s.introspect(await hs256(noEnv))).answer).toMatchObject({ active: true, sub: "alice@example.com" });
    });
  });

  describe("only the canonical encoding (RFC 7515 §2: base64url without padding)", () => {
    const tamper = async (edit: (parts: [string, string, string]) => [string, string, string]) => edit((await hs256(rich)).split(".") as [string, string, string]).join(".");
    const middle = (segment: string, insert: string) => segment.slice(0, 10) + insert + segment.slice(10);
    const pad = (segment: string) => segment + "=".repeat((4 - (segment.length % 4)) % 4 || 4);

    it.each([
      ["a signature with = padding", ([h, p, s]: [string, string, string]) => [h, p, pad(s)]],
      ["a signature with a space inside", ([h, p, s]: [string, string, string]) => [h, p, middle(s, " ")]],
      ["a signature with a newline inside", ([h, p, s]: [string, string, string]) => [h, p, middle(s, "\n")]],
      ["a signature with a tab at the end", ([h, p, s]: [string, string, string]) => [h, p, `${s}\t`]],
      ["a payload with = padding", ([h, p, s]: [string, string, string]) => [h, pad(p), s]],
      ["a header with a space inside", ([h, p, s]: [string, string, string]) => [middle(h, " "), p, s]],
    ] as const)("refuses %s as MALFORMED before verification", async (_name, edit) => {
      const s = await setup();
      const original = await hs256(rich);
      const jwt = await tamper(edit as (parts: [string, string, string]) => [string, string, string]);
      expect(jwt).not.toBe(original);
      expect((await s.introspect(jwt)).answer).toMatchObject({ active: false, reason: InactiveReason.MALFORMED, message: "The token is malformed." });
      expect(s.legacyUsed).toEqual([]);
    });

    it("refuses a signature in base64 (+ and /) instead of base64url", async () => {
      const s = await setup();
      // Find a JWT whose signature holds a base64url-only character.
      let jwt = "";
      for (let i = 0; !/[-_]/.test(jwt.split(".")[2] ?? ""); i++) jwt = await hs256({ ...rich, jti: `jti-${i}` });
      const [h, p, sig] = jwt.split(".") as [string, string, string];
      expect((await s.introspect(`${h}.${p}.${sig.replace(/-/g, "+").replace(/_/g, "/")}`)).answer).toMatchObject({ active: false, reason: InactiveReason.MALFORMED, message: "The token is malformed." });
    });

    it("refuses a signature whose last character carries non-zero spare bits (a second spelling of the same bytes)", async () => {
      const s = await setup();
      const [h, p, sig] = (await hs256(rich)).split(".") as [string, string, string];
      // HS256: 32 bytes → 43 characters, the last holding 4 bits and 2 spare ones.
      const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
      const last = alphabet.indexOf(sig.at(-1)!);
      const twin = sig.slice(0, -1) + alphabet[last ^ 1];
      expect(Buffer.from(twin, "base64url").equals(Buffer.from(sig, "base64url"))).toBe(true);
      expect((await s.introspect(`${h}.${p}.${twin}`)).answer).toMatchObject({ active: false, reason: InactiveReason.MALFORMED });
    });
  });

  it("refuses a JWT issued in the future beyond the clock tolerance", async () => {
    const s = await setup({ clockToleranceSec: 30 });
    expect((await s.introspect(await hs256({ ...rich, iat: nowSec + 31, nbf: undefined }))).answer).toMatchObject({ active: false, reason: InactiveReason.INVALID, message: "The token's issue time (iat) is in the future." });
    expect((await s.introspect(await hs256({ ...rich, iat: nowSec + 30, nbf: undefined }))).answer).toMatchObject({ active: true });
    expect(s.legacyUsed).toHaveLength(1);
  });

  it("revokes a legacy JWT by value (recording its jti) and then answers REVOKED", async () => {
    const s = await setup();
    const jwt = await hs256(rich);
    const auth = { headers: { authorization: `Bearer ${s.admin}` } };
    expect(await s.client.revokeToken({ target: { case: "token", value: jwt }, reason: "leaked" }, auth)).toMatchObject({ alreadyRevoked: false });
    expect(s.legacyStore.revoked.get("jti-1")).toEqual({ by: "admin@example.com", reason: "leaked" });
    expect((await s.introspect(jwt)).answer).toMatchObject({ active: false, reason: InactiveReason.REVOKED });
    expect(await s.client.revokeToken({ target: { case: "legacyJti", value: "jti-1" } }, auth)).toMatchObject({ alreadyRevoked: true });
    expect(s.events.events.filter((e) => e.type === "token_revoked")).toHaveLength(1);
  });

  it("cannot revoke a legacy JWT without jti on its own, and ignores forged ones", async () => {
    const s = await setup();
    const auth = { headers: { authorization: `Bearer ${s.admin}` } };
    const err = await s.client.revokeToken({ target: { case: "token", value: await hs256({ ...rich, jti: undefined }) } }, auth).catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.FailedPrecondition });
    expect(await s.client.revokeToken({ target: { case: "token", value: await hs256({ ...rich, jti: "victim" }, "forged-secret-0123456789abcdef0123456") } }, auth)).toMatchObject({ alreadyRevoked: false });
    expect(s.legacyStore.revoked.has("victim")).toBe(false);
  });

  it("answers LEGACY_JWT_SUNSET after the sunset date, telling the caller how to migrate", async () => {
    const s = await setup({ sunsetAt: new Date("2026-11-22T00:00:00Z") });
    const { answer, headers } = await s.introspect(await hs256(rich));
    expect(answer).toMatchObject({
      active: false,
      reason: InactiveReason.LEGACY_JWT_SUNSET,
      message: "Legacy JWTs stopped working on 2026-11-22. Create an API token (tokenctl issue, or the IssueToken RPC) and send it instead; see https://docs.example.com/migrate",
    });
    noDeprecationHeaders(headers);
  });

  it("refuses legacy JWTs as malformed when no key is configured", async () => {
    const s = await setup({}, []);
    expect((await s.introspect(await hs256(rich))).answer).toMatchObject({ active: false, reason: InactiveReason.MALFORMED, message: "Legacy JWTs are not accepted by this service; send an API token." });
  });

  it("never lets a legacy JWT authenticate a caller of this service", async () => {
    const s = await setup();
    const err = await s.client.listTokens({}, { headers: { authorization: `Bearer ${await hs256({ ...rich, user: { ...rich.user, is_admin: true } })}` } }).catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.Unauthenticated, rawMessage: "caller credential refused: call this service with a token it issued" });
    // Refused as a credential: not a use of the JWT, so ListLegacyJwtUsage does not count it.
    expect(s.legacyUsed).toEqual([]);
  });

  it.each(["Bearer", "Basic"] as const)("does not count a legacy JWT refused as an OAuth client's %s credential in ListLegacyJwtUsage", async (scheme) => {
    const s = await setup();
    const jwt = await hs256(rich);
    const authorization = scheme === "Bearer" ? `Bearer ${jwt}` : `Basic ${Buffer.from(`00000000-0000-4000-8000-000000000000:${jwt}`).toString("base64")}`;
    await expect(authenticateClient(s.deps, authorization, { method: "POST /oauth2/introspect" })).rejects.toMatchObject({ code: "unauthenticated" });
    expect(s.legacyUsed).toEqual([]);
    // The same JWT introspected by a client is counted once.
    expect((await s.introspect(jwt)).answer.active).toBe(true);
    expect(s.legacyUsed).toEqual([{ subject: "alice@example.com", at: NOW }]);
  });
});

beforeAll(() => {
  // The fakes' clock starts at NOW; the JWTs above are built around it.
  expect(fakeDeps().clock.now()).toEqual(NOW);

});

describe("legacy JWT introspection, kept answers", () => {
    it("answers a repeat from the cache with the deprecation headers, counting every use", async () => {
      const s = await setup();
      const jwt = await hs256(rich);
      const first = await s.introspect(jwt);
      const again = await s.introspect(jwt);
      expect(s.revocationReads.count).toBe(1);
      expect(s.legacyCache.stats()).toMatchObject({ size: 1, hits: 1, jtis: 1 });
      expect(again.answer).toEqual(first.answer);
      expect(again.answer).toMatchObject({ active: true, tokenKind: TokenKind.LEGACY_JWT, jti: "jti-1", deprecation: { notice: "JWT tokens are deprecated. Please migrate to API tokens." } });
      expect(again.headers.get("x-auth-deprecation")).toBe("JWT tokens are deprecated. Please migrate to API tokens.");
      expect(again.headers.get("sunset")).toBe("Sat, 30 Jan 2027 00:00:00 GMT");
      expect(s.legacyUsed).toEqual([{ subject: "alice@example.com", at: NOW }, { subject: "alice@example.com", at: NOW }]);
    });

    it("never serves it at or past its exp (read time, injected clock)", async () => {
      const s = await setup();
      const jwt = await hs256({ ...rich, exp: nowSec + 60 });
      expect((await s.introspect(jwt)).answer.active).toBe(true);
      s.clock.advance(59_999);
      s.legacyCache.confirmUntil(s.clock.now().getTime()); // the revocation channel's heartbeats
      expect((await s.introspect(jwt)).answer.active).toBe(true);
      expect(s.revocationReads.count).toBe(1);
      s.clock.advance(1);
      expect((await s.introspect(jwt)).answer).toMatchObject({ active: false, reason: InactiveReason.EXPIRED });
      expect(s.legacyCache.stats().size).toBe(0);
    });

    it("never serves it before its nbf (a clock set back)", async () => {
      const s = await setup();
      const jwt = await hs256(rich);
      expect((await s.introspect(jwt)).answer.active).toBe(true);
      s.clock.advance(-120_000);
      expect((await s.introspect(jwt)).answer).toMatchObject({ active: false, reason: InactiveReason.INVALID, message: "The token is not valid yet." });
    });

    it("turns into the sunset answer on the sunset date, without deprecation headers", async () => {
      const s = await setup({ sunsetAt: new Date(NOW.getTime() + 1000) });
      const jwt = await hs256(rich);
      expect((await s.introspect(jwt)).answer.active).toBe(true);
      s.clock.advance(1000);
      const { answer, headers } = await s.introspect(jwt);
      expect(answer).toMatchObject({ active: false, reason: InactiveReason.LEGACY_JWT_SUNSET });
      noDeprecationHeaders(headers);
      expect(s.legacyUsed).toHaveLength(1);
    });

    it("is evicted when its jti is revoked here", async () => {
      const s = await setup();
      const jwt = await hs256(rich);
      expect((await s.introspect(jwt)).answer.active).toBe(true);
      await s.client.revokeToken({ target: { case: "legacyJti", value: "jti-1" } }, { headers: { authorization: `Bearer ${s.admin}` } });
      expect((await s.introspect(jwt)).answer).toMatchObject({ active: false, reason: InactiveReason.REVOKED });
      expect(s.legacyUsed).toHaveLength(1);
    });

    it("is evicted, with every copy signed for the same jti, when another replica revokes it (the jti read from the revocation log)", async () => {
      const s = await setup();
      s.revocations.restored();
      await s.revocations.catchUp();
      const jwt = await hs256(rich);
      const copy = await hs256({ ...rich, iat: nowSec - 30 });
      const other = await hs256({ ...rich, jti: "jti-2" });
      for (const t of [jwt, copy, other]) expect((await s.introspect(t)).answer.active).toBe(true);
      expect(s.legacyCache.stats()).toMatchObject({ size: 3, jtis: 2 });
      // Another replica: the store row and its log entry; the notice names only the position.
      await s.legacyStore.revoke("jti-1", { by: "ops", reason: "leaked" });
      s.revocations.noticed(s.log.legacy("jti-1"));
      expect(s.revocations.position).toBe(0); // not applied until the jti is read
      await s.revocations.catchUp();
      expect(s.revocations.position).toBe(1);
      expect(s.legacyCache.stats()).toMatchObject({ size: 1, jtis: 1 });
      for (const t of [jwt, copy]) expect((await s.introspect(t)).answer).toMatchObject({ active: false, reason: InactiveReason.REVOKED });
      expect((await s.introspect(other)).answer.active).toBe(true);
    });

    it("reads the log again when a second jti is noticed while the first read is in flight", async () => {
      const s = await setup();
      s.revocations.restored();
      await s.revocations.catchUp();
      const one = await hs256(rich);
      const two = await hs256({ ...rich, jti: "jti-2" });
      for (const t of [one, two]) expect((await s.introspect(t)).answer.active).toBe(true);
      // The first read takes its snapshot, then waits: the second revocation commits after it.
      const read = s.log.readAfter.bind(s.log);
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      s.log.readAfter = async (position, limit) => {
        const page = await read(position, limit);
        s.log.readAfter = read;
        await gate;
        return page;
      };
      s.revocations.noticed(s.log.legacy("jti-1"));
      s.revocations.noticed(s.log.legacy("jti-2"));
      release();
      await s.revocations.catchUp();
      await s.revocations.catchUp();
      expect(s.legacyCache.stats()).toMatchObject({ size: 0, jtis: 0 });
      expect(s.revocations.position).toBe(2);
    });

    it("holds confirmations back until the revoked jti has been read from the log", async () => {
      const s = await setup();
      s.revocations.restored();
      await s.revocations.catchUp();
      const jwt = await hs256(rich);
      s.revocations.confirm(NOW.getTime());
      await s.introspect(jwt);
      s.log.readAfter = () => Promise.reject(new Error("store down"));
      s.revocations.noticed(s.log.legacy("jti-1"));
      await s.revocations.catchUp();
      s.revocations.confirm(NOW.getTime() + 5000);
      expect(s.revocations.confirmedAt).toBe(NOW.getTime());
    });

    it("keeps a fresh answer out when its jti is revoked while the store is read (fenced)", async () => {
      const s = await setup();
      const jwt = await hs256(rich);
      s.legacyStore.isRevoked = async () => {
        s.legacyCache.evictJti("jti-1"); // the revocation lands during the read
        return false;
      };
      expect((await s.introspect(jwt)).answer.active).toBe(true);
      expect(s.legacyCache.stats().size).toBe(0);
    });

    it("keeps a JWT without jti (it cannot be revoked one by one anyway), raising its warning on every use", async () => {
      const s = await setup();
      const jwt = await hs256({ ...rich, jti: undefined });
      await s.introspect(jwt);
      expect((await s.introspect(jwt)).answer).toMatchObject({ active: true, jti: "" });
      expect(s.legacyCache.stats()).toMatchObject({ size: 1, hits: 1, jtis: 0 });
      expect(s.events.events.map((e) => e.type)).toEqual(["legacy_jwt_without_jti", "legacy_jwt_without_jti"]);
      expect(s.legacyUsed).toHaveLength(2);
    });

    it("keeps the environment guard's verdict, raising its critical event on every use", async () => {
      const s = await setup();
      const jwt = await hs256({ ...rich, env: "production" });
      await s.introspect(jwt);
      const { answer, headers } = await s.introspect(jwt);
      expect(answer).toMatchObject({ active: false, reason: InactiveReason.ENVIRONMENT_MISMATCH, message: "Token environment mismatch: production token used in development" });
      noDeprecationHeaders(headers);
      expect(s.legacyCache.stats().hits).toBe(1);
      expect(s.events.events.map((e) => e.type)).toEqual(["environment_mismatch", "environment_mismatch"]);
    });

    it("keeps nothing for a JWT that does not verify", async () => {
      const s = await setup();
      await s.introspect(await hs256(rich, "not-the-secret-at-all-0123456789abcdef"));
      await s.introspect(await hs256({ ...rich, exp: nowSec - 1 }));
      expect(s.legacyCache.stats().size).toBe(0);
    });

    it("keeps its jti index no larger than the cache (entries pushed out leave the index)", () => {
      const cache = createLegacyAnswerCache({ maxEntries: 2, maxBytes: 1 << 20, stalenessMs: 2000 });
      const at = NOW.getTime();
      const kept = (jti: string) => ({ result: { active: false as const, reason: "revoked" as const, message: "" }, jti, expiresAtMs: at + 60_000, validFromMs: 0, subject: undefined, event: undefined });
      for (const jti of ["a", "b", "c", "d"]) cache.put(`key-${jti}`, kept(jti), cache.fence(), at);
      expect(cache.stats()).toMatchObject({ size: 2, jtis: 2 });
      cache.evictJti("d");
      expect(cache.stats()).toMatchObject({ size: 1, jtis: 1 });
      expect(cache.get("key-d", at)).toBeUndefined();
      // Past exp the entry goes, and the index with it.
      cache.confirmUntil(at + 60_000);
      expect(cache.get("key-c", at + 60_000)).toBeUndefined();
      expect(cache.stats()).toMatchObject({ size: 0, jtis: 0 });
    });

    it("streams a legacy revocation on WatchRevocations as a revocation with no digest and the jti as token_id", async () => {
      const s = await setup();
      s.revocations.restored();
      await s.revocations.catchUp();
      const abort = new AbortController();
      const events: WatchEvent[] = [];
      const stream = watchRevocations(s.revocations, 60_000, abort.signal);
      const reading = (async () => {
        for await (const e of stream) {
          events.push(e);
          if (e.kind === "legacy_revocation") abort.abort();
        }
      })();
      await new Promise((r) => setTimeout(r, 5));
      s.revocations.noticed(s.log.legacy("jti-9"));
      await reading;
      const legacy = events.find((e) => e.kind === "legacy_revocation")!;
      expect(legacy).toEqual({ kind: "legacy_revocation", jti: "jti-9", position: 1 });
      expect(watchResponse(legacy)).toMatchObject({ event: { case: "revocation", value: { tokenDigest: new Uint8Array(0), tokenId: "jti-9", position: 1n } } });
      // A stream resuming from before it gets it from the log.
      const resumed = watchRevocations(s.revocations, 60_000, new AbortController().signal, Date.now, undefined, 0);
      expect((await resumed.next()).value).toEqual({ kind: "legacy_revocation", jti: "jti-9", position: 1 });
      await resumed.return(undefined);
    });
  });
