import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CONFIG_KEYS } from "../../src/config.js";
import { makeTestPki, type TestPki } from "../support/certs.js";

const run = promisify(execFile);
const CLI = "dist/src/cli/tokenctl.js";
const SERVER = "dist/src/main.js";

/** What a finished child process left behind, exit code included. */
interface Outcome {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a built entry point with exactly `env` (plus PATH), never the caller's configuration. */
async function node(script: string, args: readonly string[], env: Record<string, string>): Promise<Outcome> {
  try {
    const { stdout, stderr } = await run("node", [script, ...args], { env: { PATH: process.env["PATH"] ?? "", ...env }, timeout: 20_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** `tokenctl config check`, as operators run it: the built CLI in a child process. */
describe("tokenctl config check", () => {
  let pki: TestPki;

  beforeAll(async () => {
    await run("npm", ["run", "build", "--silent"]);
    pki = await makeTestPki();
  }, 120_000);

  afterAll(async () => {
    await pki?.remove();
  });

  const check = (env: Record<string, string>) => node(CLI, ["config", "check"], env);

  it("prints configuration OK and a table of every key with its effective value and source", async () => {
    const { code, stdout, stderr } = await check({ TOKEN_ENVIRONMENT: "prod", GRPC_PORT: "6000", KEY_ENCRYPTION_KEY: "q8Bx3oWfF2v0Zf5c1n0bJr8ZbLr9oM0sXgk2Yw7tHjE=" });
    expect({ code, stderr }).toEqual({ code: 0, stderr: "" });
    expect(stdout.startsWith("configuration OK\n")).toBe(true);
    for (const key of Object.keys(CONFIG_KEYS)) expect(stdout, key).toMatch(new RegExp(`^${key} +`, "m"));
    expect(stdout).toMatch(/^TOKEN_ENVIRONMENT +production +env$/m); // the short name, resolved
    expect(stdout).toMatch(/^GRPC_PORT +6000 +env$/m);
    expect(stdout).toMatch(/^HTTP_PORT +8080 +default$/m);
    expect(stdout).toMatch(/^store: +embedded PGlite in \.\/data$/m);
    expect(stdout).toMatch(/^tls: +off \(cleartext\)$/m);
    expect(stdout).toMatch(/^KEY_ENCRYPTION_KEY +\(set, redacted\) +env$/m);
    expect(stdout).toMatch(/^key encryption: +current [0-9a-f]{16} from KEY_ENCRYPTION_KEY$/m);
    expect(stdout).not.toContain("q8Bx3oWfF2v0Zf5c1n0bJr8ZbLr9oM0sXgk2Yw7tHjE");
  });

  it("never prints a secret or a database password", async () => {
    const secrets: Record<string, string> = {};
    for (const key of Object.keys(CONFIG_KEYS).filter((k) => /SECRET/.test(k))) secrets[key] = `s3cret-${key.toLowerCase()}-0123456789abcdefghijklmnop`;
    expect(Object.keys(secrets)).toEqual(expect.arrayContaining(["LEGACY_JWT_HMAC_SECRET", "LEGACY_JWT_HMAC_SECRET_PREVIOUS"]));
    const { code, stdout, stderr } = await check({ ...secrets, DATABASE_URL: "postgres://tis:hunter2-db-password@db.internal:5432/tokens" });
    expect(code).toBe(0);
    for (const value of [...Object.values(secrets), "hunter2-db-password"]) {
      expect(stdout + stderr).not.toContain(value);
    }
    for (const key of Object.keys(secrets)) expect(stdout).toMatch(new RegExp(`^${key} +\\(set, redacted\\) +env$`, "m"));
    expect(stdout).toMatch(/^DATABASE_URL +postgres:\/\/tis:\*\*\*@db\.internal:5432\/tokens +env$/m);
    expect(stdout).toMatch(/^legacy JWT keys: +hmac-current\/HS256, hmac-previous\/HS256$/m);
  });

  it("checks the TLS files and reports mutual TLS", async () => {
    const { code, stdout } = await check({ TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_CLIENT_CA_FILE: pki.caCert });
    expect(code).toBe(0);
    expect(stdout).toMatch(/^tls: +gRPC and HTTP ports, mutual TLS \(client certificates required\); CN=localhost, expires \d{4}-/m);
  });

  it("names every bad key at once and exits 78, printing nothing on stdout", async () => {
    const { code, stdout, stderr } = await check({ TOKEN_ENVIRONMENT: "qa", GRPC_PORT: "70000", TLS_CERT_FILE: pki.serverCert });
    expect({ code, stdout }).toEqual({ code: 78, stdout: "" });
    expect(stderr).toContain("tokenctl: invalid configuration:");
    expect(stderr).toContain('TOKEN_ENVIRONMENT="qa": must be development, staging or production');
    expect(stderr).toContain('GRPC_PORT="70000"');
    expect(stderr).toContain("TLS_KEY_FILE: must be set when TLS_CERT_FILE is");
  });

  it("reads the files the keys name, as the server does, and names each bad one", async () => {
    const jwks = join(pki.dir, "bad-jwks.json");
    await writeFile(jwks, JSON.stringify({ keys: [{ kty: "oct", k: "c2VjcmV0", alg: "HS256" }] }));
    const { code, stdout, stderr } = await check({
      TLS_CERT_FILE: pki.serverCert,
      TLS_KEY_FILE: pki.unrelatedKey,
      LEGACY_JWT_PUBLIC_KEY_FILE: join(pki.dir, "missing.pem"),
    });
    expect({ code, stdout }).toEqual({ code: 78, stdout: "" });
    expect(stderr).toContain("TLS_KEY_FILE: the key in");
    expect(stderr).toContain("does not match the certificate in TLS_CERT_FILE");
    expect(stderr).toContain("LEGACY_JWT_PUBLIC_KEY_FILE: cannot use");
    const other = await check({ LEGACY_JWT_JWKS_FILE: jwks, TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_CLIENT_CA_FILE: join(pki.dir, "nope.pem") });
    expect(other.code).toBe(78);
    expect(other.stderr).toContain("LEGACY_JWT_JWKS_FILE: cannot use");
    expect(other.stderr).toContain("TLS_CLIENT_CA_FILE: cannot read");
  });

  it("agrees with the server: the same bad file stops `node dist/src/main.js` with exit 78, naming the key", async () => {
    const env = { DATA_DIR: "memory://", GRPC_PORT: "0", HTTP_PORT: "0", TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.unrelatedKey };
    const [cli, server] = await Promise.all([check(env), node(SERVER, [], env)]);
    expect(cli.code).toBe(78);
    expect(server.code).toBe(78);
    expect(server.stderr).toContain("TLS_KEY_FILE: the key in");
  });

  it("refuses production without a key-encryption key, as the server does, saying how to make one", async () => {
    const env = { DATA_DIR: "memory://", GRPC_PORT: "0", HTTP_PORT: "0", TOKEN_ENVIRONMENT: "production" };
    const [cli, server] = await Promise.all([check(env), node(SERVER, [], env)]);
    expect({ code: cli.code, stdout: cli.stdout }).toEqual({ code: 78, stdout: "" });
    expect(server.code).toBe(78);
    for (const stderr of [cli.stderr, server.stderr]) expect(stderr).toContain("KEY_ENCRYPTION_KEY: required in production: the key-encryption key that encrypts the stored signing keys, kept outside the database; make one with `openssl rand -base64 32`");
  });

  it("refuses `config` without the check subcommand (usage, 64)", async () => {
    expect(await node(CLI, ["config"], {})).toMatchObject({ code: 64, stderr: expect.stringContaining("config needs one subcommand: config check") });
    expect(await node(CLI, ["config", "check", "--bogus"], {})).toMatchObject({ code: 64 });
  });
});
