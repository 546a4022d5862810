import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { beforeEach, describe, expect, it } from "vitest";
import { TokenService } from "../../gen/tokens/v1/token_service_pb.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import type { TokenDeps } from "../../src/domain/ports.js";
import { RateLimits, type RateLimitOptions } from "../../src/domain/rate-limit.js";
import { mintToken } from "../../src/domain/token-format.js";
import { TokenServiceHandler, type TokenServiceOptions } from "../../src/rpc/token-service.js";
import { fakeDeps } from "../support/fakes.js";

const OPTIONS: RateLimitOptions = {
  perCaller: {
    introspect: { ratePerSecond: 10, burst: 3 },
    issue: { ratePerSecond: 1, burst: 2 },
    revoke: { ratePerSecond: 1, burst: 2 },
    list: { ratePerSecond: 1, burst: 2 },
  },
  failedAuthPerPeer: { ratePerSecond: 1, burst: 2 },
  maxKeys: 1000,
  lookupsInFlightPerCaller: 8,
  lookupsQueuedPerCaller: 100,
};

/** The real handler behind Connect's in-memory transport, with rate limits on fake deps. */
function setup(options: Partial<RateLimitOptions> = {}, handler: TokenServiceOptions = {}) {
  const f = fakeDeps({ maxActiveTokensPerSubject: 100 });
  const limits = new RateLimits({ ...OPTIONS, ...options }, "development", f.events);
  const deps: TokenDeps = { ...f.deps, limits };
  let lookups = 0;
  const find = f.store.findByDigest.bind(f.store);
  f.store.findByDigest = (digest) => (lookups++, find(digest));
  const transport = createRouterTransport(({ service }) => service(TokenService, new TokenServiceHandler(deps, handler)));
  const client: Client<typeof TokenService> = createClient(TokenService, transport);
  return { ...f, deps, limits, client, lookups: () => lookups };
}

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

async function failure(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("expected the call to fail");
}

describe("rate limits on the RPCs", () => {
  let s: ReturnType<typeof setup>;
  let admin: string;
  beforeEach(async () => {
    s = setup();
    admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
  });

  describe("per caller and method class", () => {
    it("answers RESOURCE_EXHAUSTED with retry-after and gRPC pushback once the burst is spent, then admits again in time", async () => {
      const token = mintToken("development").token;
      for (let i = 0; i < 3; i++) await s.client.introspectToken({ token }, as(admin));
      const e = await failure(s.client.introspectToken({ token }, as(admin)));
      expect(e.code).toBe(Code.ResourceExhausted);
      expect(e.rawMessage).toBe("rate limit exceeded for introspect calls; retry after 1s");
      expect(e.metadata.get("retry-after")).toBe("1");
      expect(e.metadata.get("grpc-retry-pushback-ms")).toBe("100");
      s.clock.advance(100);
      await s.client.introspectToken({ token }, as(admin));
    });

    it("keeps the classes apart: introspection spent, issuing still admitted", async () => {
      const token = mintToken("development").token;
      for (let i = 0; i < 3; i++) await s.client.introspectToken({ token }, as(admin));
      await s.client.issueToken({ name: "x", subject: "x@example.com" }, as(admin));
      await s.client.issueToken({ name: "y", subject: "x@example.com" }, as(admin));
      expect((await failure(s.client.issueToken({ name: "z", subject: "x@example.com" }, as(admin)))).code).toBe(Code.ResourceExhausted);
      expect(s.store.rows.size).toBe(3); // no write for the refused one
      await s.client.listTokens({}, as(admin));
    });

    it("limits each caller on its own and raises one kind of event per offender", async () => {
      const other = (await s.client.issueToken({ name: "gw", subject: "gw@example.com", scopes: ["tokens.introspect"] }, as(admin))).token;
      const token = mintToken("development").token;
      for (let i = 0; i < 3; i++) await s.client.introspectToken({ token }, as(admin));
      for (let i = 0; i < 5; i++) await failure(s.client.introspectToken({ token }, as(admin)));
      await s.client.introspectToken({ token }, as(other));
      const limited = s.events.events.filter((e) => e.type === "rate_limit_exceeded");
      expect(limited).toHaveLength(5);
      expect(new Set(limited.map((e) => JSON.stringify(e))).size).toBe(1); // identical: folded into one row
      expect(limited[0]).toMatchObject({ severity: "warning", callerSubject: "admin@example.com", method: "/tokens.v1.TokenService/IntrospectToken" });
    });
  });

  describe("failed authentications per address", () => {
    it("refuses an address that keeps failing before any store lookup, with retry information", async () => {
      await s.client.listTokens({}, as(admin)); // the admin's credential is now cached
      for (let i = 0; i < 2; i++) expect((await failure(s.client.listTokens({}, as(mintToken("development").token)))).code).toBe(Code.Unauthenticated);
      const before = s.lookups();
      const e = await failure(s.client.listTokens({}, as(mintToken("development").token)));
      expect(e.code).toBe(Code.ResourceExhausted);
      expect(e.rawMessage).toContain("too many failed authentications from this address");
      expect(e.metadata.get("retry-after")).toBe("1");
      expect(s.lookups()).toBe(before); // no store query for a guess once the budget is spent
      expect(s.events.events.filter((x) => x.type === "rate_limit_exceeded")).toHaveLength(1);
      // A credential already cached as active still passes from the same address.
      await s.client.introspectToken({ token: mintToken("development").token }, as(admin));
      s.clock.advance(1000);
      expect((await failure(s.client.listTokens({}, as(mintToken("development").token)))).code).toBe(Code.Unauthenticated);
    });

    it("counts missing and malformed credentials as failures too", async () => {
      await failure(s.client.listTokens({}));
      await failure(s.client.listTokens({}, { headers: { authorization: "Basic abc" } }));
      expect((await failure(s.client.listTokens({}))).code).toBe(Code.ResourceExhausted);
    });

    it("never charges a gateway's address for the unknown tokens it relays", async () => {
      s = setup({ perCaller: { ...OPTIONS.perCaller, introspect: { ratePerSecond: 1000, burst: 1000 } } });
      admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
      for (let i = 0; i < 200; i++) {
        const answer = await s.client.introspectToken({ token: mintToken("development").token }, as(admin));
        expect(answer.active).toBe(false);
      }
      expect(s.limits.authenticationWait({ method: "m" }, s.clock.now().getTime())).toBe(0);
      expect(s.events.events.filter((e) => e.type === "rate_limit_exceeded")).toHaveLength(0);
    });
  });

  describe("WatchRevocations", () => {
    async function first(stream: AsyncIterable<unknown>): Promise<void> {
      for await (const _ of stream) return;
    }

    it("refuses a heartbeat outside the documented 100ms-60s, naming the field", async () => {
      for (const ms of [50, 61_000]) {
        const e = await failure(first(s.client.watchRevocations({ heartbeatInterval: durationFromMs(ms) }, as(admin))));
        expect(e.code).toBe(Code.InvalidArgument);
        expect(e.rawMessage).toMatch(/^heartbeat_interval: /);
      }
    });

    it("raises an ask below the floor to the floor and says so", async () => {
      s = setup({}, { minHeartbeatMs: 750 });
      admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
      let served: string | null = null;
      await first(s.client.watchRevocations({ heartbeatInterval: durationFromMs(100) }, { ...as(admin), onHeader: (h) => (served = h.get("x-heartbeat-interval-ms")) }));
      expect(served).toBe("750");
      await first(s.client.watchRevocations({ heartbeatInterval: durationFromMs(2000) }, { ...as(admin), onHeader: (h) => (served = h.get("x-heartbeat-interval-ms")) }));
      expect(served).toBe("2000");
    });

    it("caps the streams one caller holds open", async () => {
      s = setup({ perCaller: { ...OPTIONS.perCaller, list: { ratePerSecond: 100, burst: 100 } } }, { maxStreamsPerCaller: 2 });
      admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
      const aborts = [new AbortController(), new AbortController()];
      const open = aborts.map((abort) => s.client.watchRevocations({}, { ...as(admin), signal: abort.signal })[Symbol.asyncIterator]());
      for (const it of open) await it.next();
      const e = await failure(first(s.client.watchRevocations({}, as(admin))));
      expect(e.code).toBe(Code.ResourceExhausted);
      expect(e.rawMessage).toContain("revocation streams");
      // Closing one frees its slot.
      aborts[0]!.abort();
      await expect.poll(async () => (await first(s.client.watchRevocations({}, as(admin))).then(() => "opened", (x: unknown) => ConnectError.from(x).code))).toBe("opened");
      aborts[1]!.abort();
    });

    it("ends with UNAUTHENTICATED when its caller's token is revoked", async () => {
      s = setup({}, { streamRecheckMs: 10 });
      admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
      const gw = await s.client.issueToken({ name: "gw", subject: "gw@example.com", scopes: ["tokens.introspect"] }, as(admin));
      const stream = s.client.watchRevocations({}, as(gw.token))[Symbol.asyncIterator]();
      await stream.next();
      await s.client.revokeToken({ target: { case: "tokenId", value: gw.info!.id } }, as(admin));
      // Without a revocation channel in this setup, the re-check finds it in the store.
      const e = await failure((async () => {
        for (;;) if ((await stream.next()).done) return;
      })());
      expect(e.code).toBe(Code.Unauthenticated);
      expect(e.rawMessage).toContain("revoked");
    });

    it("ends at once when the revocation notice names its caller", async () => {
      const gw = await s.client.issueToken({ name: "gw", subject: "gw@example.com", scopes: ["tokens.introspect"] }, as(admin));
      const stream = s.client.watchRevocations({}, as(gw.token))[Symbol.asyncIterator]();
      await stream.next();
      s.revocations.revoked("digest-key", gw.info!.id);
      const events: string[] = [];
      const e = await failure((async () => {
        for (;;) {
          const next = await stream.next();
          if (next.done) return;
          events.push(String(next.value.event.case));
        }
      })());
      expect(e.code).toBe(Code.Unauthenticated);
      expect(events).toContain("revocation");
    });
  });
});
