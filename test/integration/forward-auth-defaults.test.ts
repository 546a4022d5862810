import * as https from "node:https";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { makeTestPki, type TestPki } from "../support/certs.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { startTestService, TEST_KEK, type ServiceUnderTest } from "../support/service.js";

/**
 * `/auth` answers anyone who can reach the HTTP port about any token (and,
 * with FORWARD_AUTH_BACKEND_JWT, hands out signed JWTs). Outside development
 * it is served only when the proxy must prove itself: a shared secret
 * (FORWARD_AUTH_SECRET) or a client certificate (mutual TLS on the HTTP
 * port). Left at its default it is then not served, with an error at
 * start-up; asked for explicitly, start-up fails. Development keeps it open,
 * with a warning. Whole services on PostgreSQL, as operators run them.
 */

const SECRET = "proxy-secret-0123456789abcdef";
const LEVEL = { warn: 40, error: 50 } as const;

/** Start-up log lines at `level` or above about forward auth. */
const forwardAuthLines = (sut: ServiceUnderTest, level: number) =>
  sut.logs.lines.filter((l) => Number(l.level) >= level && "forward_auth" in l);

describe("forward auth defaults per environment", () => {
  let db: TestDatabase;
  let pki: TestPki;
  const started: ServiceUnderTest[] = [];
  const start = async (env: Record<string, string>) => {
    const sut = await startTestService({ DATABASE_URL: db.url, KEY_ENCRYPTION_KEY: TEST_KEK, ...env });
    started.push(sut);
    return sut;
  };
  /** GET /auth on a cleartext HTTP port. */
  const auth = (sut: ServiceUnderTest, headers: Record<string, string>) => fetch(`http://127.0.0.1:${sut.service.httpPort}/auth`, { headers });
  const adminOf = async (sut: ServiceUnderTest) => (await bootstrapAdmin(sut.service.deps, "admin@example.com", "cli")).token;

  beforeAll(async () => {
    [db, pki] = await Promise.all([createTestDatabase(), makeTestPki()]);
  });

  afterAll(async () => {
    for (const sut of started) await sut.service.stop();
    await db?.drop();
    await pki?.remove();
  });

  it("in production, left at its default without a secret or mutual TLS, /auth is not served and start-up says so at error level, naming the fix", async () => {
    const sut = await start({ TOKEN_ENVIRONMENT: "production" });
    const res = await auth(sut, { authorization: `Bearer ${await adminOf(sut)}` });
    expect(res.status).toBe(404);
    expect(res.headers.get("x-auth-subject")).toBeNull();
    const lines = forwardAuthLines(sut, LEVEL.error);
    expect(lines).toHaveLength(1);
    expect(String(lines[0]!.msg)).toContain("FORWARD_AUTH_SECRET");
    expect(String(lines[0]!.msg)).toContain("TLS_CLIENT_CA_FILE");
    expect(String(lines[0]!.msg)).toContain("FORWARD_AUTH_ENABLED=false");
    // The rest of the HTTP port is unaffected.
    expect((await fetch(`http://127.0.0.1:${sut.service.httpPort}/healthz`)).status).toBe(200);
  });

  it("in staging with FORWARD_AUTH_SECRET, /auth is served to the proxy that sends it, and start-up raises nothing", async () => {
    const sut = await start({ TOKEN_ENVIRONMENT: "staging", FORWARD_AUTH_SECRET: SECRET });
    const authorization = `Bearer ${await adminOf(sut)}`;
    expect((await auth(sut, { authorization })).status).toBe(403);
    const ok = await auth(sut, { authorization, "x-forward-auth-secret": SECRET });
    expect(ok.status).toBe(200);
    expect(ok.headers.get("x-auth-subject")).toBe("admin@example.com");
    expect(forwardAuthLines(sut, LEVEL.warn)).toEqual([]);
    expect(sut.logs.raw.join("\n")).not.toContain(SECRET);
  });

  it("in production with mutual TLS on the HTTP port, /auth is served to a client with a certificate", async () => {
    const sut = await start({ TOKEN_ENVIRONMENT: "production", TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_CLIENT_CA_FILE: pki.caCert, TLS_PORTS: "http" });
    const admin = await adminOf(sut);
    const [ca, cert, key] = await Promise.all([pki.read(pki.caCert), pki.read(pki.clientCert), pki.read(pki.clientKey)]);
    const answer = await new Promise<{ status: number; subject: string | undefined }>((resolve, reject) => {
      const req = https.request({ host: "127.0.0.1", port: sut.service.httpPort, path: "/auth", ca, cert, key, servername: "localhost", headers: { authorization: `Bearer ${admin}` } }, (res) => {
        res.resume();
        res.on("end", () => resolve({ status: res.statusCode ?? 0, subject: res.headers["x-auth-subject"] as string | undefined }));
      });
      req.on("error", reject);
      req.end();
    });
    expect(answer).toEqual({ status: 200, subject: "admin@example.com" });
    expect(forwardAuthLines(sut, LEVEL.warn)).toEqual([]);
  });

  it("in production with FORWARD_AUTH_ENABLED=false, /auth is not served and nothing is said", async () => {
    const sut = await start({ TOKEN_ENVIRONMENT: "production", FORWARD_AUTH_ENABLED: "false" });
    expect((await auth(sut, {})).status).toBe(404);
    expect(forwardAuthLines(sut, LEVEL.warn)).toEqual([]);
  });

  it("in development, /auth stays open by default, with a start-up warning naming the fix", async () => {
    const sut = await start({ TOKEN_ENVIRONMENT: "development" });
    const res = await auth(sut, { authorization: `Bearer ${await adminOf(sut)}` });
    expect(res.status).toBe(200);
    const warnings = forwardAuthLines(sut, LEVEL.warn);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.level).toBe(LEVEL.warn);
    expect(String(warnings[0]!.msg)).toContain("FORWARD_AUTH_SECRET");
  });

  it.each([
    ["production", {}],
    ["staging", {}],
    // Client certificates on the gRPC port only leave the HTTP port open.
    ["production", { tls: "grpc" }],
  ] as const)("in %s, FORWARD_AUTH_ENABLED=true without protection refuses to start, naming the keys (%j)", async (environment, options) => {
    const env: Record<string, string> = { TOKEN_ENVIRONMENT: environment, FORWARD_AUTH_ENABLED: "true" };
    if ("tls" in options) Object.assign(env, { TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_CLIENT_CA_FILE: pki.caCert, TLS_PORTS: options.tls });
    const starting = start(env);
    await expect(starting).rejects.toBeInstanceOf(ConfigError);
    await expect(starting).rejects.toThrow(`FORWARD_AUTH_ENABLED: /auth must be protected in ${environment}: set FORWARD_AUTH_SECRET`);
    await expect(starting).rejects.toThrow("TLS_CLIENT_CA_FILE");
  });

  it("accepts FORWARD_AUTH_ENABLED=true in production with a secret or with mutual TLS on the HTTP port", () => {
    expect(loadConfig({ TOKEN_ENVIRONMENT: "production", FORWARD_AUTH_ENABLED: "true", FORWARD_AUTH_SECRET: SECRET }).forwardAuthEnabled).toBe(true);
    for (const ports of ["both", "http"]) {
      const config = loadConfig({ TOKEN_ENVIRONMENT: "production", FORWARD_AUTH_ENABLED: "true", TLS_CERT_FILE: "/c.pem", TLS_KEY_FILE: "/k.pem", TLS_CLIENT_CA_FILE: "/ca.pem", TLS_PORTS: ports });
      expect(config.forwardAuthEnabled).toBe(true);
    }
    expect(loadConfig({ TOKEN_ENVIRONMENT: "development", FORWARD_AUTH_ENABLED: "true" }).forwardAuthEnabled).toBe(true);
  });
});

describe("LEGACY_JWT_REQUIRE_ENV's default depends on the environment", () => {
  it.each([
    ["development", false],
    ["dev", false],
    ["staging", true],
    ["production", true],
    ["prod", true],
  ] as const)("%s: %s", (environment, expected) => {
    expect(loadConfig({ TOKEN_ENVIRONMENT: environment }).legacyRequireEnv).toBe(expected);
  });

  it("can be set either way explicitly", () => {
    expect(loadConfig({ TOKEN_ENVIRONMENT: "production", LEGACY_JWT_REQUIRE_ENV: "false" }).legacyRequireEnv).toBe(false);
    expect(loadConfig({ TOKEN_ENVIRONMENT: "development", LEGACY_JWT_REQUIRE_ENV: "true" }).legacyRequireEnv).toBe(true);
  });
});
