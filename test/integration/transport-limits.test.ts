import { randomUUID } from "node:crypto";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ServerReflectionRequestSchema, ServerReflectionResponseSchema } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { TokenService, type ListSecurityEventsResponse } from "../../gen/tokens/v1/token_service_pb.js";
import type { SecurityEventRow } from "../../src/domain/model.js";
import { MAX_PAGE_SIZE } from "../../src/domain/list.js";
import { KyselySecurityEventStore } from "../../src/storage/security-event-store.js";
import { envelope, rawCall } from "../support/raw-h2.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * What a client can hold or make the service send, on both ports: request
 * bodies that never finish, idle and old connections, keepalive pings, and
 * answers larger than any request (a full page of a list).
 */

const METHOD = "/tokens.v1.TokenService/GetJwks";

/** Waits for an event, or fails after `ms` (a bound on a hang, not a timing assertion). */
function eventually<T>(register: (done: (value: T) => void) => void, ms = 15_000, what = "event"): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

/** A Connect unary request over HTTP/1.1 whose body starts but never ends; resolves with the answer. */
function stalledConnectPost(port: number, headers: Record<string, string>): Promise<{ status: number; body: string; socketClosed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: "127.0.0.1",
      port,
      method: "POST",
      path: METHOD,
      headers: { "content-type": "application/json", "connect-protocol-version": "1", "content-length": "1000", ...headers },
    });
    req.on("error", () => {
      /* the server may cut the connection once it has answered */
    });
    req.on("response", (res) => {
      const socketClosed = new Promise<void>((done) => (res.socket.destroyed ? done() : res.socket.once("close", () => done())));
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8"), socketClosed }));
      res.on("error", reject);
    });
    req.write('{"'); // and nothing more
  });
}

describe("transport limits", () => {
  let sut: ServiceUnderTest;
  let admin: string;
  const as = () => ({ authorization: `Bearer ${admin}` });

  beforeAll(async () => {
    sut = await startTestService({
      DATA_DIR: "memory://",
      TOKEN_ENVIRONMENT: "development",
      REQUEST_BODY_TIMEOUT: "1s",
      RPC_MAX_TIMEOUT: "30s",
      CONNECTION_IDLE_TIMEOUT: "500ms",
    });
    admin = sut.bootstrapToken!;
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  describe("a request body that never finishes", () => {
    it("is answered DEADLINE_EXCEEDED on the Connect port within the call's Connect-Timeout-Ms, and the connection is dropped", async () => {
      const answer = await stalledConnectPost(sut.service.httpPort, { "connect-timeout-ms": "300", ...as() });
      expect(JSON.parse(answer.body)).toMatchObject({ code: "deadline_exceeded" });
      await answer.socketClosed;
    });

    it("is answered DEADLINE_EXCEEDED on the Connect port after REQUEST_BODY_TIMEOUT when the call has no deadline", async () => {
      const answer = await stalledConnectPost(sut.service.httpPort, as());
      expect(JSON.parse(answer.body)).toMatchObject({ code: "deadline_exceeded" });
    });

    for (const port of ["grpc", "http"] as const) {
      it(`is answered DEADLINE_EXCEEDED over gRPC on the ${port} port after REQUEST_BODY_TIMEOUT`, async () => {
        const answer = await rawCall(port === "grpc" ? sut.service.grpcPort : sut.service.httpPort, METHOD, {
          headers: { "content-type": "application/grpc", te: "trailers", ...as() },
          body: envelope(0, new Uint8Array(0)).subarray(0, 3), // half a frame header, then silence
          endStream: false,
        });
        expect(answer.grpcStatus, JSON.stringify({ ...answer, body: undefined })).toBe(GrpcStatus.DEADLINE_EXCEEDED);
      });

      it(`is answered DEADLINE_EXCEEDED over gRPC on the ${port} port at the call's grpc-timeout`, async () => {
        const answer = await rawCall(port === "grpc" ? sut.service.grpcPort : sut.service.httpPort, METHOD, {
          headers: { "content-type": "application/grpc", te: "trailers", "grpc-timeout": "200m", ...as() },
          endStream: false,
        });
        expect(answer.grpcStatus, JSON.stringify({ ...answer, body: undefined })).toBe(GrpcStatus.DEADLINE_EXCEEDED);
      });
    }

    it("times each stalled body on the gRPC port from its own start, whatever completes around it", async () => {
      // The gRPC port times bodies in one queue (server/grpc-server.ts): a
      // stalled call at its head must not hold back the deadline of one
      // started later, behind calls that completed meanwhile.
      const port = sut.service.grpcPort;
      const headers = { "content-type": "application/grpc", te: "trailers", ...as() };
      const stalled = () => rawCall(port, METHOD, { headers, body: envelope(0, new Uint8Array(0)).subarray(0, 3), endStream: false });
      const first = stalled();
      const completed = await Promise.all(Array.from({ length: 20 }, () => rawCall(port, METHOD, { headers, body: envelope(0, new Uint8Array(0)) })));
      expect(completed.map((a) => a.grpcStatus)).toEqual(completed.map(() => GrpcStatus.OK));
      await new Promise((r) => setTimeout(r, 400));
      const startedLater = Date.now();
      const second = stalled();
      expect((await first).grpcStatus).toBe(GrpcStatus.DEADLINE_EXCEEDED);
      expect((await second).grpcStatus).toBe(GrpcStatus.DEADLINE_EXCEEDED);
      // Its own full second, not the first call's deadline (a lower bound: never flaky on a slow machine).
      expect(Date.now() - startedLater).toBeGreaterThanOrEqual(900);
    });

    for (const port of ["grpc", "http"] as const) {
      it(`leaves streaming requests (reflection) on the ${port} port open past REQUEST_BODY_TIMEOUT`, async () => {
        const session = http2.connect(`http://127.0.0.1:${port === "grpc" ? sut.service.grpcPort : sut.service.httpPort}`);
        session.on("error", () => {});
        const stream = session.request(
          { ":method": "POST", ":path": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "content-type": "application/grpc", te: "trailers" },
          { endStream: false },
        );
        stream.on("error", () => {});
        const trailers = eventually<http2.IncomingHttpHeaders>((done) => stream.once("trailers", done), 15_000, "trailers");
        // Quiet for longer than REQUEST_BODY_TIMEOUT (1 s), then ask.
        await new Promise((r) => setTimeout(r, 1500));
        const ask = create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } });
        const data = eventually<Buffer>((done) => stream.once("data", done), 15_000, "an answer");
        stream.write(envelope(0, toBinary(ServerReflectionRequestSchema, ask)));
        const answer = fromBinary(ServerReflectionResponseSchema, (await data).subarray(5));
        expect(answer.messageResponse.case).toBe("listServicesResponse");
        stream.end();
        expect((await trailers)["grpc-status"]).toBe("0");
        session.destroy();
      });
    }
  });

  describe("connections", () => {
    it("closes an idle connection to the gRPC port (GOAWAY)", async () => {
      const session = http2.connect(`http://127.0.0.1:${sut.service.grpcPort}`);
      session.on("error", () => {});
      await eventually<void>((done) => session.once("connect", () => done()), 5000, "connect");
      await eventually<void>((done) => session.once("goaway", () => done()), 15_000, "GOAWAY");
      session.destroy();
    });

    it("closes an idle HTTP/2 session on the HTTP port (GOAWAY)", async () => {
      const session = http2.connect(`http://127.0.0.1:${sut.service.httpPort}`);
      session.on("error", () => {});
      await eventually<void>((done) => session.once("goaway", () => done()), 15_000, "GOAWAY");
      session.destroy();
    });

    it("closes an idle HTTP/1.1 keep-alive connection on the HTTP port", async () => {
      const socket = net.connect(sut.service.httpPort, "127.0.0.1");
      socket.on("error", () => {});
      socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
      await eventually<void>((done) => socket.once("data", () => done()), 5000, "response");
      await eventually<void>((done) => socket.once("close", () => done()), 15_000, "close");
    });

    it("drops an HTTP/1.1 connection whose headers never finish (Node's headersTimeout = REQUEST_BODY_TIMEOUT)", async () => {
      const socket = net.connect(sut.service.httpPort, "127.0.0.1");
      socket.on("error", () => {});
      let answer = "";
      socket.on("data", (c: Buffer) => (answer += c.toString("latin1")));
      socket.write("POST /tokens.v1.TokenService/GetJwks HTTP/1.1\r\nHost: x\r\n"); // and no blank line, ever
      await eventually<void>((done) => socket.once("close", () => done()), 15_000, "close");
      expect(answer).toMatch(/^(HTTP\/1\.1 408|$)/);
    });

    it("still answers normal calls on both ports", async () => {
      const grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
      try {
        await expect(grpc.unary("getJwks", {}, as())).resolves.toBeDefined();
      } finally {
        grpc.close();
      }
      const connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));
      await expect(connect.getJwks({}, { headers: as() })).resolves.toBeDefined();
    });
  });
});

describe("connection age and keepalive", () => {
  let sut: ServiceUnderTest;
  let admin: string;
  const as = () => ({ authorization: `Bearer ${admin}` });
  beforeAll(async () => {
    // The idle limit far off, so only age and keepalive act.
    sut = await startTestService({
      DATA_DIR: "memory://",
      TOKEN_ENVIRONMENT: "development",
      GRPC_MAX_CONNECTION_AGE: "2s",
      GRPC_MAX_CONNECTION_AGE_GRACE: "500ms",
      GRPC_KEEPALIVE_TIME: "1s",
      GRPC_KEEPALIVE_TIMEOUT: "1s",
      REQUEST_BODY_TIMEOUT: "500ms",
    });
    admin = sut.bootstrapToken!;
  });
  afterAll(async () => {
    await sut?.service.stop();
  });

  it("sends GOAWAY to a busy gRPC connection once it reaches GRPC_MAX_CONNECTION_AGE", async () => {
    const session = http2.connect(`http://127.0.0.1:${sut.service.grpcPort}`);
    session.on("error", () => {});
    let goaway = false;
    session.once("goaway", () => (goaway = true));
    // Keep it busy (never idle): a call every 100 ms until GOAWAY arrives.
    for (let i = 0; i < 150 && !goaway && !session.closed && !session.destroyed; i++) {
      await rawCall(0, METHOD, { session, headers: { "content-type": "application/grpc", te: "trailers", ...as() }, body: envelope(0, new Uint8Array(0)) }).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(goaway).toBe(true);
    session.destroy();
  });

  it("keeps an idle HTTP/1.1 keep-alive connection past REQUEST_BODY_TIMEOUT (which bounds requests, not the wait between them)", async () => {
    const socket = net.connect(sut.service.httpPort, "127.0.0.1");
    socket.on("error", () => {});
    const get = () => {
      const answer = eventually<string>((done) => socket.once("data", (c: Buffer) => done(c.toString("latin1"))), 5000, "response");
      socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
      return answer;
    };
    expect(await get()).toMatch(/^HTTP\/1\.1 200/);
    await new Promise((r) => setTimeout(r, 2500)); // > REQUEST_BODY_TIMEOUT and Node's 1 s check interval
    expect(socket.destroyed).toBe(false);
    expect(await get()).toMatch(/^HTTP\/1\.1 200/);
    socket.destroy();
  });

  it("pings each gRPC connection, so peers that vanished without closing are found", async () => {
    const session = http2.connect(`http://127.0.0.1:${sut.service.grpcPort}`);
    session.on("error", () => {});
    // Node answers pings itself; the 'ping' event says one arrived.
    await eventually<void>((done) => session.once("ping", () => done()), 15_000, "PING");
    session.destroy();
  });
});

describe("answers larger than any request", () => {
  /** 500 security events, each with a long message: a full page is far above MAX_MESSAGE_BYTES (64 KiB). */
  async function fillSecurityEvents(sut: ServiceUnderTest): Promise<void> {
    const store = new KyselySecurityEventStore(sut.service.database.db);
    const now = new Date();
    const rows: SecurityEventRow[] = [];
    for (let i = 0; i < MAX_PAGE_SIZE; i++) {
      rows.push({
        id: randomUUID(),
        type: "permission_denied",
        severity: "warning",
        message: `caller lacked a scope for a call number ${i}: ${"x".repeat(200)}`,
        serviceEnvironment: "development",
        peer: "127.0.0.1",
        method: "/tokens.v1.TokenService/IssueToken",
        firstSeen: now,
        lastSeen: now,
        count: 1,
      });
    }
    await store.insertMany(rows);
  }

  describe("with the default MAX_RESPONSE_BYTES", () => {
    let sut: ServiceUnderTest;
    let admin: string;
    beforeAll(async () => {
      sut = await startTestService({ DATA_DIR: "memory://", TOKEN_ENVIRONMENT: "development" });
      admin = sut.bootstrapToken!;
      await fillSecurityEvents(sut);
    });
    afterAll(async () => {
      await sut?.service.stop();
    });

    it("serves a full page of 500 security events on the gRPC port, while requests stay limited to MAX_MESSAGE_BYTES", async () => {
      const grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
      try {
        const page = await grpc.unary<ListSecurityEventsResponse>("listSecurityEvents", { pageSize: MAX_PAGE_SIZE }, { authorization: `Bearer ${admin}` });
        expect(page.events.length).toBe(MAX_PAGE_SIZE);
        // The request limit is unchanged: a request above 64 KiB is still refused.
        await expect(grpc.unary("introspectToken", { token: "x".repeat(70_000) }, { authorization: `Bearer ${admin}` })).rejects.toMatchObject({ code: GrpcStatus.RESOURCE_EXHAUSTED });
      } finally {
        grpc.close();
      }
    });

    it("serves a full page of 500 security events on the HTTP port (Connect and gRPC)", async () => {
      const baseUrl = `http://127.0.0.1:${sut.service.httpPort}`;
      for (const transport of [createConnectTransport({ baseUrl, httpVersion: "1.1" }), createGrpcTransport({ baseUrl })]) {
        const client: Client<typeof TokenService> = createClient(TokenService, transport);
        const page = await client.listSecurityEvents({ pageSize: MAX_PAGE_SIZE }, { headers: { authorization: `Bearer ${admin}` } });
        expect(page.events.length).toBe(MAX_PAGE_SIZE);
      }
    });
  });

  describe("with a MAX_RESPONSE_BYTES smaller than the page", () => {
    let sut: ServiceUnderTest;
    let admin: string;
    beforeAll(async () => {
      sut = await startTestService({ DATA_DIR: "memory://", TOKEN_ENVIRONMENT: "development", MAX_RESPONSE_BYTES: "65536" });
      admin = sut.bootstrapToken!;
      await fillSecurityEvents(sut);
    });
    afterAll(async () => {
      await sut?.service.stop();
    });

    it("answers RESOURCE_EXHAUSTED on both ports rather than sending it", async () => {
      const grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
      try {
        await expect(grpc.unary("listSecurityEvents", { pageSize: MAX_PAGE_SIZE }, { authorization: `Bearer ${admin}` })).rejects.toMatchObject({ code: GrpcStatus.RESOURCE_EXHAUSTED });
      } finally {
        grpc.close();
      }
      const connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));
      const error = await connect.listSecurityEvents({ pageSize: MAX_PAGE_SIZE }, { headers: { authorization: `Bearer ${admin}` } }).catch((e: unknown) => e);
      expect(ConnectError.from(error).code).toBe(Code.ResourceExhausted);
    });
  });
});
