import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { gzipSync } from "node:zlib";
import { toBinary, create } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IssueTokenRequestSchema, TokenService, type GetJwksResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { envelope, rawCall, type RawAnswer } from "../support/raw-h2.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * Frames no well-behaved client sends, to both ports, by hand over
 * node:http2: the gRPC port (@grpc/grpc-js) and the HTTP port (connect-node
 * serving gRPC and gRPC-Web). Each must be answered with the status the gRPC
 * specification prescribes, never OK and never by stopping the process; and
 * after each batch a normal call on the same process still works.
 *
 * The codes come from three documents of grpc/grpc:
 * - doc/PROTOCOL-HTTP2.md: "Compressed-Flag → 0 / 1", and "If the
 *   Message-Encoding header is omitted then the Compressed-Flag must be 0";
 *   corrupt framing is a protocol error, which maps to INTERNAL (its
 *   RST_STREAM table: PROTOCOL_ERROR → INTERNAL).
 * - doc/compression.md, test cases 4 and 6: a message compressed in a way the
 *   server does not support fails with UNIMPLEMENTED; a Compressed-Flag set
 *   without a grpc-encoding other than identity fails with INTERNAL.
 * - doc/statuscodes.md: could not decompress with a supported algorithm →
 *   INTERNAL; request cardinality violation (a unary method given zero or
 *   two messages) → UNIMPLEMENTED; a message larger than the configured
 *   limit → RESOURCE_EXHAUSTED.
 * One deliberate departure: statuscodes.md has libraries answer a request
 * proto that does not parse with INTERNAL, but here that is the caller's
 * fault and both ports answer INVALID_ARGUMENT (see `DECODE_FAILED` in
 * src/server/grpc-adapter.ts); INVALID_ARGUMENT is a code libraries never
 * generate, so a client can tell the service refused the bytes.
 */

const METHOD = "/tokens.v1.TokenService/GetJwks";
/** A valid, empty GetJwksRequest. */
const EMPTY = new Uint8Array(0);
/** Field 1, length-delimited, declaring 16 bytes but carrying 1: no protobuf message parses from it. */
const GARBAGE_PROTO = Uint8Array.from([0x0a, 0x10, 0x41]);
/** "hello": not gzip. */
const HELLO = Buffer.from("hello");

/** The frame from issue 8 that stopped the process under @grpc/grpc-js 1.14.3. */
const CRASH_FRAME = Uint8Array.from([1, 0, 0, 0, 5, 104, 101, 108, 108, 111]);

interface Case {
  readonly name: string;
  readonly headers?: Record<string, string>;
  readonly body: Uint8Array;
  readonly code: GrpcStatus;
}

/** The corpus, each with the code the documents above prescribe. */
const CORPUS: readonly Case[] = [
  { name: "compressed flag without grpc-encoding", body: envelope(1, HELLO), code: GrpcStatus.INTERNAL },
  { name: "compressed flag with grpc-encoding identity", headers: { "grpc-encoding": "identity" }, body: envelope(1, HELLO), code: GrpcStatus.INTERNAL },
  { name: "an encoding the server does not know", headers: { "grpc-encoding": "x-unknown" }, body: envelope(1, HELLO), code: GrpcStatus.UNIMPLEMENTED },
  { name: "gzip declared, body not gzip", headers: { "grpc-encoding": "gzip" }, body: CRASH_FRAME, code: GrpcStatus.INTERNAL },
  { name: "gzip declared, a gzip stream cut short", headers: { "grpc-encoding": "gzip" }, body: envelope(1, gzipSync(Buffer.alloc(64)).subarray(0, 12)), code: GrpcStatus.INTERNAL },
  { name: "flag byte 2", body: envelope(2, EMPTY), code: GrpcStatus.INTERNAL },
  { name: "flag byte 255", body: envelope(255, HELLO), code: GrpcStatus.INTERNAL },
  { name: "a second message after the first in a unary call", body: Buffer.concat([envelope(0, EMPTY), envelope(0, EMPTY)]), code: GrpcStatus.UNIMPLEMENTED },
  { name: "stray bytes after the message in a unary call", body: Buffer.concat([envelope(0, EMPTY), Buffer.from([0, 0])]), code: GrpcStatus.INTERNAL },
  { name: "a truncated frame (declared length larger than the body)", body: envelope(0, HELLO, 100), code: GrpcStatus.INTERNAL },
  { name: "a truncated frame header", body: Uint8Array.from([0, 0, 0]), code: GrpcStatus.INTERNAL },
  { name: "an empty body (no message at all)", body: EMPTY, code: GrpcStatus.UNIMPLEMENTED },
  { name: "garbage protobuf", body: envelope(0, GARBAGE_PROTO), code: GrpcStatus.INVALID_ARGUMENT },
  { name: "a huge declared length", body: envelope(0, HELLO, 0xffff_fff0), code: GrpcStatus.RESOURCE_EXHAUSTED },
];

const PROTOCOLS = [
  { protocol: "gRPC", contentType: "application/grpc", extra: { te: "trailers" } },
  { protocol: "gRPC-Web", contentType: "application/grpc-web+proto", extra: {} },
] as const;

describe("malformed gRPC frames", () => {
  let sut: ServiceUnderTest;
  let admin: string;
  let grpc: ReturnType<typeof grpcClient>;
  let connect: Client<typeof TokenService>;
  const as = () => ({ authorization: `Bearer ${admin}` });

  beforeAll(async () => {
    sut = await startTestService({ DATA_DIR: "memory://", TOKEN_ENVIRONMENT: "development" });
    admin = sut.bootstrapToken!;
    grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "2" }));
  });

  afterAll(async () => {
    grpc?.close();
    await sut?.service.stop();
  });

  /** Both ports still answer a well-formed, authenticated call. */
  async function normalCallsSucceed(): Promise<void> {
    const overGrpc = await grpc.unary<GetJwksResponse>("getJwks", {}, as());
    expect(overGrpc.keys.length).toBeGreaterThan(0);
    const overConnect = await connect.getJwks({}, { headers: as() });
    expect(overConnect.keys.length).toBeGreaterThan(0);
  }

  it("survives the 10-byte frame of issue 8 (compressed flag, grpc-encoding gzip, body not gzip) on the gRPC port", async () => {
    const answer = await rawCall(sut.service.grpcPort, METHOD, {
      headers: { "content-type": "application/grpc", te: "trailers", "grpc-encoding": "gzip" },
      body: CRASH_FRAME,
    });
    expect(answer.grpcStatus).toBe(GrpcStatus.INTERNAL);
    await normalCallsSucceed();
  });

  const ports = ["grpc", "http"] as const;
  for (const port of ports) {
    for (const { protocol, contentType, extra } of PROTOCOLS) {
      // grpc-js speaks only gRPC; gRPC-Web is served on the HTTP port.
      if (port === "grpc" && protocol !== "gRPC") continue;
      describe(`${protocol} on the ${port === "grpc" ? "gRPC (grpc-js)" : "HTTP (connect-node)"} port`, () => {
        for (const c of CORPUS) {
          it(`answers ${GrpcStatus[c.code]} to ${c.name}`, async () => {
            const answer: RawAnswer = await rawCall(port === "grpc" ? sut.service.grpcPort : sut.service.httpPort, METHOD, {
              headers: { "content-type": contentType, ...extra, ...as(), ...c.headers },
              body: c.body,
            });
            expect({ status: answer.grpcStatus, ended: answer.ended }, answer.grpcMessage).toEqual({ status: c.code, ended: "end" });
            // Nothing of what was sent comes back in the message.
            expect(answer.grpcMessage).not.toContain("hello");
            expect(answer.grpcMessage).not.toContain(admin);
          });
        }
        it("still answers a normal call after the corpus", normalCallsSucceed);
      });
    }
  }

  describe("requests that do not decode, on the HTTP port", () => {
    /** Looks like a production token: it must never come back in an answer. */
    const SECRET = "cfprd-Q7vXk2LmN9pRt4WyZ1aBcD";
    /** No run of 8 characters of the secret may appear (a display hint is 4). */
    const expectNoEcho = (text: string) => {
      for (let i = 0; i + 8 <= SECRET.length; i++) expect(text).not.toContain(SECRET.slice(i, i + 8));
    };
    const post = async (method: string, body: Uint8Array | string, headers: Record<string, string>) => {
      const res = await fetch(`http://127.0.0.1:${sut.service.httpPort}/tokens.v1.TokenService/${method}`, {
        method: "POST",
        headers: { "connect-protocol-version": "1", ...as(), ...headers },
        body,
      });
      return { status: res.status, text: await res.text() };
    };
    const json = { "content-type": "application/json" };

    const wrongTypes: [string, string, string, string][] = [
      ["a token-like string in a list field", "IssueToken", JSON.stringify({ name: "ci", teams: SECRET }), "tokens.v1.IssueTokenRequest.teams: expected Array"],
      ["a token-like string in a map field", "IssueToken", JSON.stringify({ name: "ci", metadata: SECRET }), "tokens.v1.IssueTokenRequest.metadata: expected object"],
      ["a token-like string in an integer field", "ListTokens", JSON.stringify({ pageSize: SECRET }), "tokens.v1.ListTokensRequest.page_size"],
      ["a token-like string in a list item", "IssueToken", JSON.stringify({ name: "ci", scopes: [{ [SECRET]: 1 }] }), "tokens.v1.IssueTokenRequest.scopes"],
      ["a token-like string as a Duration", "IssueToken", JSON.stringify({ name: "ci", ttl: SECRET }), "request could not be decoded"],
      ["a body that is not JSON", "IssueToken", SECRET, "not valid JSON"],
    ];
    for (const [name, method, body, says] of wrongTypes) {
      it(`answers INVALID_ARGUMENT naming the problem, never the value, to Connect JSON with ${name}`, async () => {
        const answer = await post(method, body, json);
        expect(answer.status).toBe(400);
        const error = JSON.parse(answer.text) as { code: string; message: string };
        expect(error.code).toBe("invalid_argument");
        expect(error.message).toContain(says);
        expectNoEcho(answer.text);
      });
    }

    it("does the same for a Connect GET request (JSON in the query)", async () => {
      const message = encodeURIComponent(JSON.stringify({ pageSize: SECRET }));
      const res = await fetch(`http://127.0.0.1:${sut.service.httpPort}/tokens.v1.TokenService/ListTokens?connect=v1&encoding=json&message=${message}`, { headers: as() });
      const text = await res.text();
      expect(res.status).toBe(400);
      expect(JSON.parse(text)).toMatchObject({ code: "invalid_argument", message: expect.stringContaining("page_size") as unknown });
      expectNoEcho(text);
    });

    it("does the same for gzip-compressed Connect JSON", async () => {
      const answer = await post("IssueToken", gzipSync(JSON.stringify({ name: "ci", teams: SECRET })), { ...json, "content-encoding": "gzip" });
      expect(JSON.parse(answer.text)).toMatchObject({ code: "invalid_argument", message: expect.stringContaining("teams") as unknown });
      expectNoEcho(answer.text);
    });

    it("answers INVALID_ARGUMENT to Connect binary that is not protobuf", async () => {
      const answer = await post("IssueToken", GARBAGE_PROTO, { "content-type": "application/proto" });
      expect(JSON.parse(answer.text)).toMatchObject({ code: "invalid_argument" });
    });

    it("answers INVALID_ARGUMENT, without the value, to gRPC-Web JSON with a wrong type", async () => {
      const answer = await rawCall(sut.service.httpPort, "/tokens.v1.TokenService/IssueToken", {
        headers: { "content-type": "application/grpc-web+json", ...as() },
        body: envelope(0, Buffer.from(JSON.stringify({ name: "ci", teams: SECRET }))),
      });
      expect(answer.grpcStatus).toBe(GrpcStatus.INVALID_ARGUMENT);
      expect(answer.grpcMessage).toContain("teams");
      expectNoEcho(answer.grpcMessage);
    });

    for (const port of ["grpc", "http"] as const) {
      it(`answers INVALID_ARGUMENT to gzip-compressed garbage protobuf over gRPC on the ${port} port, and OK to a good compressed request`, async () => {
        const call = (message: Uint8Array) =>
          rawCall(port === "grpc" ? sut.service.grpcPort : sut.service.httpPort, "/tokens.v1.TokenService/IssueToken", {
            headers: { "content-type": "application/grpc", te: "trailers", "grpc-encoding": "gzip", ...as() },
            body: envelope(1, gzipSync(message)),
          });
        expect((await call(GARBAGE_PROTO)).grpcStatus).toBe(GrpcStatus.INVALID_ARGUMENT);
        const good = await call(toBinary(IssueTokenRequestSchema, create(IssueTokenRequestSchema, { name: "compressed", scopes: ["orders.read"] })));
        expect(good.grpcStatus, good.grpcMessage).toBe(GrpcStatus.OK);
      });
    }
  });
});
