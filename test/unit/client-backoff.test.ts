/**
 * The gateway client honours a service that says "not now": RESOURCE_EXHAUSTED
 * with `grpc-retry-pushback-ms` or `retry-after` makes it stop sending, fail
 * fast with a clear error, keep serving its cache, and resume afterwards.
 * A stand-in TokenService (grpc-js on 127.0.0.1:0, built from the client's own
 * method definitions) plays the service.
 */
import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { TokenService } from "../../gen/tokens/v1/token_service_pb.js";
import { AnswerCache, IntrospectionClient, IntrospectionError, ServiceBusyError, grpcService, retryDelayMs } from "../../src/client/index.js";

interface StandIn {
  readonly address: string;
  /** Introspection calls that reached the server. */
  introspections: number;
  /** WatchRevocations calls that reached the server. */
  watches: number;
  /** What the next introspection answers: a refusal with these trailers, or active. */
  refuse: Record<string, string> | undefined;
  /** Refuse every watch with these trailers (undefined: heartbeat and hold open). */
  refuseWatch: Record<string, string> | undefined;
  close(): Promise<void>;
}

const servers: StandIn[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

function refusal(trailers: Record<string, string>): Partial<grpc.StatusObject> {
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries(trailers)) metadata.set(key, value);
  return { code: grpc.status.RESOURCE_EXHAUSTED, details: "too many lookups queued for this caller", metadata };
}

async function startStandIn(): Promise<StandIn> {
  const server = new grpc.Server();
  const streams = new Set<grpc.ServerWritableStream<object, object>>();
  const state: StandIn = {
    address: "",
    introspections: 0,
    watches: 0,
    refuse: undefined,
    refuseWatch: undefined,
    close: () =>
      new Promise<void>((resolve) => {
        for (const stream of streams) stream.end();
        server.tryShutdown(() => resolve());
        setTimeout(() => server.forceShutdown(), 500).unref();
      }),
  };
  const unimplemented = (_call: unknown, callback: grpc.sendUnaryData<object>) => callback({ code: grpc.status.UNIMPLEMENTED });
  const implementation: grpc.UntypedServiceImplementation = {};
  for (const method of TokenService.methods) implementation[method.localName] = unimplemented;
  implementation.introspectToken = (_call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) => {
    state.introspections++;
    if (state.refuse) return callback(refusal(state.refuse));
    callback(null, { active: true, sub: "alice@example.com", exp: 0n, revocationPosition: 0n });
  };
  implementation.watchRevocations = (call: grpc.ServerWritableStream<object, object>) => {
    state.watches++;
    if (state.refuseWatch) {
      call.emit("error", refusal(state.refuseWatch));
      return;
    }
    streams.add(call);
    const beat = () => call.write({ event: { case: "heartbeat", value: { confirmedAge: { seconds: 0n, nanos: 0 }, position: 0n } } });
    beat();
    const timer = setInterval(beat, 100);
    call.on("cancelled", () => clearInterval(timer));
    call.on("close", () => clearInterval(timer));
    call.on("finish", () => clearInterval(timer));
  };
  server.addService(grpcService(TokenService), implementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const standIn = Object.assign(state, { address: `127.0.0.1:${port}` });
  servers.push(standIn);
  return standIn;
}

describe("reading the pause a refusal asks for", () => {
  const metadata = (entries: Record<string, string>) => {
    const m = new grpc.Metadata();
    for (const [k, v] of Object.entries(entries)) m.set(k, v);
    return m;
  };
  it("prefers grpc-retry-pushback-ms, then retry-after seconds, then an HTTP-date", () => {
    expect(retryDelayMs(metadata({ "grpc-retry-pushback-ms": "250", "retry-after": "9" }))).toBe(250);
    expect(retryDelayMs(metadata({ "retry-after": "2" }))).toBe(2000);
    expect(retryDelayMs(metadata({ "retry-after": new Date(10_000).toUTCString() }), 7_000)).toBe(3000);
  });
  it("ignores what is neither", () => {
    expect(retryDelayMs(metadata({ "grpc-retry-pushback-ms": "-5" }))).toBeUndefined();
    expect(retryDelayMs(metadata({ "retry-after": "soon" }))).toBeUndefined();
    expect(retryDelayMs(new grpc.Metadata())).toBeUndefined();
    expect(retryDelayMs(undefined)).toBeUndefined();
  });
});

describe("RESOURCE_EXHAUSTED from the service", () => {
  it("surfaces a ServiceBusyError, sends nothing until the pause is over, then asks again", async () => {
    const service = await startStandIn();
    const client = new IntrospectionClient({ address: service.address, callerToken: "cf-gateway", heartbeatMs: 100, negativeTtlMs: 0 });
    try {
      await client.ready();
      service.refuse = { "grpc-retry-pushback-ms": "400", "retry-after": "1" };
      const first = await client.introspect("cf-some-token").catch((e: unknown) => e);
      expect(first).toBeInstanceOf(ServiceBusyError);
      expect(first).toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, retryAfterMs: 400, local: false });
      expect((first as Error).message).toMatch(/busy.*retry after 400 ms/);
      expect((first as Error).message).not.toContain("cf-some-token");
      expect(service.introspections).toBe(1);

      // While backing off, calls fail at once without reaching the service.
      const second = await client.introspect("cf-other-token").catch((e: unknown) => e);
      expect(second).toBeInstanceOf(ServiceBusyError);
      expect(second).toMatchObject({ local: true });
      expect((second as ServiceBusyError).retryAfterMs).toBeLessThanOrEqual(400);
      expect(service.introspections).toBe(1);
      expect(client.stats().refusedWhileBusy).toBe(1);

      // Once the pause is over the client asks again.
      service.refuse = undefined;
      await expect.poll(() => client.stats().busyForMs, { timeout: 5_000, interval: 20 }).toBe(0);
      expect((await client.introspect("cf-some-token")).active).toBe(true);
      expect(service.introspections).toBe(2);
    } finally {
      client.close();
    }
  });

  it("falls back to retry-after, caps the pause at maxPushbackMs, and keeps serving cached answers meanwhile", async () => {
    const service = await startStandIn();
    const client = new IntrospectionClient({ address: service.address, callerToken: "cf-gateway", heartbeatMs: 100, stalenessMs: 60_000, maxPushbackMs: 5_000 });
    try {
      await client.ready();
      expect((await client.introspect("cf-cached")).active).toBe(true);
      service.refuse = { "retry-after": "3600" };
      await expect(client.introspect("cf-new")).rejects.toMatchObject({ name: "ServiceBusyError", retryAfterMs: 5_000 });
      // The cached answer is still served: back-off concerns calls to the service only.
      expect((await client.introspect("cf-cached")).active).toBe(true);
      expect(service.introspections).toBe(2);
    } finally {
      client.close();
    }
  });

  it("waits the pause before reopening a refused revocation stream", async () => {
    const service = await startStandIn();
    service.refuseWatch = { "grpc-retry-pushback-ms": "60000" };
    const client = new IntrospectionClient({ address: service.address, callerToken: "cf-gateway", heartbeatMs: 100 });
    try {
      await expect.poll(() => service.watches, { timeout: 5_000, interval: 20 }).toBe(1);
      // Its own back-off starts at 100 ms; honouring the pushback, it has not tried again.
      await new Promise((resolve) => setTimeout(resolve, 800));
      expect(service.watches).toBe(1);
      expect(client.stats().streaming).toBe(false);
    } finally {
      client.close();
    }
  });

  it("reports other failures as IntrospectionError with the gRPC code, never as an answer", async () => {
    const service = await startStandIn();
    const client = new IntrospectionClient({ address: service.address, callerToken: "cf-gateway", heartbeatMs: 100, deadlineMs: 300 });
    await client.ready();
    await service.close();
    try {
      const error = await client.introspect("cf-x").catch((e: unknown) => e);
      expect(error).toBeInstanceOf(IntrospectionError);
      expect(error).not.toBeInstanceOf(ServiceBusyError);
      expect([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]).toContain((error as IntrospectionError).code);
    } finally {
      client.close();
    }
  });
});

describe("the client's answer cache", () => {
  const cache = () => new AnswerCache<{ active: boolean }>({ maxEntries: 2, stalenessMs: 1_000, negativeTtlMs: 100, isNegative: (v) => !v.active });

  it("serves an answer only within the staleness bound, extended by confirmations", () => {
    const c = cache();
    c.put("a", { active: true }, c.fence(), 0);
    expect(c.get("a", 1_000)).toEqual({ active: true });
    expect(c.get("a", 1_001)).toBeUndefined();
    c.confirmUntil(5_000);
    expect(c.get("a", 6_000)).toEqual({ active: true });
  });

  it("never caches an answer fetched across an eviction (the fence)", () => {
    const c = cache();
    const fence = c.fence();
    c.evict("a");
    c.put("a", { active: true }, fence, 0);
    expect(c.get("a", 0)).toBeUndefined();
  });

  it("keeps negatives briefly and apart, and evicts the least recently used positive", () => {
    const c = cache();
    c.put("a", { active: true }, c.fence(), 0);
    c.put("b", { active: true }, c.fence(), 0);
    c.get("a", 0);
    c.put("x", { active: false }, c.fence(), 0);
    c.put("y", { active: false }, c.fence(), 0);
    expect(c.get("b", 0)).toBeDefined(); // negatives did not push positives out
    expect(c.get("x", 0)).toBeUndefined(); // one negative slot (a tenth of 2, at least 1): oldest out
    expect(c.get("y", 101)).toBeUndefined(); // past negativeTtlMs
    c.put("c", { active: true }, c.fence(), 0);
    expect(c.stats().size).toBe(3);
    c.clear();
    expect(c.stats().size).toBe(0);
  });
});
