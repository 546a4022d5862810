import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { calculateJwkThumbprint, createLocalJWKSet, exportJWK, generateKeyPair, jwtVerify } from "jose";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";
import type { IntrospectedClaims } from "../../src/domain/introspect.js";
import type { SigningKey } from "../../src/domain/ports.js";
import { BackendJwtKeys } from "../../src/keys/backend-jwt.js";
import { DEV_KEK_FILE, describeKeyEncryptionKeys, loadKeyEncryptionKeys } from "../../src/keys/kek-config.js";
import { KeyEncryptionKeys, KeyUnwrapError, decodeKek, kekId } from "../../src/keys/key-wrap.js";
import { CapturedLog, FixedClock, MemorySigningKeyStore } from "../support/fakes.js";

const MIN = 60_000;
const newKek = () => decodeKek(randomBytes(32).toString("base64"));
const OPTIONS = { alg: "ES256" as const, ttlMs: 5 * MIN, rotationMs: 24 * 60 * MIN, refreshMs: MIN, issuer: "cf-token-service", audience: ["backends"] };

function claims(clock: FixedClock): IntrospectedClaims {
  return {
    id: "6f1c1d7e-7a55-4c1b-9a43-0f6a1f8b2c11",
    kind: "opaque",
    subject: "alice@example.com",
    fullName: "Alice",
    teams: [],
    scopes: ["orders.read"],
    namespaces: [],
    isAdmin: false,
    name: "ci",
    metadata: {},
    environment: "development",
    issuedAt: clock.now(),
    expiresAt: new Date(clock.now().getTime() + 60 * MIN),
  };
}

/** A real private JWK and the stored record a plaintext (pre-encryption) row would give. */
async function plaintextKey(at: Date): Promise<{ record: SigningKey; d: string }> {
  const pair = await generateKeyPair("ES256", { extractable: true });
  const privateJwk = await exportJWK(pair.privateKey);
  const publicJwk = await exportJWK(pair.publicKey);
  const kid = await calculateJwkThumbprint(publicJwk);
  return { record: { kid, alg: "ES256", privateKey: { plaintextJwk: privateJwk }, publicJwk, createdAt: at, activatesAt: at }, d: privateJwk.d! };
}

describe("key-encryption keys", () => {
  it("decode from base64 or base64url, exactly 32 bytes, with an id that is a fingerprint and never the key", () => {
    const bytes = randomBytes(32);
    const a = decodeKek(bytes.toString("base64"));
    expect(decodeKek(bytes.toString("base64url")).id).toBe(a.id);
    expect(decodeKek(` ${bytes.toString("base64")}\n`).key.equals(bytes)).toBe(true);
    expect(a.id).toMatch(/^[0-9a-f]{16}$/);
    expect(a.id).toBe(kekId(bytes));
    expect(newKek().id).not.toBe(a.id);
    for (const bad of [randomBytes(31).toString("base64"), randomBytes(33).toString("base64"), "not base64 at all", ""]) {
      expect(() => decodeKek(bad)).toThrow("must be 32 random bytes in base64; make one with: openssl rand -base64 32");
    }
  });
});

describe("wrapping", () => {
  const current = newKek();
  const keks = new KeyEncryptionKeys(current);
  const context = { kid: "kid-1", alg: "ES256" };
  const secret = Buffer.from('{"d":"private-scalar-value"}');

  it("round-trips under AES-256-GCM with a fresh nonce each time, and the ciphertext holds nothing of the plaintext", () => {
    const one = keks.wrap(secret, context);
    const two = keks.wrap(secret, context);
    expect(one.kekId).toBe(current.id);
    expect(one.wrapped.equals(two.wrapped)).toBe(false);
    expect(one.wrapped.length).toBe(1 + 12 + secret.length + 16);
    expect(one.wrapped.includes(Buffer.from("private-scalar-value"))).toBe(false);
    expect(keks.unwrap(one.kekId, one.wrapped, context).equals(secret)).toBe(true);
  });

  it("binds the ciphertext to its row: another kid or algorithm, a flipped byte or a relabelled KEK id fails, naming the kid only", () => {
    const { kekId: id, wrapped } = keks.wrap(secret, context);
    const attempts: [string, () => unknown][] = [
      ["moved to another row", () => keks.unwrap(id, wrapped, { kid: "kid-2", alg: "ES256" })],
      ["other algorithm", () => keks.unwrap(id, wrapped, { kid: "kid-1", alg: "EdDSA" })],
      ["flipped byte", () => keks.unwrap(id, Buffer.from(wrapped).fill(wrapped[20]! ^ 1, 20, 21), context)],
      ["truncated", () => keks.unwrap(id, wrapped.subarray(0, 20), context)],
    ];
    for (const [label, attempt] of attempts) {
      expect(attempt, label).toThrow(KeyUnwrapError);
      try {
        attempt();
      } catch (error) {
        expect((error as Error).message, label).toMatch(/^key encryption key does not decrypt stored signing key kid-[12]: /);
        expect((error as Error).message).not.toContain("private-scalar-value");
      }
    }
  });

  it("says which KEK a key needs when it is not configured (a wrong KEK has another id)", () => {
    const wrong = new KeyEncryptionKeys(newKek());
    const { kekId: id, wrapped } = keks.wrap(secret, context);
    expect(() => wrong.unwrap(id, wrapped, context)).toThrow(
      `key encryption key does not decrypt stored signing key kid-1: it was wrapped under KEK ${id}, which is not configured (current ${wrong.current.id}); set KEY_ENCRYPTION_KEY or KEY_ENCRYPTION_KEY_PREVIOUS to that key`,
    );
  });

  it("accepts the previous KEK for unwrapping and rewraps plaintext and previous-KEK keys under the current one", async () => {
    const at = new Date("2026-12-01T00:00:00Z");
    const old = new KeyEncryptionKeys(newKek());
    const rotated = new KeyEncryptionKeys(newKek(), [old.current]);
    const { record, d } = await plaintextKey(at);
    const underOld: SigningKey = { ...record, privateKey: old.seal(record.privateKey.kekId === undefined ? record.privateKey.plaintextJwk : {}, record) };
    expect(rotated.open(underOld)).toMatchObject({ d });
    const moved = rotated.rewrap(underOld)!;
    expect(moved.kekId).toBe(rotated.current.id);
    const movedRecord = { ...record, privateKey: moved };
    expect(rotated.rewrap(movedRecord)).toBeUndefined();
    expect(rotated.open(movedRecord)).toMatchObject({ d });
    expect(rotated.rewrap(record)?.kekId).toBe(rotated.current.id);
    expect(() => old.open(movedRecord)).toThrow(KeyUnwrapError);
  });
});

describe("backend JWT keys at rest", () => {
  it("stores new keys wrapped (no private `d` in the store) and still signs JWTs the JWKS verifies", async () => {
    const clock = new FixedClock();
    const store = new MemorySigningKeyStore();
    const keks = new KeyEncryptionKeys(newKek());
    const keys = new BackendJwtKeys(store, keks, OPTIONS, clock, new CapturedLog());
    await keys.refresh();
    const [stored] = store.keys;
    expect(stored!.privateKey.kekId).toBe(keks.current.id);
    const d = keks.open(stored!)["d"] as string;
    expect(JSON.stringify(store.keys, (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString("base64") : v))).not.toMatch(new RegExp(`${d}|"d":`));
    const jwt = await keys.mint(claims(clock), clock.now());
    await expect(jwtVerify(jwt, createLocalJWKSet(keys.jwks() as never), { audience: "backends", currentDate: clock.now() })).resolves.toBeDefined();
    const answer = await keys.signPayload({ iss: "cf-token-service", aud: "gw", token_introspection: { active: false } }, "token-introspection+jwt");
    await expect(jwtVerify(answer, createLocalJWKSet(keys.jwks() as never), { audience: "gw" })).resolves.toBeDefined();
  });

  it("wraps a plaintext key from before encryption on refresh, and keeps signing with it", async () => {
    const clock = new FixedClock();
    const store = new MemorySigningKeyStore();
    const { record, d } = await plaintextKey(clock.now());
    store.keys.push(record);
    const log = new CapturedLog();
    const keks = new KeyEncryptionKeys(newKek());
    const keys = new BackendJwtKeys(store, keks, OPTIONS, clock, log);
    await keys.refresh();
    expect(store.keys.map((k) => [k.kid, k.privateKey.kekId])).toEqual([[record.kid, keks.current.id]]);
    expect(JSON.stringify(store.keys)).not.toContain(d);
    expect(log.lines).toContainEqual({ level: "info", fields: { count: 1, kek_id: keks.current.id }, message: "backend JWT signing keys wrapped under the current key-encryption key" });
    const jwt = await keys.mint(claims(clock), clock.now());
    const { protectedHeader } = await jwtVerify(jwt, createLocalJWKSet(keys.jwks() as never), { audience: "backends", currentDate: clock.now() });
    expect(protectedHeader.kid).toBe(record.kid);
  });

  it("refuses to start with a wrong KEK, a tampered key, or a key that is not the published key's private half", async () => {
    const clock = new FixedClock();
    const store = new MemorySigningKeyStore();
    const right = new KeyEncryptionKeys(newKek());
    await new BackendJwtKeys(store, right, OPTIONS, clock, new CapturedLog()).refresh();
    const stored = store.keys[0]!;
    const d = right.open(stored)["d"] as string;

    const wrong = new BackendJwtKeys(store, new KeyEncryptionKeys(newKek()), OPTIONS, clock, new CapturedLog());
    await expect(wrong.start()).rejects.toThrow(new RegExp(`^key encryption key does not decrypt stored signing key ${stored.kid}: it was wrapped under KEK ${right.current.id}, which is not configured`));
    wrong.stop();

    const wrapped = Buffer.from((stored.privateKey as { wrapped: Uint8Array }).wrapped);
    wrapped[wrapped.length - 1]! ^= 1;
    store.keys = [{ ...stored, privateKey: { kekId: right.current.id, wrapped } }];
    const tampered = new BackendJwtKeys(store, right, OPTIONS, clock, new CapturedLog());
    const error = await tampered.start().then(() => undefined, (e: unknown) => e as Error);
    expect(error?.message).toBe(`key encryption key does not decrypt stored signing key ${stored.kid}: authentication failed under KEK ${right.current.id}: the wrapped key, its kid or its algorithm was altered`);
    expect(error?.message).not.toContain(d);
    tampered.stop();

    // Well-formed, correctly wrapped, but another key's private half: refused rather than used.
    const other = await plaintextKey(clock.now());
    const otherJwk = other.record.privateKey.kekId === undefined ? other.record.privateKey.plaintextJwk : {};
    store.keys = [{ ...stored, privateKey: right.seal(otherJwk, stored) }];
    const swapped = new BackendJwtKeys(store, right, OPTIONS, clock, new CapturedLog());
    await expect(swapped.start()).rejects.toThrow(`key encryption key does not decrypt stored signing key ${stored.kid}: the unwrapped key is not the private half of the published key`);
    swapped.stop();
  });
});

describe("where the KEK comes from", () => {
  const dirs: string[] = [];
  const tempDir = async () => {
    const dir = await mkdtemp(join(tmpdir(), "tis-kek-"));
    dirs.push(dir);
    return dir;
  };
  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it.each(["production", "staging"])("refuses %s without a KEK, saying how to make one", async (environment) => {
    const config = loadConfig({ TOKEN_ENVIRONMENT: environment, DATABASE_URL: "postgres://x@y/z" });
    const error = await loadKeyEncryptionKeys(config, new CapturedLog()).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain(`KEY_ENCRYPTION_KEY: required in ${environment}`);
    expect((error as Error).message).toContain("openssl rand -base64 32");
    await expect(describeKeyEncryptionKeys(config, new CapturedLog())).rejects.toThrow(ConfigError);
  });

  it("reads the KEK from the environment or a file, and the previous one beside it", async () => {
    const dir = await tempDir();
    const [current, previous] = [randomBytes(32).toString("base64"), randomBytes(32).toString("base64")];
    await writeFile(join(dir, "kek"), `${current}\n`, { mode: 0o600 });
    const fromFile = await loadKeyEncryptionKeys(loadConfig({ TOKEN_ENVIRONMENT: "production", KEY_ENCRYPTION_KEY_FILE: join(dir, "kek"), KEY_ENCRYPTION_KEY_PREVIOUS: previous }), new CapturedLog());
    const fromEnv = await loadKeyEncryptionKeys(loadConfig({ TOKEN_ENVIRONMENT: "production", KEY_ENCRYPTION_KEY: current }), new CapturedLog());
    expect(fromFile.keys.current.id).toBe(fromEnv.keys.current.id);
    expect(fromFile.keys.previousIds).toEqual([decodeKek(previous).id]);
    expect(fromFile.source).toBe(`KEY_ENCRYPTION_KEY_FILE ${join(dir, "kek")}`);
  });

  it("names a bad key or file without echoing its contents, and refuses two sources or a previous key alone", async () => {
    const dir = await tempDir();
    const junk = "this-is-not-a-key-but-might-be-a-secret";
    await writeFile(join(dir, "bad"), junk);
    const bad = await loadKeyEncryptionKeys(loadConfig({ TOKEN_ENVIRONMENT: "production", KEY_ENCRYPTION_KEY_FILE: join(dir, "bad") }), new CapturedLog()).then(() => undefined, (e: unknown) => e as Error);
    expect(bad?.message).toContain(`KEY_ENCRYPTION_KEY_FILE: cannot use ${join(dir, "bad")} as a key-encryption key`);
    expect(bad?.message).not.toContain(junk);
    const missing = await loadKeyEncryptionKeys(loadConfig({ KEY_ENCRYPTION_KEY_FILE: join(dir, "missing") }), new CapturedLog()).then(() => undefined, (e: unknown) => e as Error);
    expect(missing?.message).toContain("(ENOENT)");
    expect(() => loadConfig({ KEY_ENCRYPTION_KEY: junk })).toThrow(/KEY_ENCRYPTION_KEY=\(secret\): must be 32 random bytes in base64; make one with: openssl rand -base64 32/);
    expect(() => loadConfig({ KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"), KEY_ENCRYPTION_KEY_FILE: join(dir, "bad") })).toThrow("KEY_ENCRYPTION_KEY: set either KEY_ENCRYPTION_KEY or KEY_ENCRYPTION_KEY_FILE, not both");
    await expect(loadKeyEncryptionKeys(loadConfig({ TOKEN_ENVIRONMENT: "production", KEY_ENCRYPTION_KEY_PREVIOUS: randomBytes(32).toString("base64") }), new CapturedLog())).rejects.toThrow("KEY_ENCRYPTION_KEY: must be set when KEY_ENCRYPTION_KEY_PREVIOUS is");
  });

  it("makes a development KEK in DATA_DIR (mode 0600) with a warning, and reuses it; config check makes none", async () => {
    const dir = join(await tempDir(), "data");
    const config = loadConfig({ DATA_DIR: dir });
    expect(await describeKeyEncryptionKeys(config, new CapturedLog())).toBe(`none configured; development uses ${join(dir, DEV_KEK_FILE)} (made on first start)`);
    await expect(stat(join(dir, DEV_KEK_FILE))).rejects.toMatchObject({ code: "ENOENT" });

    const log = new CapturedLog();
    const [first, racing] = await Promise.all([loadKeyEncryptionKeys(config, log), loadKeyEncryptionKeys(config, new CapturedLog())]);
    expect(racing.keys.current.id).toBe(first.keys.current.id);
    const file = join(dir, DEV_KEK_FILE);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(decodeKek(await readFile(file, "utf8")).id).toBe(first.keys.current.id);
    expect(log.lines.filter((l) => l.level === "warn").map((l) => l.message)).toEqual([expect.stringMatching(/^KEY_ENCRYPTION_KEY not set: development (made a|uses the) key-encryption key in DATA_DIR/)]);
    expect((await loadKeyEncryptionKeys(config, new CapturedLog())).keys.current.id).toBe(first.keys.current.id);
  });

  it("uses a per-process KEK for an in-memory development store, but refuses one for PostgreSQL with DATA_DIR memory://", async () => {
    const log = new CapturedLog();
    const memory = await loadKeyEncryptionKeys(loadConfig({ DATA_DIR: "memory://" }), log);
    expect(memory.source).toBe("generated for this process (development, in-memory store)");
    expect(log.lines.map((l) => l.level)).toEqual(["warn"]);
    await expect(loadKeyEncryptionKeys(loadConfig({ DATA_DIR: "memory://", DATABASE_URL: "postgres://x@y/z" }), log)).rejects.toThrow(/KEY_ENCRYPTION_KEY: not set, and DATA_DIR is memory:\/\//);
  });
});
