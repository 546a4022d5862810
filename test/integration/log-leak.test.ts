import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpcJs from "@grpc/grpc-js";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health } from "../../gen/health/v1/health_pb.js";
import { TokenService, type IntrospectTokenResponse, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * The log-leak test: a real service at debug level (every request logged,
 * every security event logged rather than folded), driven through every RPC
 * and HTTP path with good and bad credentials of every kind, plus tokenctl in
 * child processes. Then every captured line (the service's log and the
 * children's stdout and stderr, except the one stream whose job is to print a
 * token: `tokenctl bootstrap`'s stdout) is searched for every credential the
 * test handled and for anything shaped like one. `scripts/test.sh` runs the
 * same patterns over the whole test run's output (`scripts/check-logs.sh`).
 */

const run = promisify(execFile);
const CLI = "dist/src/cli/tokenctl.js";
const LEGACY_SECRET = "log-leak-legacy-secret-0123456789abcdef0123";

/** Shapes of credentials, as scripts/check-logs.sh has them. */
const PATTERNS: readonly (readonly [string, RegExp])[] = [
  ["development token", /cf-[0-9A-Za-z]{22}/],
  ["staging token", /cfstg-[0-9A-Za-z]{22}/],
  ["production token", /cfprd-[0-9A-Za-z]{22}/],
  ["JWT", /eyJ[A-Za-z0-9_-]{10,}\./],
  // A placeholder such as `Bearer <token>` in a help text is not a credential.
  ["Bearer credential", /Bearer [^ "<]/],
  ["Basic credential", /Basic [A-Za-z0-9+/=]{8,}/],
];

/** Text that was written somewhere a person or a log system can read it. */
interface Output {
  readonly source: string;
  readonly text: string;
}

const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`).toString("base64")}`;

describe("no credential in any log or output", () => {
  let db: TestDatabase;
  let sut: ServiceUnderTest;
  let admin: string;
  let grpc: ReturnType<typeof grpcClient>;
  let base: string;
  /** Every credential the test handled: tokens, JWTs, header values. */
  const secrets = new Set<string>();
  /** Outputs of the tokenctl child processes. */
  const outputs: Output[] = [];
  const keep = <T extends string>(value: T): T => {
    secrets.add(value);
    return value;
  };
  const bearer = (token: string) => keep(`Bearer ${token}`);
  const asCaller = (token: string) => ({ authorization: bearer(token) });

  beforeAll(async () => {
    // tokenctl runs from the build, as `npm run tokenctl` does.
    await run("npm", ["run", "build", "--silent"]);
    db = await createTestDatabase();
    sut = await startTestService({
      DATABASE_URL: db.url,
      LOG_LEVEL: "debug",
      SECURITY_EVENT_WINDOW: "10ms", // fold nothing: every event reaches the log
      LEGACY_JWT_HMAC_SECRET: LEGACY_SECRET,
      LEGACY_JWT_SUNSET_DATE: "2099-01-01",
      FORWARD_AUTH_BACKEND_JWT: "true",
    });
    admin = keep(sut.bootstrapToken!);
    grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    base = `http://127.0.0.1:${sut.service.httpPort}`;
  }, 180_000);

  afterAll(async () => {
    grpc?.close();
    await sut?.service.stop();
    await db?.drop();
  });

  it("exercises every RPC on both servers, with good and bad credentials", async () => {
    const clients: Client<typeof TokenService>[] = [
      createClient(TokenService, createConnectTransport({ baseUrl: base, httpVersion: "1.1" })),
      createClient(TokenService, createGrpcTransport({ baseUrl: base })),
      createClient(TokenService, createGrpcWebTransport({ baseUrl: base, httpVersion: "1.1" })),
    ];
    const swallow = (p: Promise<unknown>) => p.then(() => undefined, () => undefined);
    const now = Math.floor(Date.now() / 1000);
    const hmac = new TextEncoder().encode(LEGACY_SECRET);
    const jwt = async (claims: Record<string, unknown>, key: Uint8Array = hmac) => keep(await new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).sign(key));
    const legacy = await jwt({ sub: "legacy@example.com", jti: "leak-1", exp: now + 600 });
    const legacyNoJti = await jwt({ sub: "legacy@example.com", exp: now + 600 });
    const legacyExpired = await jwt({ sub: "legacy@example.com", jti: "leak-2", exp: now - 600 });
    const legacyForged = await jwt({ sub: "legacy@example.com", jti: "leak-3", exp: now + 600 }, new TextEncoder().encode("not-the-secret-at-all-0123456789abcdef"));
    const legacyForeign = await jwt({ sub: "legacy@example.com", jti: "leak-4", env: "prod", exp: now + 600 });
    const unsigned = keep(`${Buffer.from('{"alg":"none"}').toString("base64url")}.${Buffer.from('{"sub":"x"}').toString("base64url")}.`);
    const garbage = keep("this-is-no-token-but-still-a-secret-value");

    const issued: IssueTokenResponse[] = [];
    for (const [i, client] of clients.entries()) {
      const gateway = await client.issueToken({ name: `leak-gw-${i}`, scopes: ["tokens.introspect", "tokens.read", "tokens.revoke"] }, { headers: asCaller(admin) });
      const user = await client.issueToken({ name: `leak-user-${i}`, scopes: ["orders.read"] }, { headers: asCaller(admin) });
      const doomed = await client.issueToken({ name: `leak-doomed-${i}`, scopes: ["orders.read"] }, { headers: asCaller(admin) });
      for (const t of [gateway, user, doomed]) keep(t.token);
      issued.push(gateway, user, doomed);
      const gw = asCaller(gateway.token);
      const backend = await client.introspectToken({ token: user.token, includeBackendJwt: true }, { headers: gw });
      keep(backend.backendJwt);
      await client.revokeToken({ target: { case: "token", value: doomed.token }, reason: "leak test" }, { headers: gw });
      const presented = [user.token, doomed.token, keep(mintToken("development").token), keep(mintToken("staging").token), keep(mintToken("production").token), garbage, legacy, legacyNoJti, legacyExpired, legacyForged, legacyForeign, unsigned];
      for (const token of presented) await client.introspectToken({ token }, { headers: gw });
      await client.listTokens({ includeRevoked: true }, { headers: gw });
      await client.listSecurityEvents({}, { headers: asCaller(admin) });
      await client.listLegacyJwtUsage({}, { headers: asCaller(admin) });
      await client.getJwks({}, { headers: gw });
      // Rotation and bulk revocation (issue 13): the successor is a secret too.
      const rotatable = await client.issueToken({ name: `leak-rotated-${i}`, scopes: ["orders.read"] }, { headers: asCaller(admin) });
      keep(rotatable.token);
      const rotated = await client.rotateToken({ target: { case: "token", value: rotatable.token }, gracePeriod: { seconds: 0n, nanos: 0 }, reason: "leak test" }, { headers: asCaller(admin) });
      keep(rotated.token);
      await client.introspectToken({ token: rotated.token }, { headers: gw });
      await swallow(client.rotateToken({ target: { case: "token", value: keep(mintToken("development").token) } }, { headers: asCaller(admin) }));
      await client.revokeTokens({ selector: { name: `leak-rotated-${i}` }, dryRun: true }, { headers: asCaller(admin) });
      await client.revokeTokens({ selector: { name: `leak-rotated-${i}` }, reason: "leak test" }, { headers: asCaller(admin) });
      await client.revokeToken({ target: { case: "tokenId", value: user.info!.id } }, { headers: asCaller(admin) });
      await client.revokeToken({ target: { case: "legacyJti", value: "leak-1" } }, { headers: asCaller(admin) });
      await client.revokeToken({ target: { case: "token", value: keep(mintToken("development").token) } }, { headers: gw });
      // Refusals: every way a caller credential can be wrong.
      const badHeaders = [
        undefined,
        "",
        bearer(keep(mintToken("development").token)),
        bearer(doomed.token),
        bearer(keep(mintToken("staging").token)),
        bearer(legacy),
        bearer(garbage),
        keep(`bearer ${user.token}`),
        keep(`Token ${user.token}`),
        keep(basic(gateway.info!.id, gateway.token)),
        keep(`Bearer ${"x".repeat(5000)}`),
      ];
      for (const authorization of badHeaders) {
        await swallow(client.listTokens({}, { headers: authorization === undefined ? {} : { authorization } }));
        await swallow(client.introspectToken({ token: user.token }, { headers: authorization === undefined ? {} : { authorization } }));
      }
      // Permission denied: a read-only token tries to issue and to list events.
      await swallow(client.issueToken({ name: "nope" }, { headers: asCaller(user.token) }));
      await swallow(client.listSecurityEvents({}, { headers: gw }));
    }

    // The same over the gRPC port, including a stream and the health service.
    const gateway = issued[0]!;
    const gw = asCaller(gateway.token);
    await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: issued[1]!.token, includeBackendJwt: true }, gw);
    for (const token of [issued[2]!.token, legacy, legacyForged, garbage, keep(mintToken("production").token)]) await grpc.unary("introspectToken", { token }, gw);
    for (const authorization of ["", bearer(keep(mintToken("development").token)), keep(basic(gateway.info!.id, gateway.token)), bearer(legacy)]) {
      await swallow(grpc.unary("listTokens", {}, authorization === "" ? {} : { authorization }));
    }
    await grpc.unary("listTokens", {}, gw);
    await grpc.unary("listSecurityEvents", {}, asCaller(admin));
    await grpc.unary("getJwks", {}, gw);
    const victim = keep((await grpc.unary<IssueTokenResponse>("issueToken", { name: "leak-victim" }, asCaller(admin))).token);
    await watchOneRevocation(gw, async () => {
      await grpc.unary("revokeToken", { target: { case: "token", value: victim } }, gw);
    });
    const health = grpcClient(Health, `127.0.0.1:${sut.service.grpcPort}`);
    await health.unary("check", {});
    health.close();
  });

  /** Opens WatchRevocations on the gRPC port, runs `act`, waits for one revocation, then cancels. */
  async function watchOneRevocation(metadata: Record<string, string>, act: () => Promise<void>): Promise<void> {
    const md = new grpcJs.Metadata();
    for (const [k, v] of Object.entries(metadata)) md.set(k, v);
    const stream = (grpc.client as unknown as Record<string, (req: object, md: grpcJs.Metadata) => grpcJs.ClientReadableStream<{ event: { case: string } }>>).watchRevocations!.call(grpc.client, {}, md);
    stream.on("error", () => undefined); // the cancel below ends it with CANCELLED
    const revoked = new Promise<void>((resolve) => stream.on("data", (m: { event: { case: string } }) => m.event.case === "revocation" && resolve()));
    await new Promise((r) => setTimeout(r, 100));
    await act();
    await revoked;
    stream.cancel();
  }

  it("exercises every plain HTTP endpoint, with good and bad credentials", async () => {
    const issue = (name: string, scopes: string[]) => grpc.unary<IssueTokenResponse>("issueToken", { name, scopes }, asCaller(admin));
    const gateway = await issue("leak-http-gw", ["tokens.introspect", "tokens.revoke"]);
    const user = await issue("leak-http-user", ["orders.read"]);
    keep(gateway.token);
    keep(user.token);
    const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();
    const post = (path: string, body: string, headers: Record<string, string>) =>
      fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded", ...headers }, body }).then(async (r) => {
        await r.arrayBuffer();
        return r;
      });
    const get = (path: string, headers: Record<string, string> = {}) =>
      fetch(`${base}${path}`, { headers }).then(async (r) => {
        await r.arrayBuffer();
        return r;
      });
    const client = keep(basic(gateway.info!.id, gateway.token));

    expect((await post("/oauth2/introspect", form({ token: user.token }), { authorization: client })).status).toBe(200);
    expect((await post("/oauth2/introspect", form({ token: user.token }), { authorization: client, accept: "application/token-introspection+jwt" })).status).toBe(200);
    await post("/oauth2/introspect", form({ token: user.token }), { authorization: bearer(gateway.token) });
    await post("/oauth2/introspect", form({ token: keep(mintToken("production").token) }), { authorization: client });
    await post("/oauth2/introspect", form({ token: user.token }), { authorization: keep(basic(gateway.info!.id, mintToken("development").token)) });
    await post("/oauth2/introspect", form({ token: user.token }), { authorization: keep(basic(gateway.info!.id, user.token)) });
    await post("/oauth2/introspect", form({ token: user.token }), {});
    await post("/oauth2/introspect", form({ token: user.token }), { authorization: keep(`Basic ${Buffer.from("junk").toString("base64")}!!`) });
    expect((await get(`/auth`, { authorization: bearer(user.token) })).status).toBe(200);
    await get(`/auth/api/orders`, { authorization: bearer(keep(mintToken("staging").token)) });
    await get(`/auth`, { authorization: keep(basic(user.info!.id, user.token)) });
    await get(`/auth?access_token=${user.token}`);
    await get("/healthz");
    await get("/readyz");
    await get("/metrics");
    await get("/.well-known/jwks.json");
    await get(`/no-such-path?token=${user.token}`, { authorization: bearer(user.token) });
    expect((await post("/oauth2/revoke", form({ token: user.token }), { authorization: client })).status).toBe(200);
  });

  it("runs tokenctl: bootstrap, and API commands with good and bad credentials", async () => {
    const env = { ...process.env, DATABASE_URL: db.url, TOKEN_ENVIRONMENT: "development", LOG_LEVEL: "debug", TOKENCTL_ADDR: base };
    const capture = async (name: string, args: string[], extra: Record<string, string> = {}, stdin?: string) => {
      const result = await runChild(args, { ...env, ...extra }, stdin);
      outputs.push({ source: `tokenctl ${name} (stderr)`, text: result.stderr }, { source: `tokenctl ${name} (stdout)`, text: result.stdout });
      return result;
    };
    // bootstrap prints its token on stdout: that stream, and only it, is where a token belongs.
    const boot = await runChild(["bootstrap", "--subject", "leak-ops@example.com"], env);
    expect(boot.code).toBe(0);
    const operator = keep(boot.stdout.trim());
    expect(operator).toMatch(/^cf-[0-9A-Za-z]{22}$/);
    outputs.push({ source: "tokenctl bootstrap (stderr)", text: boot.stderr });

    const user = keep((await grpc.unary<IssueTokenResponse>("issueToken", { name: "leak-cli-user", scopes: ["orders.read"] }, asCaller(admin))).token);
    expect((await capture("list", ["list", "--include-revoked", "--json"], { TOKENCTL_TOKEN: operator })).code).toBe(0);
    expect((await capture("introspect", ["introspect", "-", "--json"], { TOKENCTL_TOKEN: operator }, `${user}\n`)).code).toBe(0);
    expect((await capture("introspect foreign", ["introspect", "-"], { TOKENCTL_TOKEN: operator }, `${keep(mintToken("production").token)}\n`)).code).toBe(0);
    expect((await capture("revoke", ["revoke", "-", "--reason", "leak test"], { TOKENCTL_TOKEN: operator }, `${user}\n`)).code).toBe(0);
    expect((await capture("bad caller", ["list"], { TOKENCTL_TOKEN: keep(mintToken("development").token) })).code).toBe(1);
    expect((await capture("revoked caller", ["list"], { TOKENCTL_TOKEN: user })).code).toBe(1);
  });

  it("leaves no credential in the service log or in any child process output", () => {
    const sources: Output[] = [{ source: "service log", text: sut.logs.raw.join("\n") }, ...outputs];
    // The run was observed: request lines for every TokenService method, security events, both servers.
    const lines = sut.logs.lines;
    const methods = new Set(lines.filter((l) => l.msg === "request").map((l) => l.method));
    for (const method of TokenService.methods) expect(methods, method.name).toContain(`/tokens.v1.TokenService/${method.name}`);
    for (const path of ["/oauth2/introspect", "/oauth2/revoke", "/auth", "/metrics"]) expect(lines.some((l) => l.msg === "request" && l.path === path), path).toBe(true);
    const events = new Set(lines.map((l) => l.security_event).filter((e) => e !== undefined));
    for (const type of ["environment_mismatch", "authentication_failed", "permission_denied", "token_revoked", "legacy_jwt_without_jti"]) expect(events, type).toContain(type);
    expect(secrets.size).toBeGreaterThan(60);

    // Reported by place and kind only: a failure message must not leak what it found.
    const leaks: string[] = [];
    const secretList = [...secrets].filter((s) => s.length >= 12);
    for (const { source, text } of sources) {
      text.split("\n").forEach((line, index) => {
        for (const [kind, pattern] of PATTERNS) if (pattern.test(line)) leaks.push(`${source}, line ${index + 1}: ${kind}`);
        if (secretList.some((secret) => line.includes(secret))) leaks.push(`${source}, line ${index + 1}: a credential the test used`);
      });
    }
    expect(leaks).toEqual([]);
  });
});

/** Runs the built tokenctl; resolves with its exit code and both streams (never rejects). */
function runChild(args: string[], env: NodeJS.ProcessEnv, stdin?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn("node", [CLI, ...args], { env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin ?? "");
  });
}
