import * as http2 from "node:http2";
import { create, toBinary, toJson, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IssueTokenRequestSchema, TokenService } from "../../gen/tokens/v1/token_service_pb.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";
import { jwtish } from "./jwt-arbitraries.js";
import { anyIssue, pageToken } from "./requests.js";
import { INT64_EDGES, VOCABULARY, counted, echoIn, int32, nastyString, params, preview, reportCases, secondsAndNanos, stringsIn, timeout } from "./support.js";

/**
 * The same properties through the real servers on PostgreSQL: the gRPC port
 * (a grpc-js client, and raw HTTP/2 for bytes no client would send) and the
 * Connect port (Connect JSON and binary over HTTP/1.1, gRPC over h2c). Fewer
 * cases than the in-memory tier: these cover what only the transports do
 * (decoding, framing, JSON), and the process must answer a normal call after
 * each property.
 */
reportCases("transports.test.ts");

/** Connect's error codes by their JSON names (connect protocol, "Error Codes"). */
const CONNECT_CODES: Record<string, Code> = Object.fromEntries(
  Object.entries(Code)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => [k.replace(/[A-Z]/g, (c, i: number) => (i === 0 ? c.toLowerCase() : `_${c.toLowerCase()}`)), v as Code]),
);

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Codes that are never the answer to a caller's bad bytes. */
const FAULTS = [Code.Internal, Code.Unknown, Code.Unavailable, Code.DataLoss];

function expectNoFaultNoEcho(got: { code: Code | "ok"; message: string }, presented: readonly string[], context: unknown): void {
  if (got.code !== "ok") expect(FAULTS, `server fault ${Code[got.code]} "${got.message}" for ${preview(context)}`).not.toContain(got.code);
  expect(echoIn(got.message, presented, VOCABULARY), `message "${got.message}" repeats presented text`).toBeUndefined();
}

const UNARY = ["IssueToken", "IntrospectToken", "RevokeToken", "ListTokens", "ListSecurityEvents", "ListLegacyJwtUsage", "GetJwks", "RotateToken", "RevokeTokens"] as const;
const methodOf = (name: string) => TokenService.methods.find((m) => m.name === name)!;

/** A random request for one of the unary methods, as an init shape. */
const anyRequest = fc.oneof(
  anyIssue.map((init) => ({ method: "IssueToken", init: init as object })),
  fc.record({ token: fc.oneof(nastyString, jwtish), tokenTypeHint: nastyString, includeBackendJwt: fc.boolean() }).map((init) => ({ method: "IntrospectToken", init })),
  fc.oneof(nastyString.map((value) => ({ case: "token", value })), fc.oneof(nastyString, fc.uuid()).map((value) => ({ case: "tokenId", value })), nastyString.map((value) => ({ case: "legacyJti", value })))
    .chain((target) => nastyString.map((reason) => ({ method: "RevokeToken", init: { target, reason } as object }))),
  fc.record({ subject: nastyString, team: nastyString, includeRevoked: fc.boolean(), pageSize: int32, pageToken }).map((init) => ({ method: "ListTokens", init })),
  fc.record({ type: nastyString, minSeverity: int32, since: secondsAndNanos, pageSize: int32, pageToken }).map((init) => ({ method: "ListSecurityEvents", init })),
  fc.record({ pageSize: int32, pageToken }).map((init) => ({ method: "ListLegacyJwtUsage", init })),
  fc.oneof(nastyString.map((value) => ({ case: "token", value })), fc.oneof(nastyString, fc.uuid()).map((value) => ({ case: "tokenId", value })))
    .chain((target) => fc.record({ gracePeriod: secondsAndNanos, ttl: secondsAndNanos, revokeOnSuccessorUse: fc.boolean(), reason: nastyString }).map((rest) => ({ method: "RotateToken", init: { target, ...rest } as object }))),
  // Always a dry run: a random selector must not revoke the test's own callers.
  fc.record({ subject: nastyString, team: nastyString, issuedByTokenId: fc.oneof(nastyString, fc.uuid()), name: nastyString, createdBefore: secondsAndNanos, expireBefore: secondsAndNanos })
    .chain((selector) => fc.record({ reason: nastyString, pageSize: int32 }).map((rest) => ({ method: "RevokeTokens", init: { selector, dryRun: true, ...rest } as object }))),
);

/** Any JSON for a request body: wrong types in every field, unknown fields, and values past int64. */
const wrongJson = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.dictionary(
    fc.constantFrom("name", "scopes", "teams", "metadata", "ttl", "expireTime", "token", "tokenId", "pageSize", "pageToken", "since", "minSeverity", "subject", "includeRevoked", "heartbeatInterval", "unknownField"),
    fc.oneof(
      fc.jsonValue({ maxDepth: 2 }),
      nastyString,
      fc.constantFrom(...INT64_EDGES.map(String), "1e300", "-1e300", "9999-12-31T23:59:60Z", "0000-01-01T00:00:00Z", "1e9s", "-315576000001s", "NaN", "Infinity", "SEVERITY_CRITICAL", "SEVERITY_BOGUS", 1e300, -1, 2 ** 31, 2 ** 53 + 2),
      fc.array(nastyString, { maxLength: 3 }),
      fc.dictionary(nastyString, fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 }),
    ),
    { maxKeys: 4 },
  ),
);

describe("the real servers, both ports", () => {
  let db: TestDatabase;
  let sut: ServiceUnderTest;
  let admin: string;
  let grpc: ReturnType<typeof grpcClient>;
  let h2: { grpcPort: http2.ClientHttp2Session; connectPort: http2.ClientHttp2Session };

  beforeAll(async () => {
    db = await createTestDatabase();
    // These properties are about validation, not rate limits: one admin sends thousands of calls.
    sut = await startTestService({ DATABASE_URL: db.url, RATE_LIMIT_ISSUE: "off", RATE_LIMIT_REVOKE: "off", RATE_LIMIT_LIST: "off" });
    admin = sut.bootstrapToken!;
    grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    h2 = { grpcPort: http2.connect(`http://127.0.0.1:${sut.service.grpcPort}`), connectPort: http2.connect(`http://127.0.0.1:${sut.service.httpPort}`) };
    for (const session of Object.values(h2)) session.on("error", () => undefined);
  });

  afterAll(async () => {
    grpc?.close();
    for (const session of Object.values(h2 ?? {})) session.destroy();
    await sut?.service.stop();
    await db?.drop();
  });

  const rows = () => sut.service.deps.store.count();

  /** A normal call on both ports still works: nothing a case sent hurt the process. */
  async function stillServing(): Promise<void> {
    await expect(grpc.unary("getJwks", {}, { authorization: `Bearer ${admin}` })).resolves.toBeDefined();
    const res = await fetch(`http://127.0.0.1:${sut.service.httpPort}/tokens.v1.TokenService/GetJwks`, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${admin}` }, body: "{}" });
    expect(res.status).toBe(200);
  }

  /** A Connect unary call over HTTP/1.1 with any body; the status code and message it got. */
  async function connectCall(method: string, contentType: string, body: Uint8Array | string): Promise<{ code: Code | "ok"; message: string }> {
    const res = await fetch(`http://127.0.0.1:${sut.service.httpPort}/tokens.v1.TokenService/${method}`, { method: "POST", headers: { "content-type": contentType, authorization: `Bearer ${admin}` }, body });
    const text = await res.text();
    if (res.status === 200) return { code: "ok", message: "" };
    let parsed: { code?: string; message?: string } = {};
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      // Not a Connect error body: judged by the HTTP status below.
    }
    const code = parsed.code !== undefined ? CONNECT_CODES[parsed.code] : undefined;
    expect(code, `HTTP ${res.status} with body ${preview(text)}`).toBeDefined();
    return { code: code!, message: parsed.message ?? "" };
  }

  /** One gRPC call over raw HTTP/2 with the exact bytes given; the grpc-status and grpc-message it ended with. */
  function rawGrpc(session: http2.ClientHttp2Session, method: string, body: Uint8Array): Promise<{ code: Code | "ok"; message: string }> {
    return new Promise((resolve, reject) => {
      const stream = session.request({ ":method": "POST", ":path": `/tokens.v1.TokenService/${method}`, "content-type": "application/grpc", te: "trailers", authorization: `Bearer ${admin}` });
      let headers: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      stream.on("response", (h: http2.IncomingHttpHeaders) => (headers = h));
      stream.on("trailers", (t: http2.IncomingHttpHeaders) => (trailers = t));
      stream.on("data", () => undefined);
      stream.on("error", reject);
      stream.setTimeout(10_000, () => reject(new Error("no answer within 10s")));
      stream.on("close", () => {
        const status = trailers["grpc-status"] ?? headers["grpc-status"];
        if (status === undefined) return reject(new Error(`no grpc-status (HTTP ${String(headers[":status"])}, rst ${stream.rstCode})`));
        const message = decodeURIComponent(String(trailers["grpc-message"] ?? headers["grpc-message"] ?? ""));
        resolve({ code: Number(status) === 0 ? "ok" : (Number(status) as Code), message });
      });
      stream.end(body);
    });
  }

  const frame = (message: Uint8Array, declared = message.length, flag = 0) => {
    const out = new Uint8Array(5 + message.length);
    out[0] = flag;
    new DataView(out.buffer).setUint32(1, declared);
    out.set(message, 5);
    return out;
  };

  it("gRPC port, grpc-js client: any request to any method is answered without a fault or an echo, and a refused IssueToken writes nothing", async () => {
    await fc.assert(
      fc.asyncProperty(anyRequest, async ({ method, init }) => {
        counted();
        const before = method === "IssueToken" ? await rows() : 0;
        const local = methodOf(method).localName;
        const got = await grpc.unary(local, init, { authorization: `Bearer ${admin}` }).then(
          () => ({ code: "ok" as const, message: "" }),
          (e: { code: number; details: string }) => ({ code: e.code as Code, message: e.details }),
        );
        expectNoFaultNoEcho(got, stringsIn(init), { method, init });
        if (method === "IssueToken" && got.code !== "ok") expect(await rows()).toBe(before);
      }),
      params(300),
    );
    await stillServing();
  }, timeout(120_000));

  it("Connect port, JSON: any JSON body, of any shape and types, is answered without a fault, and a refused IssueToken writes nothing", async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...UNARY), wrongJson, async (method, json) => {
        counted();
        const before = method === "IssueToken" ? await rows() : 0;
        const got = await connectCall(method, "application/json", JSON.stringify(json));
        expectNoFaultNoEcho({ code: got.code, message: "" }, [], { method, json });
        if (method === "IssueToken" && got.code !== "ok") expect(await rows()).toBe(before);
      }),
      params(300),
    );
    await stillServing();
  }, timeout(120_000));

  it("Connect port, JSON: no refusal repeats what the body held", async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...UNARY), wrongJson, async (method, json) => {
        counted();
        const body = JSON.stringify(json);
        const got = await connectCall(method, "application/json", body);
        expectNoFaultNoEcho({ code: "ok", message: got.message }, [...stringsIn(json), body], { method, json });
      }),
      params(200),
    );
  }, timeout(120_000));

  it("Connect port, binary: garbage and truncated protobuf is refused as INVALID_ARGUMENT or answered, never a fault", async () => {
    const body = fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      anyIssue.chain((init) => {
        const bytes = toBinary(IssueTokenRequestSchema, create(IssueTokenRequestSchema, init as MessageInitShape<typeof IssueTokenRequestSchema>));
        return fc.nat(Math.max(0, bytes.length - 1)).map((cut) => bytes.slice(0, cut));
      }),
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...UNARY), body, async (method, bytes) => {
        counted();
        const got = await connectCall(method, "application/proto", bytes);
        expectNoFaultNoEcho(got, [Buffer.from(bytes).toString("latin1")], { method, bytes });
      }),
      params(300),
    );
    await stillServing();
  }, timeout(120_000));

  const validMessage = (method: string) => toBinary(methodOf(method).input as DescMessage, create(methodOf(method).input as DescMessage, method === "IssueToken" ? { name: "fuzz" } : method === "IntrospectToken" ? { token: "cf-0000000000000000000000" } : {}));
  const garbageFrame = fc.uint8Array({ maxLength: 64 }).map((m) => () => frame(m));
  const truncatedFrame = fc.oneof(
    fc.tuple(fc.nat(40), fc.integer({ min: 1, max: 1000 })).map(([cut, missing]) => (method: string) => {
      const kept = validMessage(method).slice(0, cut);
      return frame(kept, kept.length + missing);
    }),
    fc.nat(4).map((n) => (method: string) => frame(validMessage(method)).slice(0, n)),
  );

  it.each(["grpcPort", "connectPort"] as const)("raw gRPC on the %s: garbage message bytes are INVALID_ARGUMENT or answered, never a fault or an echo", async (port) => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...UNARY), garbageFrame, async (method, bytes) => {
        counted();
        const before = method === "IssueToken" ? await rows() : 0;
        const got = await rawGrpc(h2[port], method, bytes());
        expectNoFaultNoEcho(got, [], { method, port });
        if (method === "IssueToken" && got.code !== "ok") expect(await rows()).toBe(before);
      }),
      params(150),
    );
    await stillServing();
  }, timeout(120_000));

  it.each(["grpcPort", "connectPort"] as const)("raw gRPC on the %s: a truncated frame never runs the method", async (port) => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...UNARY), truncatedFrame, async (method, bytes) => {
        counted();
        const before = method === "IssueToken" ? await rows() : 0;
        const got = await rawGrpc(h2[port], method, bytes(method));
        // A message cut short is not a request. Which status the gRPC HTTP/2
        // protocol prescribes for a short frame is the framing's business
        // (gRPC's own servers answer INTERNAL); it must not be OK or UNKNOWN,
        // and nothing may be written.
        expect(got.code, `truncated frame to ${method} on ${port} answered OK`).not.toBe("ok");
        expect(got.code).not.toBe(Code.Unknown);
        expect(echoIn(got.message, [], VOCABULARY)).toBeUndefined();
        if (method === "IssueToken") expect(await rows()).toBe(before);
      }),
      params(100),
    );
    await stillServing();
  }, timeout(120_000));

  it("both ports agree: a JSON request that decodes is answered with the same code on Connect JSON as on gRPC", async () => {
    await fc.assert(
      fc.asyncProperty(anyRequest.filter((r) => r.method !== "IssueToken"), async ({ method, init }) => {
        // Strings protobuf binary cannot carry as they are have no JSON twin: a
        // lone surrogate is sent as U+FFFD, and protobuf-es's decoder (a
        // TextDecoder) drops a leading U+FEFF, which JSON keeps.
        fc.pre(stringsIn(init).every((v) => !LONE_SURROGATE.test(v) && !v.startsWith("\uFEFF")));
        const desc = methodOf(method).input as DescMessage;
        const message = create(desc, init as MessageInitShape<DescMessage>);
        let json: unknown;
        try {
          json = toJson(desc, message);
        } catch {
          // Not expressible in JSON (a Timestamp outside its range): no JSON twin to compare.
          fc.pre(false);
        }
        counted();
        const viaGrpc = await grpc.unary(methodOf(method).localName, init, { authorization: `Bearer ${admin}` }).then(
          () => "ok" as const,
          (e: { code: number }) => e.code as Code,
        );
        const viaJson = await connectCall(method, "application/json", JSON.stringify(json));
        expect(viaJson.code, `${method} ${preview(init)}`).toBe(viaGrpc);
      }),
      params(150),
    );
  }, timeout(120_000));
});
