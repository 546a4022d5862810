import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, decodeBinaryHeader, encodeBinaryHeader } from "@connectrpc/connect";
import type { Client, Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import * as reflectionV1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as reflectionV1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Health, HealthCheckResponse_ServingStatus as Serving, file_health_v1_health } from "../../gen/health/v1/health_pb.js";
import { TokenService, file_tokens_v1_token_service } from "../../gen/tokens/v1/token_service_pb.js";
import type { IntrospectTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { peerKey } from "../../src/server/context.js";
import type { ServiceRegistration } from "../../src/server/context.js";
import { methodDefinition } from "../../src/server/grpc-adapter.js";
import { startGrpcServer } from "../../src/server/grpc-server.js";
import type { RunningServer } from "../../src/server/grpc-server.js";
import { createHealthService } from "../../src/server/health.js";
import { routeServices, startHttpServer } from "../../src/server/http-server.js";
import { createReflectionServices } from "../../src/server/reflection.js";

/**
 * Both servers on 127.0.0.1 with a small fake TokenService, reflection and
 * health, exercised through real clients: @grpc/grpc-js against the gRPC
 * port; Connect (HTTP/1.1 and h2c), gRPC (h2c) and gRPC-Web against the HTTP
 * port; and `buf curl` when it is installed.
 */

const MAX_MESSAGE_BYTES = 64 * 1024;
const SECRET = "password=hunter2";

/** What the fake service saw, for assertions on the server side. */
const seen = {
  introspections: 0,
  aborts: [] as { protocol: string; code: Code }[],
  internalErrors: [] as { err: unknown; procedure: string }[],
};
let storeUp = true;

/**
 * IntrospectToken echoes what the transport gave the handler (peer, protocol,
 * a request header, whether a deadline arrived) and sets a response header
 * and trailer; RevokeToken is refused; ListTokens fails unexpectedly;
 * IssueToken waits for its signal (deadline tests).
 */
const fakeTokenService: ServiceRegistration<typeof TokenService> = {
  service: TokenService,
  impl: {
    introspectToken(req, ctx) {
      seen.introspections++;
      ctx.responseHeader.set("x-served-by", "fake");
      ctx.responseTrailer.set("x-checked", "yes");
      const blob = ctx.requestHeader.get("x-blob-bin");
      if (blob !== null) ctx.responseHeader.set("x-blob-bin", blob);
      return {
        active: req.token === "good",
        username: ctx.values.get(peerKey) ?? "",
        tokenType: ctx.protocolName,
        clientId: ctx.requestHeader.get("x-client") ?? "",
        message: ctx.timeoutMs() === undefined ? "no deadline" : "deadline",
      };
    },
    revokeToken() {
      throw new ConnectError("you may not revoke this token", Code.PermissionDenied);
    },
    listTokens() {
      throw new Error(`database said no: ${SECRET}`);
    },
    async issueToken(_req, ctx) {
      await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
      seen.aborts.push({ protocol: ctx.protocolName, code: ConnectError.from(ctx.signal.reason).code });
      return {};
    },
  },
};

function startServers(services: readonly ServiceRegistration[]) {
  const onInternalError = (err: unknown, procedure: string) => seen.internalErrors.push({ err, procedure });
  return Promise.all([
    startGrpcServer({ host: "127.0.0.1", port: 0, services, maxMessageBytes: MAX_MESSAGE_BYTES, onInternalError }),
    startHttpServer({
      host: "127.0.0.1",
      port: 0,
      routes: routeServices(services),
      maxMessageBytes: MAX_MESSAGE_BYTES,
      maxTimeoutMs: 60_000,
      onInternalError,
      extraHandler: (req, res) => {
        if (req.url !== "/healthz") return false;
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("ok");
        return true;
      },
    }),
  ]);
}

// ---------------------------------------------------------------------------
// A uniform unary caller over every client stack.

interface UnaryResult<T> {
  message: T;
  header: Headers;
  trailer: Headers;
}
type UnaryCaller = <T>(method: DescMethod, request: object, options?: { header?: Record<string, string>; timeoutMs?: number }) => Promise<UnaryResult<T>>;

/** A grpc-js client for any service, built from the same definitions the server uses. */
function grpcJsClient(service: DescService, port: number): grpc.Client {
  const definition: grpc.ServiceDefinition = Object.fromEntries(service.methods.map((m) => [m.localName, methodDefinition(m)]));
  const Ctor = grpc.makeGenericClientConstructor(definition, service.typeName);
  return new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}

type GrpcUnaryFn = (
  request: object,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, value?: unknown) => void,
) => grpc.ClientUnaryCall;

/** A unary caller over grpc-js clients, one per service (or the one given). */
function grpcJsCaller(target: number | grpc.Client): UnaryCaller {
  const clients = new Map<DescService, grpc.Client>();
  const clientFor = (service: DescService): grpc.Client => {
    if (typeof target !== "number") return target;
    let client = clients.get(service);
    if (client === undefined) {
      client = grpcJsClient(service, target);
      grpcClients.push(client);
      clients.set(service, client);
    }
    return client;
  };
  return <T,>(method: DescMethod, request: object, options: { header?: Record<string, string>; timeoutMs?: number } = {}) =>
    new Promise<UnaryResult<T>>((resolve, reject) => {
      const client = clientFor(method.parent);
      const metadata = new grpc.Metadata();
      for (const [k, v] of Object.entries(options.header ?? {})) metadata.set(k, k.endsWith("-bin") ? Buffer.from(decodeBinaryHeader(v)) : v);
      const header = new Headers();
      const trailer = new Headers();
      const callOptions: grpc.CallOptions = options.timeoutMs === undefined ? {} : { deadline: Date.now() + options.timeoutMs };
      const fn = (client as unknown as Record<string, GrpcUnaryFn>)[method.localName]!;
      const call = fn.call(client, request, metadata, callOptions, (err, value) => {
        if (err) {
          reject(new ConnectError(err.details, err.code as number as Code));
        } else {
          resolve({ message: value as T, header, trailer });
        }
      });
      call.on("metadata", (md: grpc.Metadata) => copyMetadata(md, header));
      call.on("status", (status: grpc.StatusObject) => copyMetadata(status.metadata, trailer));
    });
}

function copyMetadata(md: grpc.Metadata, into: Headers): void {
  for (const [k, v] of Object.entries(md.getMap())) into.set(k, typeof v === "string" ? v : encodeBinaryHeader(v));
}

function connectCaller(transport: Transport): UnaryCaller {
  return async <T,>(method: DescMethod, request: object, options: { header?: Record<string, string>; timeoutMs?: number } = {}) => {
    const header = new Headers();
    const trailer = new Headers();
    const client = createClient(method.parent, transport) as unknown as Record<string, (req: object, opts: object) => Promise<unknown>>;
    const message = (await client[method.localName]!(request, {
      headers: options.header,
      timeoutMs: options.timeoutMs,
      onHeader: (h: Headers) => h.forEach((v, k) => header.set(k, v)),
      onTrailer: (t: Headers) => t.forEach((v, k) => trailer.set(k, v)),
    })) as T;
    return { message, header, trailer };
  };
}

async function failure(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("expected the call to fail");
}

// ---------------------------------------------------------------------------

let grpcServer: RunningServer;
let httpServer: RunningServer;
let grpcClients: grpc.Client[] = [];
const health = createHealthService({
  check: () => Promise.resolve(storeUp),
  services: [TokenService.typeName],
  cacheMs: 0,
  watchIntervalMs: 50,
});
const services: ServiceRegistration[] = [
  fakeTokenService,
  health,
  ...createReflectionServices([file_tokens_v1_token_service, file_health_v1_health]),
];

beforeAll(async () => {
  [grpcServer, httpServer] = await startServers(services);
});

afterAll(async () => {
  for (const c of grpcClients) c.close();
  await Promise.all([grpcServer?.close(0), httpServer?.close(0)]);
});

const httpUrl = () => `http://127.0.0.1:${httpServer.port}`;

/**
 * Every client stack, with the protocol name the handler should see, and
 * whether the server side is our grpc-js adapter (rather than connect-node).
 */
const stacks: { name: string; protocol: string; ours: boolean; caller: () => UnaryCaller }[] = [
  {
    name: "grpc-js client → gRPC server",
    protocol: "grpc",
    ours: true,
    caller: () => grpcJsCaller(grpcServer.port),
  },
  {
    name: "Connect over HTTP/1.1 → HTTP server",
    protocol: "connect",
    ours: false,
    caller: () => connectCaller(createConnectTransport({ baseUrl: httpUrl(), httpVersion: "1.1" })),
  },
  {
    name: "Connect over h2c → HTTP server",
    protocol: "connect",
    ours: false,
    caller: () => connectCaller(createConnectTransport({ baseUrl: httpUrl(), httpVersion: "2" })),
  },
  {
    name: "gRPC over h2c → HTTP server",
    protocol: "grpc",
    ours: false,
    caller: () => connectCaller(createGrpcTransport({ baseUrl: httpUrl() })),
  },
  {
    name: "gRPC-Web over HTTP/1.1 → HTTP server",
    protocol: "grpc-web",
    ours: false,
    caller: () => connectCaller(createGrpcWebTransport({ baseUrl: httpUrl(), httpVersion: "1.1" })),
  },
];

describe.each(stacks)("$name", ({ protocol, ours, caller }) => {
  let call: UnaryCaller;
  beforeAll(() => {
    call = caller();
  });

  it("reaches the one implementation with headers, peer address, deadline and protocol", async () => {
    const res = await call<IntrospectTokenResponse>(TokenService.method.introspectToken, { token: "good" }, {
      header: { "x-client": "gateway-7" },
      timeoutMs: 10_000,
    });
    expect(res.message).toMatchObject({
      active: true,
      username: "127.0.0.1",
      tokenType: protocol,
      clientId: "gateway-7",
      message: "deadline",
    });
    expect(res.header.get("x-served-by")).toBe("fake");
    expect(res.trailer.get("x-checked")).toBe("yes");
  });

  it("passes binary (-bin) metadata both ways", async () => {
    const blob = new Uint8Array([0, 1, 2, 250, 255]);
    const res = await call(TokenService.method.introspectToken, { token: "good" }, { header: { "x-blob-bin": encodeBinaryHeader(blob) } });
    expect(decodeBinaryHeader(res.header.get("x-blob-bin") ?? "")).toEqual(blob);
  });

  it("answers UNIMPLEMENTED for a method the implementation lacks", async () => {
    const err = await failure(call(TokenService.method.listSecurityEvents, {}));
    expect(err.code).toBe(Code.Unimplemented);
  });

  it("reports no deadline when the client sets none", async () => {
    const res = await call<IntrospectTokenResponse>(TokenService.method.introspectToken, { token: "bad" });
    expect(res.message).toMatchObject({ active: false, message: "no deadline" });
  });

  it("carries a ConnectError's code and message", async () => {
    const err = await failure(call(TokenService.method.revokeToken, { reason: "x" }));
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.rawMessage).toBe("you may not revoke this token");
  });

  it("turns any other error into INTERNAL without detail, and reports the detail", async () => {
    const before = seen.internalErrors.length;
    const err = await failure(call(TokenService.method.listTokens, {}));
    expect(err.code).toBe(Code.Internal);
    expect(err.rawMessage).toBe("internal error");
    expect(err.message).not.toContain(SECRET);
    expect(seen.internalErrors.slice(before)).toEqual([
      { err: expect.objectContaining({ message: expect.stringContaining(SECRET) }), procedure: "/tokens.v1.TokenService/ListTokens" },
    ]);
  });

  it("aborts the handler's signal at the deadline", async () => {
    const before = seen.aborts.length;
    const err = await failure(call(TokenService.method.issueToken, {}, { timeoutMs: 200 }));
    expect(err.code).toBe(Code.DeadlineExceeded);
    await vi.waitFor(() => expect(seen.aborts.length).toBe(before + 1));
    expect(seen.aborts[before]?.protocol).toBe(protocol);
    if (ours) {
      // The client gives up at the same moment: whichever side's timer fires
      // first decides whether the server sees its own deadline or a cancel.
      // (connect-node, on the HTTP server, derives its own reason from the
      // HTTP/2 reset code, which is not ours to test.)
      expect([Code.DeadlineExceeded, Code.Canceled]).toContain(seen.aborts[before]?.code);
    }
  });

  it("refuses an oversized request without reaching the handler", async () => {
    const before = seen.introspections;
    const err = await failure(call(TokenService.method.introspectToken, { token: "x".repeat(MAX_MESSAGE_BYTES + 1) }));
    expect(err.code).toBe(Code.ResourceExhausted);
    expect(seen.introspections).toBe(before);
  });

  it("answers health Check", async () => {
    const res = await call<{ status: Serving }>(Health.method.check, { service: TokenService.typeName });
    expect(res.message.status).toBe(Serving.SERVING);
    storeUp = false;
    try {
      const down = await call<{ status: Serving }>(Health.method.check, { service: "" });
      expect(down.message.status).toBe(Serving.NOT_SERVING);
    } finally {
      storeUp = true;
    }
    const err = await failure(call(Health.method.check, { service: "no.such.Service" }));
    expect(err.code).toBe(Code.NotFound);
  });
});

describe("grpc-js server specifics", () => {
  it("answers INVALID_ARGUMENT to a request that does not decode", async () => {
    const garbled: grpc.ServiceDefinition = {
      introspectToken: {
        ...methodDefinition(TokenService.method.introspectToken),
        // Field 1, length-delimited, with a length that runs past the end.
        requestSerialize: () => Buffer.from([0x0a, 0xff]),
      },
    };
    const Ctor = grpc.makeGenericClientConstructor(garbled, "TokenService");
    const client = new Ctor(`127.0.0.1:${grpcServer.port}`, grpc.credentials.createInsecure());
    grpcClients.push(client);
    const before = seen.introspections;
    const err = await failure(grpcJsCaller(client)(TokenService.method.introspectToken, {}));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toBe("request could not be decoded");
    expect(seen.introspections).toBe(before);
  });

  it("aborts the handler's signal when the client cancels", async () => {
    const client = grpcJsClient(TokenService, grpcServer.port);
    grpcClients.push(client);
    const before = seen.aborts.length;
    const call = (client as unknown as Record<string, GrpcUnaryFn>).issueToken!.call(client, {}, new grpc.Metadata(), {}, () => {});
    await new Promise((r) => setTimeout(r, 100)); // the handler is waiting on its signal
    call.cancel();
    await vi.waitFor(() => expect(seen.aborts.length).toBe(before + 1));
    expect(seen.aborts[before]).toEqual({ protocol: "grpc", code: Code.Canceled });
  });

  it("streams health Watch: the status, then each change, then SERVICE_UNKNOWN for unknown names", async () => {
    const client = grpcJsClient(Health, grpcServer.port);
    grpcClients.push(client);
    const watch = (service: string) =>
      (client as unknown as Record<string, (req: object) => grpc.ClientReadableStream<{ status: Serving }>>).watch!({ service });

    const stream = watch(TokenService.typeName);
    const statuses: Serving[] = [];
    stream.on("data", (m: { status: Serving }) => statuses.push(m.status));
    stream.on("error", () => {}); // the cancel below ends it with CANCELLED
    await vi.waitFor(() => expect(statuses).toEqual([Serving.SERVING]));
    storeUp = false;
    try {
      await vi.waitFor(() => expect(statuses).toEqual([Serving.SERVING, Serving.NOT_SERVING]));
    } finally {
      storeUp = true;
    }
    await vi.waitFor(() => expect(statuses).toEqual([Serving.SERVING, Serving.NOT_SERVING, Serving.SERVING]));
    stream.cancel();

    const unknown = watch("no.such.Service");
    const first = await new Promise<Serving>((resolve) => unknown.once("data", (m: { status: Serving }) => resolve(m.status)));
    expect(first).toBe(Serving.SERVICE_UNKNOWN);
    unknown.on("error", () => {});
    unknown.cancel();
  });
});

describe("HTTP server specifics", () => {
  it("streams health Watch over Connect h2c", async () => {
    const client = createClient(Health, createConnectTransport({ baseUrl: httpUrl(), httpVersion: "2" }));
    const abort = new AbortController();
    const statuses: Serving[] = [];
    const done = (async () => {
      for await (const m of client.watch({ service: "" }, { signal: abort.signal })) {
        statuses.push(m.status);
        if (statuses.length === 1) storeUp = false;
        if (statuses.length === 2) {
          storeUp = true;
          abort.abort();
        }
      }
    })().catch((e: unknown) => {
      if (ConnectError.from(e).code !== Code.Canceled) throw e;
    });
    await done;
    storeUp = true;
    expect(statuses).toEqual([Serving.SERVING, Serving.NOT_SERVING]);
  });

  it("serves plain HTTP paths through extraHandler", async () => {
    const res = await fetch(`${httpUrl()}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("ok");
  });

  it("routes an HTTP/1.1 request whose first bytes arrive one at a time", async () => {
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(httpServer.port, "127.0.0.1");
      let text = "";
      socket.on("data", (d) => (text += d.toString()));
      socket.on("end", () => resolve(text));
      socket.on("error", reject);
      // "P" could still be the HTTP/2 preface; the server must wait for more.
      socket.write("P");
      setTimeout(() => socket.write("OST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"), 50);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(answer).toMatch(/\r\n\r\n(2\r\n)?ok/); // chunked or not
  });

  it("answers 404 to an unknown path", async () => {
    const res = await fetch(`${httpUrl()}/nope`, { method: "POST" });
    expect(res.status).toBe(404);
  });
});

// ---------------------------------------------------------------------------
// Reflection, on both servers.

type ReflectionAnswer = reflectionV1.ServerReflectionResponse["messageResponse"];

/** Asks questions one after another on one reflection stream. */
type Reflector = (questions: reflectionV1.ServerReflectionRequest["messageRequest"][]) => Promise<ReflectionAnswer[]>;

function grpcJsReflector(): Reflector {
  const client = grpcJsClient(reflectionV1.ServerReflection, grpcServer.port);
  grpcClients.push(client);
  return (questions) =>
    new Promise((resolve, reject) => {
      const call = (client as unknown as Record<string, () => grpc.ClientDuplexStream<object, reflectionV1.ServerReflectionResponse>>).serverReflectionInfo!();
      const answers: ReflectionAnswer[] = [];
      call.on("data", (res: reflectionV1.ServerReflectionResponse) => answers.push(res.messageResponse));
      call.on("end", () => resolve(answers));
      call.on("error", reject);
      for (const messageRequest of questions) call.write({ host: "", messageRequest });
      call.end();
    });
}

function connectReflector(): Reflector {
  const client = createClient(reflectionV1.ServerReflection, createGrpcTransport({ baseUrl: httpUrl() }));
  return async (questions) => {
    const answers: ReflectionAnswer[] = [];
    async function* requests() {
      for (const messageRequest of questions) yield { host: "", messageRequest };
    }
    for await (const res of client.serverReflectionInfo(requests())) answers.push(res.messageResponse);
    return answers;
  };
}

function descriptors(answer: ReflectionAnswer | undefined): FileDescriptorProto[] {
  if (answer?.case !== "fileDescriptorResponse") throw new Error(`expected descriptors, got ${answer?.case}`);
  return answer.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
}

describe.each([
  { name: "gRPC server (grpc-js client)", reflector: grpcJsReflector },
  { name: "HTTP server (connect gRPC client)", reflector: connectReflector },
])("reflection on the $name", ({ reflector }) => {
  let ask: Reflector;
  beforeAll(() => {
    ask = reflector();
  });

  it("lists the token service, health and both reflection services", async () => {
    const [answer] = await ask([{ case: "listServices", value: "" }]);
    expect(answer?.case).toBe("listServicesResponse");
    const names = answer?.case === "listServicesResponse" ? answer.value.service.map((s) => s.name) : [];
    expect(names.sort()).toEqual(
      ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", "tokens.v1.TokenService"].sort(),
    );
  });

  it("returns the service's file and every dependency, enough to rebuild all its types", async () => {
    const [answer] = await ask([{ case: "fileContainingSymbol", value: "tokens.v1.TokenService" }]);
    const files = descriptors(answer);
    expect(files[0]?.name).toBe("tokens/v1/token_service.proto");
    expect(files.map((f) => f.name)).toEqual(
      expect.arrayContaining(["google/protobuf/timestamp.proto", "google/protobuf/duration.proto"]),
    );
    // A registry refuses files whose imports are missing: this proves completeness.
    const byName = new Map(files.map((f) => [f.name, f]));
    const registry = createFileRegistry(files[0]!, (name) => byName.get(name));
    const service = registry.getService("tokens.v1.TokenService");
    expect(service?.methods.map((m) => m.name)).toContain("IntrospectToken");
    expect(registry.getMessage("tokens.v1.TokenInfo")?.field.createTime?.message?.typeName).toBe("google.protobuf.Timestamp");
  });

  it("resolves methods, nested messages, fields, enums and enum values, files by name", async () => {
    const answers = await ask([
      { case: "fileContainingSymbol", value: "tokens.v1.TokenService.IntrospectToken" },
      { case: "fileContainingSymbol", value: "tokens.v1.TokenInfo.MetadataEntry" },
      { case: "fileContainingSymbol", value: "tokens.v1.TokenInfo.display_hint" },
      { case: "fileContainingSymbol", value: "tokens.v1.Environment" },
      { case: "fileContainingSymbol", value: "tokens.v1.ENVIRONMENT_PRODUCTION" },
      { case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckResponse.ServingStatus" },
      { case: "fileByFilename", value: "google/protobuf/timestamp.proto" },
    ]);
    expect(answers.map((a) => (a.case === "errorResponse" ? a.value.errorMessage : descriptors(a)[0]?.name))).toEqual([
      "tokens/v1/token_service.proto",
      "tokens/v1/token_service.proto",
      "tokens/v1/token_service.proto",
      "tokens/v1/token_service.proto",
      "tokens/v1/token_service.proto",
      "health/v1/health.proto",
      "google/protobuf/timestamp.proto",
    ]);
  });

  it("answers NOT_FOUND for unknown names and an empty list for a type without extensions", async () => {
    const answers = await ask([
      { case: "fileContainingSymbol", value: "tokens.v1.Nope" },
      { case: "fileByFilename", value: "nope.proto" },
      { case: "fileContainingExtension", value: create(reflectionV1.ExtensionRequestSchema, { containingType: "tokens.v1.TokenInfo", extensionNumber: 100 }) },
      { case: "allExtensionNumbersOfType", value: "tokens.v1.TokenInfo" },
      { case: "allExtensionNumbersOfType", value: "tokens.v1.Nope" },
    ]);
    expect(answers.map((a) => (a.case === "errorResponse" ? a.value.errorCode : a.case))).toEqual([
      Code.NotFound,
      Code.NotFound,
      Code.NotFound,
      "allExtensionNumbersResponse",
      Code.NotFound,
    ]);
    expect(answers[3]?.value).toMatchObject({ baseTypeName: "tokens.v1.TokenInfo", extensionNumber: [] });
  });
});

describe("reflection v1alpha", () => {
  it("lists services too (older tools ask it first)", async () => {
    const client = createClient(reflectionV1alpha.ServerReflection, createGrpcTransport({ baseUrl: httpUrl() }));
    async function* requests() {
      yield { host: "", messageRequest: { case: "listServices" as const, value: "" } };
    }
    const names: string[] = [];
    for await (const res of client.serverReflectionInfo(requests())) {
      if (res.messageResponse.case === "listServicesResponse") names.push(...res.messageResponse.value.service.map((s) => s.name));
    }
    expect(names).toContain("tokens.v1.TokenService");
  });
});

// ---------------------------------------------------------------------------
// buf curl: a real third-party client resolving the API through reflection.

const buf = resolve("node_modules/.bin/buf");
const execFileAsync = promisify(execFile);
const bufCurl = async (...args: string[]) => (await execFileAsync(buf, ["curl", ...args], { timeout: 20_000 })).stdout;

describe.runIf(existsSync(buf))("buf curl through reflection", () => {
  it("lists the services on the HTTP port (h2c prior knowledge)", async () => {
    const out = await bufCurl("--list-services", "--http2-prior-knowledge", httpUrl());
    expect(out).toContain("tokens.v1.TokenService");
  });

  it("lists the services on the gRPC port", async () => {
    const out = await bufCurl("--list-services", "--protocol", "grpc", "--http2-prior-knowledge", `http://127.0.0.1:${grpcServer.port}`);
    expect(out).toContain("tokens.v1.TokenService");
    expect(out).toContain("grpc.health.v1.Health");
  });

  it("calls a method on the gRPC port using only reflected descriptors", async () => {
    const out = await bufCurl(
      "--protocol", "grpc", "--http2-prior-knowledge",
      "-d", '{"token":"good"}',
      `http://127.0.0.1:${grpcServer.port}/tokens.v1.TokenService/IntrospectToken`,
    );
    expect(JSON.parse(out)).toMatchObject({ active: true, tokenType: "grpc", username: "127.0.0.1" });
  });

  it("calls a method on the HTTP port with the Connect protocol", async () => {
    const out = await bufCurl("-d", '{"token":"good"}', `${httpUrl()}/tokens.v1.TokenService/IntrospectToken`);
    expect(JSON.parse(out)).toMatchObject({ active: true, tokenType: "connect" });
  });
});

// ---------------------------------------------------------------------------
// Health logic that needs no sockets.

describe("health service", () => {
  const inMemory = (h: ReturnType<typeof createHealthService>): Client<typeof Health> =>
    createClient(Health, createRouterTransport(({ service }) => service(Health, h.impl)));

  it("is NOT_SERVING after setShuttingDown, and tells watchers at once", async () => {
    const h = createHealthService({ check: () => Promise.resolve(true), services: ["a.B"], watchIntervalMs: 60_000 });
    const client = inMemory(h);
    expect((await client.check({ service: "a.B" })).status).toBe(Serving.SERVING);
    const abort = new AbortController();
    const stream = client.watch({ service: "" }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect((await stream.next()).value?.status).toBe(Serving.SERVING);
    h.setShuttingDown();
    expect((await stream.next()).value?.status).toBe(Serving.NOT_SERVING);
    abort.abort();
    expect((await client.check({ service: "" })).status).toBe(Serving.NOT_SERVING);
  });

  it("is NOT_SERVING when the check hangs or throws", async () => {
    const hangs = inMemory(createHealthService({ check: () => new Promise(() => {}), services: [], checkTimeoutMs: 50 }));
    expect((await hangs.check({ service: "" })).status).toBe(Serving.NOT_SERVING);
    const throws = inMemory(createHealthService({ check: () => Promise.reject(new Error("down")), services: [] }));
    expect((await throws.check({ service: "" })).status).toBe(Serving.NOT_SERVING);
  });

  it("runs one check for a storm of probes", async () => {
    let checks = 0;
    const client = inMemory(
      createHealthService({
        check: async () => {
          checks++;
          await new Promise((r) => setTimeout(r, 20));
          return true;
        },
        services: [],
      }),
    );
    const answers = await Promise.all(Array.from({ length: 50 }, () => client.check({ service: "" })));
    expect(answers.every((a) => a.status === Serving.SERVING)).toBe(true);
    expect((await client.check({ service: "" })).status).toBe(Serving.SERVING); // from the cache
    expect(checks).toBe(1);
  });

  it("lists every known service", async () => {
    const client = inMemory(createHealthService({ check: () => Promise.resolve(true), services: ["a.B"] }));
    const res = await client.list({});
    expect(Object.keys(res.statuses).sort()).toEqual(["", "a.B"]);
  });
});

// ---------------------------------------------------------------------------
// Shutdown, on servers of their own.

describe("close()", () => {
  it("completes while a client keeps an idle HTTP/2 session open", async () => {
    const [g, h] = await startServers(services);
    const session = http2.connect(`http://127.0.0.1:${h.port}`);
    await new Promise<void>((resolve) => session.once("connect", () => resolve()));
    session.on("error", () => {});
    const grpcClient = grpcJsClient(TokenService, g.port);
    await grpcJsCaller(grpcClient)(TokenService.method.introspectToken, { token: "good" }); // an open channel
    const started = Date.now();
    await Promise.all([g.close(5_000), h.close(5_000)]);
    // GOAWAY lets idle sessions go at once; nobody waits for the grace period.
    expect(Date.now() - started).toBeLessThan(2_000);
    grpcClient.close();
    session.destroy();
  });

  it("ends long-lived streams after the grace period on both servers", async () => {
    const [g, h] = await startServers(services);
    const grpcClient = grpcJsClient(Health, g.port);
    const grpcWatch = (grpcClient as unknown as Record<string, (req: object) => grpc.ClientReadableStream<unknown>>).watch!({ service: "" });
    const grpcEnded = new Promise<number>((resolve) => grpcWatch.on("error", (e: grpc.ServiceError) => resolve(e.code)).on("end", () => resolve(0)));
    grpcWatch.on("data", () => {});
    const connectClient = createClient(Health, createConnectTransport({ baseUrl: `http://127.0.0.1:${h.port}`, httpVersion: "2" }));
    const connectEnded = (async () => {
      try {
        for await (const _ of connectClient.watch({ service: "" })) {
          // keep reading until the server ends the stream
        }
        return Code.Unknown;
      } catch (e) {
        return ConnectError.from(e).code;
      }
    })();
    await new Promise((r) => setTimeout(r, 200)); // both streams are open
    const started = Date.now();
    await Promise.all([g.close(300), h.close(300)]);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect({ grpc: await grpcEnded, connect: await connectEnded }).toEqual({ grpc: Code.Unavailable, connect: Code.Unavailable });
    grpcClient.close();
  });
});
