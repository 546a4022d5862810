import { execFile, spawn, type ChildProcess } from "node:child_process";
import { promisify } from "node:util";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpcJs from "@grpc/grpc-js";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type IntrospectTokenResponse, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * Metrics, request ids and the per-request log, on the real service (on
 * PostgreSQL, so the pool and the LISTEN channel are real) called by a real
 * @grpc/grpc-js client and a real Connect client.
 */

const LEGACY_SECRET = "observability-legacy-secret-0123456789abcdef";
/** A generated request id: a per-process random prefix and a counter. */
const GENERATED_ID = /^[A-Za-z0-9_-]{12}\.[0-9a-z]+$/;

/** One sample of the text exposition. */
interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/** Parses the Prometheus text format (enough of it for these tests). */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) throw new Error(`unparsable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[key!] = value!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

/** The value of the sample with exactly this name and at least these labels; undefined when absent. */
function valueOf(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length === 0) return undefined;
  return found.reduce((sum, s) => sum + s.value, 0);
}

describe("observability of the service", () => {
  let db: TestDatabase;
  let sut: ServiceUnderTest;
  let admin: string;
  let grpc: ReturnType<typeof grpcClient>;
  let connect: Client<typeof TokenService>;
  let baseUrl: string;
  const as = (token: string) => ({ authorization: `Bearer ${token}` });

  const scrape = async (): Promise<Sample[]> => {
    const res = await fetch(`${baseUrl}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    return parseExposition(await res.text());
  };

  /** A unary gRPC call that also returns the initial metadata. */
  const grpcWithMetadata = <Res>(method: string, request: object, metadata: Record<string, string>) =>
    new Promise<{ answer?: Res; error?: grpcJs.ServiceError; headers: grpcJs.Metadata }>((resolve) => {
      const md = new grpcJs.Metadata();
      for (const [k, v] of Object.entries(metadata)) md.set(k, v);
      let headers = new grpcJs.Metadata();
      const call = (grpc.client as unknown as Record<string, (...a: unknown[]) => grpcJs.ClientUnaryCall>)[method]!.call(
        grpc.client,
        request,
        md,
        (err: grpcJs.ServiceError | null, res: Res) => resolve(err ? { error: err, headers } : { answer: res, headers }),
      );
      call.on("metadata", (m: grpcJs.Metadata) => (headers = m));
    });

  const debugLines = (requestId: string) => sut.logs.lines.filter((l) => l.request_id === requestId);

  beforeAll(async () => {
    db = await createTestDatabase();
    sut = await startTestService({ DATABASE_URL: db.url, LEGACY_JWT_HMAC_SECRET: LEGACY_SECRET, LEGACY_JWT_SUNSET_DATE: "2099-01-01" });
    admin = sut.bootstrapToken!;
    grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    baseUrl = `http://127.0.0.1:${sut.service.httpPort}`;
    connect = createClient(TokenService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
  });

  afterAll(async () => {
    grpc?.close();
    await sut?.service.stop();
    await db?.drop();
  });

  describe("metrics", () => {
    it("counts and times calls on both servers by service, method and code", async () => {
      const before = await scrape();
      const issued = await connect.issueToken({ name: "m-rpc", scopes: ["orders.read"] }, { headers: as(admin) });
      await grpc.unary("introspectToken", { token: issued.token }, as(admin));
      await grpc.unary("introspectToken", { token: issued.token }, as(admin));
      await connect.introspectToken({ token: issued.token }, { headers: as(admin) });
      await expect(grpc.unary("introspectToken", { token: issued.token }, as(mintToken("development").token))).rejects.toMatchObject({ code: grpcJs.status.UNAUTHENTICATED });
      const after = await scrape();

      const delta = (name: string, labels: Record<string, string>) => (valueOf(after, name, labels) ?? 0) - (valueOf(before, name, labels) ?? 0);
      const introspect = { service: "tokens.v1.TokenService", method: "IntrospectToken" };
      expect(delta("token_service_rpc_handled_total", { ...introspect, server: "grpc", code: "OK" })).toBe(2);
      expect(delta("token_service_rpc_handled_total", { ...introspect, server: "grpc", code: "UNAUTHENTICATED" })).toBe(1);
      expect(delta("token_service_rpc_handled_total", { ...introspect, server: "http", code: "OK" })).toBe(1);
      expect(delta("token_service_rpc_handled_total", { service: "tokens.v1.TokenService", method: "IssueToken", server: "http", code: "OK" })).toBe(1);
      // The histogram: cumulative buckets ending in +Inf = _count, and a positive _sum.
      const grpcOk = { ...introspect, server: "grpc", code: "OK" };
      expect(delta("token_service_rpc_duration_seconds_count", grpcOk)).toBe(2);
      expect(delta("token_service_rpc_duration_seconds_bucket", { ...grpcOk, le: "+Inf" })).toBe(2);
      expect(valueOf(after, "token_service_rpc_duration_seconds_sum", grpcOk)).toBeGreaterThan(0);
      const buckets = after.filter((s) => s.name === "token_service_rpc_duration_seconds_bucket" && s.labels["server"] === "grpc" && s.labels["method"] === "IntrospectToken" && s.labels["code"] === "OK");
      expect(buckets.map((b) => b.value)).toEqual([...buckets.map((b) => b.value)].sort((a, b) => a - b));
      // Bounded labels only: no label value anywhere carries a token.
      for (const sample of after) for (const value of Object.values(sample.labels)) expect(value).not.toMatch(/^cf(stg|prd)?-/);
    });

    it("counts introspection outcomes by use, token kind and reason", async () => {
      const issued = await connect.issueToken({ name: "m-outcomes", scopes: ["orders.read"] }, { headers: as(admin) });
      const revoked = await connect.issueToken({ name: "m-revoked", scopes: ["orders.read"] }, { headers: as(admin) });
      await connect.revokeToken({ target: { case: "token", value: revoked.token } }, { headers: as(admin) });
      const before = await scrape();
      const presented = [issued.token, issued.token, revoked.token, mintToken("development").token, mintToken("production").token, "not-a-token"];
      for (const token of presented) await grpc.unary("introspectToken", { token }, as(admin));
      const after = await scrape();
      const delta = (labels: Record<string, string>) =>
        (valueOf(after, "token_service_introspections_total", labels) ?? 0) - (valueOf(before, "token_service_introspections_total", labels) ?? 0);
      expect(delta({ use: "introspect", token_kind: "opaque", outcome: "active" })).toBe(2);
      expect(delta({ use: "introspect", token_kind: "opaque", outcome: "revoked" })).toBe(1);
      expect(delta({ use: "introspect", token_kind: "opaque", outcome: "unknown" })).toBe(1);
      expect(delta({ use: "introspect", token_kind: "opaque", outcome: "environment_mismatch" })).toBe(1);
      expect(delta({ use: "introspect", token_kind: "unrecognized", outcome: "malformed" })).toBe(1);
      // The admin's own credential, once per call, counted apart.
      expect(delta({ use: "authenticate", token_kind: "opaque", outcome: "active" })).toBe(presented.length);
    });

    it("counts legacy JWT introspections by outcome", async () => {
      const secret = new TextEncoder().encode(LEGACY_SECRET);
      const now = Math.floor(Date.now() / 1000);
      const good = await new SignJWT({ sub: "legacy@example.com", jti: "obs-1", exp: now + 600 }).setProtectedHeader({ alg: "HS256" }).sign(secret);
      const expired = await new SignJWT({ sub: "legacy@example.com", jti: "obs-2", exp: now - 600 }).setProtectedHeader({ alg: "HS256" }).sign(secret);
      const before = await scrape();
      for (const token of [good, good, expired]) await grpc.unary("introspectToken", { token }, as(admin));
      const after = await scrape();
      const delta = (outcome: string) =>
        (valueOf(after, "token_service_legacy_jwt_introspections_total", { outcome }) ?? 0) - (valueOf(before, "token_service_legacy_jwt_introspections_total", { outcome }) ?? 0);
      expect(delta("active")).toBe(2);
      expect(delta("expired")).toBe(1);
      expect(valueOf(after, "token_service_introspections_total", { token_kind: "legacy_jwt", outcome: "active" })).toBeGreaterThanOrEqual(2);
    });

    it("counts security events by type and severity, every occurrence", async () => {
      const before = await scrape();
      const foreign = mintToken("staging").token;
      for (let i = 0; i < 3; i++) await grpc.unary("introspectToken", { token: foreign }, as(admin));
      await expect(grpc.unary("listTokens", {}, as(mintToken("development").token))).rejects.toMatchObject({ code: grpcJs.status.UNAUTHENTICATED });
      const after = await scrape();
      const delta = (labels: Record<string, string>) =>
        (valueOf(after, "token_service_security_events_total", labels) ?? 0) - (valueOf(before, "token_service_security_events_total", labels) ?? 0);
      expect(delta({ type: "environment_mismatch", severity: "critical" })).toBe(3); // logged and stored once, counted thrice
      expect(delta({ type: "authentication_failed", severity: "warning" })).toBe(1);
    });

    it("exposes the cache, the revocation listener, the pool and the propagation lag", async () => {
      const issued = await connect.issueToken({ name: "m-cache", scopes: ["orders.read"] }, { headers: as(admin) });
      const before = await scrape();
      await grpc.unary("introspectToken", { token: issued.token }, as(admin)); // a miss, then cached
      await grpc.unary("introspectToken", { token: issued.token }, as(admin)); // a hit
      const lagBefore = valueOf(before, "token_service_revocation_propagation_seconds_count") ?? 0;
      await connect.revokeToken({ target: { case: "token", value: issued.token } }, { headers: as(admin) });
      // The NOTIFY comes back through this replica's own LISTEN connection.
      await expect.poll(async () => valueOf(await scrape(), "token_service_revocation_propagation_seconds_count"), { timeout: 5000 }).toBeGreaterThan(lagBefore);
      const after = await scrape();

      expect(valueOf(after, "token_service_cache_hits_total")!).toBeGreaterThan(valueOf(before, "token_service_cache_hits_total")!);
      expect(valueOf(after, "token_service_cache_misses_total")!).toBeGreaterThan(valueOf(before, "token_service_cache_misses_total")!);
      expect(valueOf(after, "token_service_cache_evictions_total")!).toBeGreaterThan(valueOf(before, "token_service_cache_evictions_total")!); // the revoked one
      expect(valueOf(after, "token_service_cache_entries")).toBeGreaterThan(0);
      expect(valueOf(after, "token_service_cache_bytes")).toBeGreaterThan(0);
      expect(valueOf(after, "token_service_revocation_listener_up")).toBe(1);
      expect(valueOf(after, "token_service_revocation_listener_reconnects_total")).toBe(0);
      expect(valueOf(after, "token_service_revocation_listener_losses_total")).toBe(0);
      expect(valueOf(after, "token_service_store_pool_max_connections")).toBe(10);
      expect(valueOf(after, "token_service_store_pool_connections")).toBeGreaterThan(0);
      expect(valueOf(after, "token_service_store_pool_idle_connections")).toBeGreaterThanOrEqual(0);
      expect(valueOf(after, "token_service_store_pool_waiting_requests")).toBe(0);
      // A local round trip through PostgreSQL: well under the 5 s bucket.
      expect(valueOf(after, "token_service_revocation_propagation_seconds_bucket", { le: "5" })).toBe(valueOf(after, "token_service_revocation_propagation_seconds_count"));
      expect(valueOf(after, "token_service_info", { environment: "development", store: "postgres" })).toBe(1);
      expect(valueOf(after, "process_cpu_user_seconds_total")).toBeGreaterThan(0);
      expect(valueOf(after, "nodejs_heap_size_used_bytes")).toBeGreaterThan(0);
    });

    it("answers only GET and HEAD on /metrics", async () => {
      expect((await fetch(`${baseUrl}/metrics`, { method: "POST" })).status).toBe(405);
      const head = await fetch(`${baseUrl}/metrics`, { method: "HEAD" });
      expect(head.status).toBe(200);
      expect(await head.text()).toBe("");
    });
  });

  describe("request ids", () => {
    it("echoes x-request-id over gRPC and puts it in the call's debug line", async () => {
      const { answer, headers } = await grpcWithMetadata<IntrospectTokenResponse>("introspectToken", { token: admin }, { ...as(admin), "x-request-id": "gw-req.0001_A" });
      expect(answer?.active).toBe(true);
      expect(headers.get("x-request-id")).toEqual(["gw-req.0001_A"]);
      const [line] = debugLines("gw-req.0001_A");
      expect(line).toMatchObject({ level: 20, msg: "request", server: "grpc", method: "/tokens.v1.TokenService/IntrospectToken", code: "OK", peer: "127.0.0.1" });
      expect(line!["duration_ms"]).toEqual(expect.any(Number));

      const refused = await grpcWithMetadata("listTokens", {}, { "x-request-id": "gw-req-refused" });
      expect(refused.error?.code).toBe(grpcJs.status.UNAUTHENTICATED);
      expect(refused.headers.get("x-request-id")).toEqual(["gw-req-refused"]);
      expect(debugLines("gw-req-refused")).toContainEqual(expect.objectContaining({ msg: "request", server: "grpc", method: "/tokens.v1.TokenService/ListTokens", code: "UNAUTHENTICATED" }));
    });

    it("echoes x-request-id over Connect, on failures too, and logs the code", async () => {
      const res = await fetch(`${baseUrl}/tokens.v1.TokenService/ListTokens`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-request-id": "connect-req-42" },
        body: "{}",
      });
      expect(res.status).toBe(401);
      expect(res.headers.get("x-request-id")).toBe("connect-req-42");
      expect(debugLines("connect-req-42")).toContainEqual(expect.objectContaining({ msg: "request", server: "http", method: "/tokens.v1.TokenService/ListTokens", code: "UNAUTHENTICATED" }));
    });

    it("echoes x-request-id over gRPC on the HTTP port (h2c)", async () => {
      const overH2c = createClient(TokenService, createGrpcTransport({ baseUrl }));
      let echoed: string | null = null;
      await overH2c.introspectToken({ token: admin }, { headers: { ...as(admin), "x-request-id": "h2c-req-1" }, onHeader: (h) => (echoed = h.get("x-request-id")) });
      expect(echoed).toBe("h2c-req-1");
      expect(debugLines("h2c-req-1")).toContainEqual(expect.objectContaining({ msg: "request", server: "http", code: "OK" }));
    });

    it("carries the request id into the security event the call raised", async () => {
      // Events fold by actor (peer, method, …), not by token: a new window makes this one the first of its kind, so it is logged.
      await sut.service.deps.events.flush();
      const foreign = mintToken("production").token;
      await grpcWithMetadata("introspectToken", { token: foreign }, { ...as(admin), "x-request-id": "sec-grpc-1" });
      expect(debugLines("sec-grpc-1")).toContainEqual(expect.objectContaining({ level: 40, security_event: "environment_mismatch", tokenHint: expect.stringMatching(/^cfprd-…/) }));

      const stranger = mintToken("development").token;
      await fetch(`${baseUrl}/tokens.v1.TokenService/ListTokens`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-request-id": "sec-connect-1", authorization: `Bearer ${stranger}` },
        body: "{}",
      });
      expect(debugLines("sec-connect-1")).toContainEqual(expect.objectContaining({ level: 40, security_event: "authentication_failed" }));
      // Not stored: the request id is for the log line only.
      const events = await connect.listSecurityEvents({}, { headers: as(admin) });
      expect(JSON.stringify(events, (_key, value: unknown) => (typeof value === "bigint" ? String(value) : value))).not.toContain("sec-grpc-1");
    });

    it.each([
      ["absent", undefined],
      ["too long", "a".repeat(129)],
      ["with spaces", "two words"],
      ["with a quote", 'x"y'],
    ])("generates one when the caller's is %s", async (_case, given) => {
      const { headers } = await grpcWithMetadata<IntrospectTokenResponse>("introspectToken", { token: admin }, { ...as(admin), ...(given ? { "x-request-id": given } : {}) });
      const id = String(headers.get("x-request-id")[0]);
      expect(id).toMatch(GENERATED_ID);
      expect(debugLines(id)).toContainEqual(expect.objectContaining({ msg: "request", code: "OK" }));
      if (given) expect(sut.logs.raw.join("\n")).not.toContain(given);

      const res = await fetch(`${baseUrl}/tokens.v1.TokenService/IntrospectToken`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${admin}`, ...(given ? { "x-request-id": given } : {}) },
        body: JSON.stringify({ token: admin }),
      });
      expect(res.status).toBe(200);
      expect(res.headers.get("x-request-id")).toMatch(GENERATED_ID);
      expect(res.headers.get("x-request-id")).not.toBe(id);
    });

    it("gives plain HTTP endpoints a request id and a debug line too", async () => {
      const res = await fetch(`${baseUrl}/metrics`, { headers: { "x-request-id": "scrape-7" } });
      await res.text();
      expect(res.headers.get("x-request-id")).toBe("scrape-7");
      await expect.poll(() => debugLines("scrape-7")).toContainEqual(expect.objectContaining({ msg: "request", http_method: "GET", path: "/metrics", status: 200 }));
    });

    it("never logs the token or the Authorization header in request lines", async () => {
      const issued: IssueTokenResponse = await connect.issueToken({ name: "m-quiet" }, { headers: as(admin) });
      await grpc.unary("introspectToken", { token: issued.token }, as(admin));
      const requestLines = sut.logs.raw.filter((l) => l.includes('"msg":"request"'));
      expect(requestLines.length).toBeGreaterThan(10);
      for (const line of requestLines) {
        expect(line).not.toContain(issued.token);
        expect(line).not.toContain(admin);
        expect(line.toLowerCase()).not.toContain("bearer");
      }
    });
  });
});

describe("at the default log level, with metrics off", () => {
  let sut: ServiceUnderTest;
  let grpc: ReturnType<typeof grpcClient>;

  beforeAll(async () => {
    sut = await startTestService({ DATA_DIR: "memory://", LOG_LEVEL: "info", METRICS_ENABLED: "false" });
    grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
  });

  afterAll(async () => {
    grpc?.close();
    await sut?.service.stop();
  });

  it("logs nothing per call and serves no /metrics, but still echoes request ids", async () => {
    const admin = sut.bootstrapToken!;
    const linesBefore = sut.logs.raw.length;
    for (let i = 0; i < 5; i++) await grpc.unary("introspectToken", { token: admin }, { authorization: `Bearer ${admin}` });
    const res = await fetch(`http://127.0.0.1:${sut.service.httpPort}/tokens.v1.TokenService/IntrospectToken`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${admin}`, "x-request-id": "quiet-1" },
      body: JSON.stringify({ token: admin }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-request-id")).toBe("quiet-1");
    expect(sut.logs.raw.length).toBe(linesBefore);
    expect(sut.service.metrics).toBeUndefined();
    expect((await fetch(`http://127.0.0.1:${sut.service.httpPort}/metrics`)).status).toBe(404);
  });
});

describe("metrics under WORKERS=2", () => {
  let db: TestDatabase;
  let primary: ChildProcess | undefined;
  let httpPort: number;

  beforeAll(async () => {
    // The cluster runs from the build, as `npm start` runs it.
    await promisify(execFile)("npm", ["run", "build", "--silent"]);
    db = await createTestDatabase();
    primary = spawn("node", ["dist/src/main.js"], {
      env: { ...process.env, DATABASE_URL: db.url, WORKERS: "2", LISTEN_HOST: "127.0.0.1", GRPC_PORT: "0", HTTP_PORT: "0", LOG_LEVEL: "info", SHUTDOWN_GRACE: "1s" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    let listening = 0;
    httpPort = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the cluster did not start:\n${stderr}`)), 60_000);
      primary!.stderr!.on("data", (chunk: Buffer) => {
        stderr += chunk.toString("utf8");
        const ports = [...stderr.matchAll(/"msg":"token service listening"/g)].length;
        // Both workers share one port (node:cluster); wait until both are serving.
        if (ports >= 2 && ports !== listening) {
          listening = ports;
          const port = /"http":"127\.0\.0\.1:(\d+)"/.exec(stderr)?.[1];
          clearTimeout(timer);
          resolve(Number(port));
        }
      });
    });
  }, 180_000);

  afterAll(async () => {
    if (primary?.exitCode === null) {
      const exited = new Promise((resolve) => primary!.once("exit", resolve));
      primary.kill("SIGTERM");
      await exited;
    }
    await db?.drop();
  });

  it("answers /metrics with the sum of every worker, whichever worker takes the scrape", async () => {
    const url = `http://127.0.0.1:${httpPort}`;
    const calls = 12;
    // Fresh connections, so the calls (and the scrapes) spread over both workers.
    for (let i = 0; i < calls; i++) {
      const res = await fetch(`${url}/tokens.v1.TokenService/ListTokens`, { method: "POST", headers: { "content-type": "application/json", connection: "close" }, body: "{}" });
      expect(res.status).toBe(401);
    }
    const labels = { server: "http", method: "ListTokens", code: "UNAUTHENTICATED" };
    for (let i = 0; i < 4; i++) {
      const samples = parseExposition(await (await fetch(`${url}/metrics`, { headers: { connection: "close" } })).text());
      expect(valueOf(samples, "token_service_rpc_handled_total", labels)).toBe(calls);
      expect(valueOf(samples, "token_service_revocation_listener_up")).toBe(2); // one listener per worker
      expect(valueOf(samples, "token_service_info", { store: "postgres" })).toBe(1);
    }
  });
});
