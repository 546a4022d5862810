import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { promisify } from "node:util";
import { PGlite } from "@electric-sql/pglite";
import { pgDump } from "@electric-sql/pglite-tools/pg_dump";
import { calculateJwkThumbprint, createLocalJWKSet, exportJWK, generateKeyPair, jwtVerify, type JSONWebKeySet } from "jose";
import { Migrator, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type IntrospectTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { run as tokenctl } from "../../src/cli/tokenctl.js";
import { loadConfig } from "../../src/config.js";
import type { SigningKey } from "../../src/domain/ports.js";
import { DEV_KEK_FILE } from "../../src/keys/kek-config.js";
import { KeyEncryptionKeys, decodeKek } from "../../src/keys/key-wrap.js";
import { openDatabase, type OpenedDatabase } from "../../src/storage/database.js";
import { migrationProvider } from "../../src/storage/migrations/index.js";
import { KyselySigningKeyStore } from "../../src/storage/signing-key-store.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

const exec = promisify(execFile);
const POOL = { poolMax: 2, connectTimeoutMs: 5_000, statementTimeoutMs: 10_000 };
const newKek = () => randomBytes(32).toString("base64");
const keksOf = (current: string, ...previous: string[]) => new KeyEncryptionKeys(decodeKek(current), previous.map(decodeKek));

/** One store under test: how to reach it, dump it and open it directly (PGlite only while no service holds it). */
interface Store {
  readonly env: Record<string, string>;
  open(): Promise<OpenedDatabase>;
  /** Every dump this store has, each as bytes: logical (`pg_dump`) and, for PGlite, the data directory itself. */
  dumps(): Promise<[string, Buffer][]>;
  remove(): Promise<void>;
}

async function postgresStore(): Promise<Store> {
  const db: TestDatabase = await createTestDatabase();
  return {
    env: { DATABASE_URL: db.url },
    open: () => openDatabase({ ...POOL, url: db.url }),
    // Debian's pg_dump 15, the same major as the server.
    dumps: async () => [["pg_dump", Buffer.from((await exec("pg_dump", ["--no-owner", db.url], { maxBuffer: 64 * 1024 * 1024 })).stdout)]],
    remove: () => db.drop(),
  };
}

async function pgliteStore(): Promise<Store> {
  const parent = await mkdtemp(join(tmpdir(), "tis-kek-pglite-"));
  const dir = join(parent, "data");
  return {
    env: { DATA_DIR: dir },
    open: () => openDatabase({ ...POOL, dataDir: dir }),
    dumps: async () => {
      const pg = await PGlite.create({ dataDir: dir });
      try {
        // @electric-sql/pglite-tools 0.3.6 is the release built against PGlite 0.4.6 (its peer dependency).
        const logical = Buffer.from(await (await pgDump({ pg })).arrayBuffer());
        // The physical form: every file of the data directory, uncompressed (heap pages, WAL, catalogs).
        const physical = Buffer.from(await (await pg.dumpDataDir("none")).arrayBuffer());
        return [
          ["PGlite pg_dump", logical],
          ["PGlite dumpDataDir", physical],
        ];
      } finally {
        await pg.close();
      }
    },
    remove: () => rm(parent, { recursive: true, force: true }),
  };
}

async function storedKeys(store: Store): Promise<SigningKey[]> {
  const opened = await store.open();
  try {
    return await new KyselySigningKeyStore(opened.db).list();
  } finally {
    await opened.close();
  }
}

/** The private scalars of the stored keys, unwrapped in the test with the KEK. */
async function privateScalars(store: Store, keks: KeyEncryptionKeys): Promise<string[]> {
  const keys = await storedKeys(store);
  expect(keys.length).toBeGreaterThan(0);
  return keys.map((k) => keks.open(k)["d"] as string);
}

/** Every way a private scalar could show in a dump: base64url (the JWK), base64, hex of its bytes. */
function forms(d: string): string[] {
  const bytes = Buffer.from(d, "base64url");
  return [d, bytes.toString("base64").replace(/=+$/, ""), bytes.toString("hex")];
}

/** Names each dump that holds private key material (empty: none). */
function leaks(dumps: readonly [string, Buffer][], scalars: readonly string[]): string[] {
  const found: string[] = [];
  for (const [label, bytes] of dumps) {
    for (const d of scalars) for (const form of forms(d)) if (bytes.includes(form)) found.push(`${label}: ${form === d ? "d" : "a form of d"}`);
    // A JWK's private member as JSON text (jsonb is written `"d": "…"` by pg_dump); the data directory is binary, where jsonb has no such text.
    if (!label.endsWith("dumpDataDir") && /"d"\s*:/.test(bytes.toString("latin1"))) found.push(`${label}: "d":`);
  }
  return found;
}

/** A backend JWT and an RFC 9701 answer from the running service, both checked against its JWKS; returns the kid that signed. */
async function signsVerifiably(sut: ServiceUnderTest, admin: string): Promise<string> {
  const grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
  try {
    const base = `http://127.0.0.1:${sut.service.httpPort}`;
    const answer = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: admin, includeBackendJwt: true }, { authorization: `Bearer ${admin}` });
    expect(answer.active).toBe(true);
    const signed = await fetch(`${base}/oauth2/introspect`, {
      method: "POST",
      headers: { authorization: `Bearer ${admin}`, accept: "application/token-introspection+jwt", "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ token: admin }),
    });
    expect(signed.status).toBe(200);
    const rfc9701 = await signed.text();
    const jwks = createLocalJWKSet((await (await fetch(`${base}/.well-known/jwks.json`)).json()) as JSONWebKeySet);
    const backend = await jwtVerify(answer.backendJwt, jwks);
    expect(backend.payload.sub).toBe(answer.sub);
    const introspection = await jwtVerify(rfc9701, jwks);
    expect(introspection.payload["token_introspection"]).toMatchObject({ active: true });
    expect(introspection.protectedHeader.kid).toBe(backend.protectedHeader.kid);
    return backend.protectedHeader.kid!;
  } finally {
    grpc.close();
  }
}

/** tokenctl in-process, with what it wrote. */
async function ctl(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const sink = (append: (s: string) => void) => new Writable({ write: (chunk: Buffer, _e, done) => (append(chunk.toString("utf8")), done()) });
  const code = await tokenctl(args, { LOG_LEVEL: "info", ...env }, { stdin: process.stdin, stdout: sink((s) => (stdout += s)), stderr: sink((s) => (stderr += s)) });
  return { code, stdout, stderr };
}

describe.each([
  ["PostgreSQL", postgresStore],
  ["PGlite", pgliteStore],
])("signing keys at rest on %s", (_name, makeStore) => {
  let store: Store;
  let admin: string;
  let scalars: string[];
  let firstJwtKid: string;
  const [A, B, C, D] = [newKek(), newKek(), newKek(), newKek()];

  beforeAll(async () => {
    store = await makeStore();
  }, 60_000);
  afterAll(async () => {
    await store?.remove();
  });

  it("stores new keys encrypted: no dump holds a private key, and backend JWTs and RFC 9701 answers verify against the JWKS", async () => {
    const sut = await startTestService({ ...store.env, KEY_ENCRYPTION_KEY: A });
    try {
      admin = sut.bootstrapToken!;
      firstJwtKid = await signsVerifiably(sut, admin);
    } finally {
      await sut.service.stop();
    }
    const keys = await storedKeys(store);
    expect(keys.map((k) => k.privateKey.kekId)).toEqual(keys.map(() => keksOf(A).current.id));
    scalars = await privateScalars(store, keksOf(A));
    const dumps = await store.dumps();
    expect(dumps.every(([, bytes]) => bytes.includes(keys[0]!.kid))).toBe(true); // the dumps do hold the keys' rows
    expect(leaks(dumps, scalars)).toEqual([]);
  }, 120_000);

  it("refuses to start with a wrong KEK, naming the key and showing no key material", async () => {
    const error = await startTestService({ ...store.env, KEY_ENCRYPTION_KEY: B }).then(() => undefined, (e: unknown) => e as Error);
    const kid = (await storedKeys(store))[0]!.kid;
    expect(error?.message).toBe(
      `key encryption key does not decrypt stored signing key ${kid}: it was wrapped under KEK ${keksOf(A).current.id}, which is not configured (current ${keksOf(B).current.id}); set KEY_ENCRYPTION_KEY or KEY_ENCRYPTION_KEY_PREVIOUS to that key`,
    );
    for (const d of scalars) expect(error?.message).not.toContain(d);
  }, 60_000);

  it("accepts the previous KEK; tokenctl keys rewrap moves every key under the current one, once, printing no key material", async () => {
    const env = { ...store.env, KEY_ENCRYPTION_KEY: C, KEY_ENCRYPTION_KEY_PREVIOUS: A };
    const before = await ctl(["keys", "status"], env);
    expect(before.code).toBe(1);
    expect(before.stdout).toMatch(new RegExp(`previous ${keksOf(A).current.id}$`, "m"));
    expect(before.stderr).toContain("run: tokenctl keys rewrap");

    const first = await ctl(["keys", "rewrap"], env);
    const total = (await storedKeys(store)).length;
    expect(first).toMatchObject({ code: 0, stdout: `re-wrapped ${total} of ${total} signing key${total === 1 ? "" : "s"} under key-encryption key ${keksOf(C).current.id}\n` });
    const again = await ctl(["keys", "rewrap"], env);
    expect(again.stdout).toBe(`re-wrapped 0 of ${total} signing key${total === 1 ? "" : "s"} under key-encryption key ${keksOf(C).current.id} (${total} already were)\n`);
    expect((await ctl(["keys", "status"], env)).code).toBe(0);
    for (const out of [before, first, again]) for (const d of scalars) expect(out.stdout + out.stderr).not.toContain(d);
    expect((await storedKeys(store)).map((k) => k.privateKey.kekId)).toEqual(Array(total).fill(keksOf(C).current.id));
    expect(leaks(await store.dumps(), scalars)).toEqual([]);

    // The previous KEK is no longer needed: the new one alone starts and signs with the same key.
    const sut = await startTestService({ ...store.env, KEY_ENCRYPTION_KEY: C });
    try {
      expect(await signsVerifiably(sut, admin)).toBe(firstJwtKid);
    } finally {
      await sut.service.stop();
    }
  }, 120_000);

  it("re-wraps keys found under the previous KEK on start, and still signs verifiably", async () => {
    const sut = await startTestService({ ...store.env, KEY_ENCRYPTION_KEY: D, KEY_ENCRYPTION_KEY_PREVIOUS: C });
    try {
      expect(await signsVerifiably(sut, admin)).toBe(firstJwtKid);
      expect(sut.logs.lines).toContainEqual(expect.objectContaining({ msg: "backend JWT signing keys wrapped under the current key-encryption key", kek_id: keksOf(D).current.id }));
    } finally {
      await sut.service.stop();
    }
    expect(new Set((await storedKeys(store)).map((k) => k.privateKey.kekId))).toEqual(new Set([keksOf(D).current.id]));
  }, 60_000);

  it("refuses to start when a wrapped key was altered in the database", async () => {
    const opened = await store.open();
    let kid: string;
    try {
      kid = (await sql<{ kid: string }>`UPDATE signing_keys SET private_key_wrapped = set_byte(private_key_wrapped, 20, get_byte(private_key_wrapped, 20) # 1) RETURNING kid`.execute(opened.db)).rows[0]!.kid;
    } finally {
      await opened.close();
    }
    await expect(startTestService({ ...store.env, KEY_ENCRYPTION_KEY: D })).rejects.toThrow(
      `key encryption key does not decrypt stored signing key ${kid}: authentication failed under KEK ${keksOf(D).current.id}: the wrapped key, its kid or its algorithm was altered`,
    );
  }, 60_000);
});

describe.each([
  ["PostgreSQL", postgresStore],
  ["PGlite", pgliteStore],
])("upgrading plaintext keys on %s", (_name, makeStore) => {
  let store: Store;
  beforeAll(async () => {
    store = await makeStore();
  }, 60_000);
  afterAll(async () => {
    await store?.remove();
  });

  it("encrypts a key stored in the clear before migration 0005 on the first start with a KEK, and keeps signing with it", async () => {
    // The store as the previous version left it: migrated to 0004, one signing key in the clear.
    const pair = await generateKeyPair("ES256", { extractable: true });
    const [privateJwk, publicJwk] = [await exportJWK(pair.privateKey), await exportJWK(pair.publicKey)];
    const kid = await calculateJwkThumbprint(publicJwk);
    const opened = await store.open();
    try {
      const { error } = await new Migrator({ db: opened.db, provider: migrationProvider }).migrateTo("0004_capped_insert");
      expect(error).toBeUndefined();
      const at = new Date(Date.now() - 60 * 60_000);
      await sql`INSERT INTO signing_keys (kid, alg, private_jwk, public_jwk, created_at, activates_at)
                VALUES (${kid}, 'ES256', ${JSON.stringify(privateJwk)}, ${JSON.stringify(publicJwk)}, ${at}, ${at})`.execute(opened.db);
    } finally {
      await opened.close();
    }
    // The detector finds a plaintext key when there is one.
    expect(leaks(await store.dumps(), [privateJwk.d!]).length).toBeGreaterThan(0);

    const kek = newKek();
    const sut = await startTestService({ ...store.env, KEY_ENCRYPTION_KEY: kek });
    try {
      expect(await signsVerifiably(sut, sut.bootstrapToken!)).toBe(kid);
    } finally {
      await sut.service.stop();
    }
    const keys = await storedKeys(store);
    expect(keys.map((k) => [k.kid, k.privateKey.kekId])).toEqual([[kid, keksOf(kek).current.id]]);
    const opened2 = await store.open();
    try {
      expect((await sql<{ n: number }>`SELECT count(*)::int AS n FROM signing_keys WHERE private_jwk IS NOT NULL`.execute(opened2.db)).rows[0]!.n).toBe(0);
    } finally {
      await opened2.close();
    }
    // Logically gone. (The data directory may still hold the old row version until it is vacuumed and its WAL recycled:
    // the README's upgrade note says why that stops mattering once the key rotates out.)
    const logical = (await store.dumps()).filter(([label]) => !label.endsWith("dumpDataDir"));
    expect(leaks(logical, [privateJwk.d!])).toEqual([]);
  }, 120_000);
});

describe("where the key-encryption key comes from, at start-up", () => {
  it.each(["production", "staging"])("%s without a KEK refuses to start, saying how to make one", async (environment) => {
    await expect(startTestService({ DATA_DIR: "memory://", TOKEN_ENVIRONMENT: environment })).rejects.toThrow(
      new RegExp(`KEY_ENCRYPTION_KEY: required in ${environment}: .*make one with \`openssl rand -base64 32\``),
    );
  });

  it("development without a KEK makes one in DATA_DIR (mode 0600) with a warning, and uses it again on the next start", async () => {
    const parent = await mkdtemp(join(tmpdir(), "tis-kek-dev-"));
    const dir = join(parent, "data");
    try {
      const first = await startTestService({ DATA_DIR: dir });
      await first.service.stop();
      const file = join(dir, DEV_KEK_FILE);
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      expect(first.logs.lines).toContainEqual(expect.objectContaining({ level: 40, path: file, msg: expect.stringContaining("KEY_ENCRYPTION_KEY not set: development made a key-encryption key in DATA_DIR") }));
      const second = await startTestService({ DATA_DIR: dir });
      await second.service.stop();
      expect(second.logs.lines).toContainEqual(expect.objectContaining({ level: 40, msg: expect.stringContaining("development uses the key-encryption key in DATA_DIR") }));
      const config = loadConfig({ DATA_DIR: dir });
      const opened = await openDatabase({ ...POOL, dataDir: config.dataDir });
      try {
        const kekIds = (await new KyselySigningKeyStore(opened.db).list()).map((k) => k.privateKey.kekId);
        expect(kekIds.length).toBeGreaterThan(0);
        expect(new Set(kekIds)).toEqual(new Set([decodeKek(await readFile(file, "utf8")).id]));
      } finally {
        await opened.close();
      }
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  }, 60_000);
});

// Two rewraps at once on PostgreSQL take turns on the locked rows: one does the work, the other finds none.
describe("tokenctl keys rewrap racing itself on PostgreSQL", () => {
  it("re-wraps each key exactly once", async () => {
    const store = await postgresStore();
    try {
      const old = newKek();
      const sut = await startTestService({ ...store.env, KEY_ENCRYPTION_KEY: old });
      await sut.service.stop();
      const env = { ...store.env, KEY_ENCRYPTION_KEY: newKek(), KEY_ENCRYPTION_KEY_PREVIOUS: old };
      const outs = await Promise.all([ctl(["keys", "rewrap"], env), ctl(["keys", "rewrap"], env)]);
      const counts = outs.map((o) => Number(/^re-wrapped (\d+) of/.exec(o.stdout)![1]));
      expect(counts.sort()).toEqual([0, (await storedKeys(store)).length]);
    } finally {
      await store.remove();
    }
  }, 60_000);
});
