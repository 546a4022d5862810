import { createHash, randomBytes } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health } from "../../gen/health/v1/health_pb.js";
import { TokenService, type IntrospectTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * OpenTelemetry tracing, end to end: the whole service started with
 * OTEL_TRACES_EXPORTER=otlp exports to an OTLP/HTTP receiver inside this test
 * (a node:http server taking POST /v1/traces), and the spans it receives are
 * checked: the caller's W3C traceparent continued on every path, one server
 * span per call with the RPC/HTTP semantic-convention attributes, the cache's
 * answer as an attribute, a child span for the store query on a miss, and no
 * credential anywhere. With tracing off, nothing reaches the receiver.
 */

/** One POST the receiver took. */
interface Export {
  readonly contentType: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
}

/** An OTLP/HTTP receiver on 127.0.0.1, port 0. */
async function startReceiver() {
  const exports: Export[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      if (req.method === "POST" && req.url === "/v1/traces") exports.push({ contentType: req.headers["content-type"] ?? "", headers: req.headers, body: Buffer.concat(chunks) });
      // An empty ExportTraceServiceResponse: full success (OTLP/HTTP).
      res.writeHead(200, { "content-type": req.headers["content-type"] ?? "application/json" });
      res.end(req.headers["content-type"]?.includes("json") ? "{}" : "");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`;
  return { url, exports, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** A span as OTLP/JSON carries it, attributes flattened. */
interface ExportedSpan {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string;
  readonly name: string;
  readonly kind: number;
  readonly status: { readonly code?: number };
  readonly attributes: Record<string, string | number | boolean>;
  readonly resource: Record<string, string | number | boolean>;
}

type OtlpValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number };
type OtlpAttribute = { key: string; value: OtlpValue };

function flatten(attributes: readonly OtlpAttribute[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const { key, value } of attributes ?? []) out[key] = value.stringValue ?? value.boolValue ?? value.doubleValue ?? Number(value.intValue);
  return out;
}

/** Every span in OTLP/JSON exports. */
function spansOf(exports: readonly Export[]): ExportedSpan[] {
  const spans: ExportedSpan[] = [];
  for (const e of exports) {
    const body = JSON.parse(e.body.toString("utf8")) as {
      resourceSpans: { resource: { attributes: OtlpAttribute[] }; scopeSpans: { spans: (Omit<ExportedSpan, "attributes" | "resource" | "parentSpanId"> & { parentSpanId?: string; attributes: OtlpAttribute[] })[] }[] }[];
    };
    for (const rs of body.resourceSpans) {
      for (const ss of rs.scopeSpans) {
        for (const s of ss.spans) spans.push({ ...s, parentSpanId: s.parentSpanId ?? "", attributes: flatten(s.attributes), resource: flatten(rs.resource.attributes) });
      }
    }
  }
  return spans;
}

const SPAN_KIND_SERVER = 2;
const SPAN_KIND_CLIENT = 3;
const STATUS_ERROR = 2;

/** A fresh sampled W3C trace context (W3C Trace Context §3.2). */
function traceContext() {
  const traceId = randomBytes(16).toString("hex");
  const parentId = randomBytes(8).toString("hex");
  return { traceId, parentId, traceparent: `00-${traceId}-${parentId}-01`, tracestate: "vendor=opaque" };
}

const bearer = (token: string) => `Bearer ${token}`;

describe("tracing on (OTEL_TRACES_EXPORTER=otlp, http/json)", () => {
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let sut: ServiceUnderTest;
  let base: string;
  let connect: Client<typeof TokenService>;
  let grpc: ReturnType<typeof grpcClient>;
  let admin: string;
  let gateway: string;
  const secrets: string[] = [];

  /** Issues a token that can introspect, remembered as a secret that must never be exported. */
  const issue = async (name: string, scopes: string[] = ["tokens.introspect"]) => {
    const res = await connect.issueToken({ name, subject: `${name}@example.com`, scopes }, { headers: { authorization: bearer(admin) } });
    secrets.push(res.token);
    return res.token;
  };

  /** Exports what has ended and returns the spans of one trace. */
  const traceOf = async (traceId: string) => {
    await sut.service.tracing!.flush();
    return spansOf(receiver.exports).filter((s) => s.traceId === traceId);
  };

  beforeAll(async () => {
    receiver = await startReceiver();
    sut = await startTestService({
      DATA_DIR: "memory://",
      OTEL_TRACES_EXPORTER: "otlp",
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: receiver.url,
      OTEL_SERVICE_NAME: "tokens-under-test",
      OTEL_RESOURCE_ATTRIBUTES: "service.namespace=auth,team=platform%20identity",
      OTEL_EXPORTER_OTLP_HEADERS: "x-collector-key=collector-secret-value",
    });
    admin = sut.bootstrapToken!;
    secrets.push(admin);
    base = `http://127.0.0.1:${sut.service.httpPort}`;
    connect = createClient(TokenService, createConnectTransport({ baseUrl: base, httpVersion: "1.1" }));
    grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    gateway = await issue("gateway");
  });

  afterAll(async () => {
    grpc?.close();
    await sut?.service.stop();
    await receiver?.close();
  });

  it("continues the caller's trace on a gRPC IntrospectToken: server span, cache miss, store query as its child", async () => {
    const user = await issue("grpc-user", ["orders.read"]);
    const t = traceContext();
    const answer = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: user }, { authorization: bearer(gateway), traceparent: t.traceparent, tracestate: t.tracestate });
    expect(answer.active).toBe(true);

    const spans = await traceOf(t.traceId);
    const server = spans.find((s) => s.kind === SPAN_KIND_SERVER);
    expect(server).toMatchObject({
      name: "tokens.v1.TokenService/IntrospectToken",
      parentSpanId: t.parentId,
      attributes: {
        "rpc.system.name": "grpc",
        "rpc.method": "tokens.v1.TokenService/IntrospectToken",
        "rpc.status_code": "OK",
        "tokens.cache.result": "miss",
      },
      resource: { "service.name": "tokens-under-test", "service.namespace": "auth", team: "platform identity", "deployment.environment.name": "development" },
    });
    expect(server!.status.code ?? 0).not.toBe(STATUS_ERROR);
    const queries = spans.filter((s) => s.kind === SPAN_KIND_CLIENT && s.attributes["tokens.store.method"] === "findByDigest");
    expect(queries.length).toBeGreaterThanOrEqual(1);
    expect(queries[0]).toMatchObject({
      name: "SELECT tokens",
      parentSpanId: server!.spanId,
      attributes: { "db.system.name": "postgresql", "db.operation.name": "SELECT", "db.collection.name": "tokens" },
    });
  });

  it("marks a second look-up of the same token a hit, with no store query", async () => {
    const user = await issue("grpc-again", ["orders.read"]);
    await grpc.unary("introspectToken", { token: user }, { authorization: bearer(gateway) });
    const t = traceContext();
    await grpc.unary("introspectToken", { token: user }, { authorization: bearer(gateway), traceparent: t.traceparent });

    const spans = await traceOf(t.traceId);
    expect(spans.find((s) => s.kind === SPAN_KIND_SERVER)?.attributes).toMatchObject({ "tokens.cache.result": "hit", "tokens.caller_cache.result": "hit" });
    expect(spans.filter((s) => s.kind === SPAN_KIND_CLIENT)).toEqual([]);
  });

  it("marks a remembered unknown token negative", async () => {
    const unknown = mintToken("development").token;
    secrets.push(unknown);
    await grpc.unary("introspectToken", { token: unknown }, { authorization: bearer(gateway) });
    const t = traceContext();
    const answer = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: unknown }, { authorization: bearer(gateway), traceparent: t.traceparent });
    expect(answer.active).toBe(false);

    const spans = await traceOf(t.traceId);
    expect(spans.find((s) => s.kind === SPAN_KIND_SERVER)?.attributes["tokens.cache.result"]).toBe("negative");
  });

  it("reports the gRPC code of a refused call, and an unauthenticated caller is not a server error", async () => {
    const t = traceContext();
    await expect(grpc.unary("introspectToken", { token: admin }, { authorization: bearer("cf-not-a-real-token"), traceparent: t.traceparent })).rejects.toMatchObject({ code: 16 });

    const server = (await traceOf(t.traceId)).find((s) => s.kind === SPAN_KIND_SERVER);
    expect(server?.attributes["rpc.status_code"]).toBe("UNAUTHENTICATED");
    expect(server?.status.code ?? 0).not.toBe(STATUS_ERROR);
  });

  it("continues the caller's trace on a Connect call", async () => {
    const user = await issue("connect-user", ["orders.read"]);
    const t = traceContext();
    const answer = await connect.introspectToken({ token: user }, { headers: { authorization: bearer(gateway), traceparent: t.traceparent } });
    expect(answer.active).toBe(true);

    const spans = await traceOf(t.traceId);
    const server = spans.find((s) => s.kind === SPAN_KIND_SERVER);
    expect(server).toMatchObject({
      name: "tokens.v1.TokenService/IntrospectToken",
      parentSpanId: t.parentId,
      attributes: { "rpc.system.name": "connectrpc", "rpc.method": "tokens.v1.TokenService/IntrospectToken", "rpc.status_code": "OK", "tokens.cache.result": "miss" },
    });
    expect(spans.some((s) => s.kind === SPAN_KIND_CLIENT && s.parentSpanId === server!.spanId && s.attributes["tokens.store.method"] === "findByDigest")).toBe(true);
  });

  it("continues the caller's trace on POST /oauth2/introspect", async () => {
    const user = await issue("oauth-user", ["orders.read"]);
    const t = traceContext();
    const res = await fetch(`${base}/oauth2/introspect`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", authorization: bearer(gateway), traceparent: t.traceparent },
      body: new URLSearchParams({ token: user }).toString(),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { active: boolean }).active).toBe(true);

    const spans = await traceOf(t.traceId);
    const server = spans.find((s) => s.kind === SPAN_KIND_SERVER);
    expect(server).toMatchObject({
      name: "POST /oauth2/introspect",
      parentSpanId: t.parentId,
      attributes: { "http.request.method": "POST", "http.route": "/oauth2/introspect", "http.response.status_code": 200, "tokens.cache.result": "miss" },
    });
    expect(spans.some((s) => s.kind === SPAN_KIND_CLIENT && s.parentSpanId === server!.spanId && s.attributes["tokens.store.method"] === "findByDigest")).toBe(true);
  });

  it("continues the caller's trace on forward auth (/auth/… is one route)", async () => {
    const user = await issue("auth-user", ["orders.read"]);
    const t = traceContext();
    const res = await fetch(`${base}/auth/orders/42?secret=in-the-query`, { headers: { authorization: bearer(user), traceparent: t.traceparent } });
    expect(res.status).toBe(200);

    const server = (await traceOf(t.traceId)).find((s) => s.kind === SPAN_KIND_SERVER);
    expect(server).toMatchObject({
      name: "GET /auth",
      parentSpanId: t.parentId,
      attributes: { "http.route": "/auth", "http.response.status_code": 200, "tokens.cache.result": "miss" },
    });
    expect(JSON.stringify(server)).not.toContain("in-the-query");
  });

  it("starts a new trace when the caller sends none (or a malformed one)", async () => {
    const before = spansOf(receiver.exports).length;
    await grpc.unary("introspectToken", { token: gateway }, { authorization: bearer(gateway), traceparent: "00-zzzz-not-valid-01" });
    await sut.service.tracing!.flush();
    const fresh = spansOf(receiver.exports).slice(before).filter((s) => s.kind === SPAN_KIND_SERVER);
    expect(fresh).toHaveLength(1);
    expect(fresh[0]!.parentSpanId).toBe("");
    expect(fresh[0]!.traceId).toMatch(/^[0-9a-f]{32}$/);
  });

  it("leaves health checks untraced on both ports (probes would bury the traffic)", async () => {
    const t = traceContext();
    const health = grpcClient(Health, `127.0.0.1:${sut.service.grpcPort}`);
    try {
      await health.unary("check", { service: "" }, { traceparent: t.traceparent });
    } finally {
      health.close();
    }
    const overConnect = createClient(Health, createConnectTransport({ baseUrl: base, httpVersion: "1.1" }));
    await overConnect.check({ service: "" }, { headers: { traceparent: t.traceparent } });
    expect(await traceOf(t.traceId)).toEqual([]);
  });

  it("exports no token, digest, Authorization value or exporter header anywhere", async () => {
    await sut.service.tracing!.flush();
    expect(receiver.exports.length).toBeGreaterThan(0);
    const everything = receiver.exports.map((e) => e.body.toString("utf8")).join("\n");
    for (const token of secrets) {
      expect(everything).not.toContain(token);
      const digest = createHash("sha256").update(token).digest();
      for (const form of [digest.toString("hex"), digest.toString("base64"), digest.toString("base64url")]) expect(everything).not.toContain(form);
    }
    expect(everything).not.toMatch(/bearer/i);
    expect(everything).not.toContain("collector-secret-value");
    // The exporter header went to the collector only, as configured.
    expect(receiver.exports.every((e) => e.contentType.startsWith("application/json") && e.headers["x-collector-key"] === "collector-secret-value")).toBe(true);
  });
});

describe("tracing on with http/protobuf (the default protocol)", () => {
  it("exports protobuf, and stop() flushes the last spans", async () => {
    const receiver = await startReceiver();
    const sut = await startTestService({ DATA_DIR: "memory://", OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: receiver.url, OTEL_BSP_SCHEDULE_DELAY: "600000" });
    const grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    try {
      const t = traceContext();
      await grpc.unary("introspectToken", { token: sut.bootstrapToken! }, { authorization: bearer(sut.bootstrapToken!), traceparent: t.traceparent });
      expect(receiver.exports).toHaveLength(0); // nothing yet: the export is 10 minutes away
      grpc.close();
      await sut.service.stop();
      expect(receiver.exports.length).toBeGreaterThan(0);
      expect(receiver.exports[0]!.contentType).toBe("application/x-protobuf");
      const body = Buffer.concat(receiver.exports.map((e) => e.body));
      // Trace ids travel as raw bytes in OTLP protobuf.
      expect(body.includes(Buffer.from(t.traceId, "hex"))).toBe(true);
      expect(body.includes(Buffer.from("tokens.v1.TokenService/IntrospectToken"))).toBe(true);
      expect(body.includes(Buffer.from(sut.bootstrapToken!))).toBe(false);
    } finally {
      grpc.close();
      await sut.service.stop();
      await receiver.close();
    }
  });
});

describe("tracing off (the default)", () => {
  it("builds nothing and exports nothing, whatever the caller sends", async () => {
    const receiver = await startReceiver();
    // The endpoint is set, the exporter is not: off.
    const sut = await startTestService({ DATA_DIR: "memory://", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: receiver.url, OTEL_BSP_SCHEDULE_DELAY: "1" });
    const grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    try {
      expect(sut.service.tracing).toBeUndefined();
      expect(sut.service.deps.tracing).toBeUndefined();
      const admin = sut.bootstrapToken!;
      const t = traceContext();
      await grpc.unary("introspectToken", { token: admin }, { authorization: bearer(admin), traceparent: t.traceparent });
      const connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));
      await connect.introspectToken({ token: admin }, { headers: { authorization: bearer(admin), traceparent: t.traceparent } });
      await fetch(`http://127.0.0.1:${sut.service.httpPort}/auth`, { headers: { authorization: bearer(admin), traceparent: t.traceparent } });
      grpc.close();
      await sut.service.stop();
      expect(receiver.exports).toEqual([]);
    } finally {
      grpc.close();
      await sut.service.stop();
      await receiver.close();
    }
  });
});
