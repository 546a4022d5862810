import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import { describe, expect, it } from "vitest";
import type { IntrospectedClaims } from "../../src/domain/introspect.js";
import { BackendJwtKeys } from "../../src/keys/backend-jwt.js";
import { KeyEncryptionKeys, decodeKek } from "../../src/keys/key-wrap.js";
import { CapturedLog, FixedClock, MemorySigningKeyStore } from "../support/fakes.js";

const MIN = 60_000;
const KEKS = new KeyEncryptionKeys(decodeKek("q8Bx3oWfF2v0Zf5c1n0bJr8ZbLr9oM0sXgk2Yw7tHjE="));
const HOUR = 60 * MIN;

function claims(clock: FixedClock, overrides: Partial<IntrospectedClaims> = {}): IntrospectedClaims {
  return {
    id: "6f1c1d7e-7a55-4c1b-9a43-0f6a1f8b2c11",
    kind: "opaque",
    subject: "alice@example.com",
    fullName: "Alice",
    teams: ["payments"],
    scopes: ["orders.read", "orders.write"],
    namespaces: ["eu"],
    isAdmin: false,
    name: "ci",
    metadata: {},
    environment: "development",
    issuedAt: clock.now(),
    expiresAt: new Date(clock.now().getTime() + 24 * HOUR),
    ...overrides,
  };
}

async function setup(alg: "ES256" | "EdDSA" = "ES256") {
  const clock = new FixedClock();
  const store = new MemorySigningKeyStore();
  const keys = new BackendJwtKeys(store, KEKS, { alg, ttlMs: 5 * MIN, rotationMs: 24 * HOUR, refreshMs: MIN, issuer: "cf-token-service", audience: ["backends"] }, clock, new CapturedLog());
  await keys.start();
  keys.stop(); // tests drive refresh() by hand
  return { clock, store, keys };
}

async function verify(keys: BackendJwtKeys, jwt: string, clock: FixedClock) {
  return jwtVerify(jwt, createLocalJWKSet(keys.jwks() as never), { issuer: "cf-token-service", audience: "backends", currentDate: clock.now() });
}

describe("backend JWTs", () => {
  it.each(["ES256", "EdDSA"] as const)("signs %s JWTs with the token's claims that verify against the published JWKS", async (alg) => {
    const { clock, keys } = await setup(alg);
    const jwt = await keys.mint(claims(clock), clock.now());
    const { payload, protectedHeader } = await verify(keys, jwt, clock);
    expect(protectedHeader).toMatchObject({ alg, typ: "at+jwt", kid: keys.jwks().keys[0]!.kid });
    const now = Math.floor(clock.now().getTime() / 1000);
    expect(payload).toMatchObject({
      iss: "cf-token-service", aud: "backends", sub: "alice@example.com", token_id: "6f1c1d7e-7a55-4c1b-9a43-0f6a1f8b2c11",
      scope: "orders.read orders.write", teams: ["payments"], namespaces: ["eu"], is_admin: false, env: "development", iat: now, nbf: now, exp: now + 300,
    });
    expect(payload.jti).toMatch(/^[0-9a-f-]{36}$/);
    expect(keys.jwks().keys[0]).not.toHaveProperty("d");
  });

  it("reuses a minted JWT while a fifth of its life is left, then mints a new one", async () => {
    const { clock, keys } = await setup();
    const first = await keys.mint(claims(clock), clock.now());
    clock.advance(3 * MIN);
    expect(await keys.mint(claims(clock), clock.now())).toBe(first);
    clock.advance(61_000);
    expect(await keys.mint(claims(clock), clock.now())).not.toBe(first);
  });

  it("never outlives the token", async () => {
    const { clock, keys } = await setup();
    const expiresAt = new Date(clock.now().getTime() + 90_000);
    const { payload } = await verify(keys, await keys.mint(claims(clock, { expiresAt }), clock.now()), clock);
    expect(payload.exp).toBe(Math.floor(expiresAt.getTime() / 1000));
  });

  it("rotates: publishes the new key before signing with it, keeps the old one until its JWTs expire", async () => {
    const { clock, store, keys } = await setup();
    const oldKid = keys.jwks().keys[0]!.kid;
    const oldJwt = await keys.mint(claims(clock), clock.now());

    clock.advance(24 * HOUR);
    await keys.refresh();
    expect(keys.jwks().keys.map((k) => k.kid)).toHaveLength(2);
    const newKid = keys.jwks().keys[0]!.kid;
    expect(newKid).not.toBe(oldKid);
    // Not active yet: still signed with the old key.
    expect(decodeProtectedHeader(await keys.mint(claims(clock, { id: "other" }), clock.now())).kid).toBe(oldKid);

    clock.advance(2 * MIN);
    await keys.refresh();
    const rotated = await keys.mint(claims(clock, { id: "third" }), clock.now());
    expect(decodeProtectedHeader(rotated).kid).toBe(newKid);
    // A cached JWT from the old key is replaced once the new key signs.
    expect(decodeProtectedHeader(await keys.mint(claims(clock), clock.now())).kid).toBe(newKid);
    expect(keys.jwks().keys.map((k) => k.kid)).toContain(oldKid);

    clock.advance(5 * MIN + 1000);
    await keys.refresh();
    expect(keys.jwks().keys.map((k) => k.kid)).toEqual([newKid]);
    expect(store.keys.map((k) => k.kid)).toEqual([newKid]);
    await expect(verify(keys, oldJwt, clock)).rejects.toThrow();
  });

  it("shares keys between replicas through the store", async () => {
    const { clock, store, keys } = await setup();
    const replica = new BackendJwtKeys(store, KEKS, { alg: "ES256", ttlMs: 5 * MIN, rotationMs: 24 * HOUR, refreshMs: MIN, issuer: "cf-token-service", audience: ["backends"] }, clock, new CapturedLog());
    await replica.refresh();
    expect(replica.jwks()).toEqual(keys.jwks());
    const jwt = await replica.mint(claims(clock), clock.now());
    await expect(verify(keys, jwt, clock)).resolves.toBeDefined();
  });
});
