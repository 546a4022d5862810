import type { ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type ListSecurityEventsResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

const FORM = { "content-type": "application/x-www-form-urlencoded" } as const;
const SECRET = "proxy-secret-0123456789";

/**
 * The limits as a client meets them on every port of one replica (embedded
 * PGlite): 429 with Retry-After on the HTTP endpoints, RESOURCE_EXHAUSTED
 * with `retry-after` and `grpc-retry-pushback-ms` on gRPC and Connect, one
 * budget of failed authentications per address across all of them, metrics,
 * and aggregated `rate_limit_exceeded` events.
 */
describe("rate limits at the edges", () => {
  let s: ServiceUnderTest;
  let base: string;
  let grpc: ReturnType<typeof grpcClient>;
  let admin: string;
  let refusals = 0;

  beforeAll(async () => {
    s = await startTestService({
      DATA_DIR: "memory://",
      LOG_LEVEL: "warn",
      RATE_LIMIT_FAILED_AUTH: "0.1,3",
      RATE_LIMIT_REVOKE: "0.1,2",
      FORWARD_AUTH_SECRET: SECRET,
    });
    admin = s.bootstrapToken!;
    base = `http://127.0.0.1:${s.service.httpPort}`;
    grpc = grpcClient(TokenService, `127.0.0.1:${s.service.grpcPort}`);
    await grpc.unary("listTokens", {}, { authorization: `Bearer ${admin}` }); // the admin's credential is cached
  });

  afterAll(async () => {
    grpc?.close();
    await s?.service.stop();
  });

  const introspect = (authorization: string) =>
    fetch(`${base}/oauth2/introspect`, { method: "POST", headers: { ...FORM, authorization }, body: `token=${mintToken("development").token}` });

  it("answers failed authentications 401 until the address's budget is spent, then 429 with Retry-After", async () => {
    const guess = () => `Bearer ${mintToken("development").token}`;
    for (let i = 0; i < 3; i++) expect((await introspect(guess())).status).toBe(401);
    const refused = await introspect(guess());
    refusals++;
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(await refused.json()).toEqual({ error: "temporarily_unavailable", error_description: expect.stringContaining("too many failed authentications") });
    // Basic credentials are the same budget.
    const basic = await introspect(`Basic ${Buffer.from(`00000000-0000-4000-8000-000000000000:${mintToken("development").token}`).toString("base64")}`);
    refusals++;
    expect(basic.status).toBe(429);
  });

  it("shares the budget with both RPC ports: RESOURCE_EXHAUSTED with retry-after and gRPC pushback", async () => {
    const error = await grpc.unary("listTokens", {}, { authorization: `Bearer ${mintToken("development").token}` }).catch((e: ServiceError) => e);
    refusals++;
    expect((error as ServiceError).code).toBe(8); // RESOURCE_EXHAUSTED
    expect((error as ServiceError).metadata.get("retry-after")).toEqual([expect.stringMatching(/^\d+$/)]);
    expect(Number((error as ServiceError).metadata.get("grpc-retry-pushback-ms")[0])).toBeGreaterThan(0);

    const connect = await fetch(`${base}/tokens.v1.TokenService/ListTokens`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${mintToken("development").token}` },
      body: "{}",
    });
    refusals++;
    expect(connect.status).toBe(429); // Connect's HTTP status for resource_exhausted
    expect(connect.headers.get("retry-after")).toMatch(/^\d+$/);
    expect(await connect.json()).toMatchObject({ code: "resource_exhausted" });
  });

  it("still serves a caller already cached as active from that address", async () => {
    expect((await introspect(`Bearer ${admin}`)).status).toBe(200);
    await grpc.unary("listTokens", {}, { authorization: `Bearer ${admin}` });
  });

  it("/auth: a wrong proxy secret is a failed authentication (429 once spent); the right one is never limited", async () => {
    const wrong = await fetch(`${base}/auth`, { headers: { "x-forward-auth-secret": "not-the-secret-000000", authorization: `Bearer ${mintToken("development").token}` } });
    refusals++;
    expect(wrong.status).toBe(429);
    expect(wrong.headers.get("retry-after")).toMatch(/^\d+$/);
    const right = await fetch(`${base}/auth`, { headers: { "x-forward-auth-secret": SECRET, authorization: `Bearer ${mintToken("development").token}` } });
    expect(right.status).toBe(401); // an unknown end-user token: an answer, not a limit
  });

  it("/oauth2/revoke: per-caller limit, 429 with Retry-After", async () => {
    const revoke = () => fetch(`${base}/oauth2/revoke`, { method: "POST", headers: { ...FORM, authorization: `Bearer ${admin}` }, body: `token=${mintToken("development").token}` });
    expect((await revoke()).status).toBe(200);
    expect((await revoke()).status).toBe(200);
    const refused = await revoke();
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(((await refused.json()) as { error_description: string }).error_description).toContain("rate limit exceeded for revoke calls");
  });

  it("counts refusals in metrics and folds them into rate_limit_exceeded events whose counts add up", async () => {
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(new RegExp(`token_service_rate_limited_total\\{limit="failed_auth_peer"\\} ${refusals}\\b`));
    expect(metrics).toMatch(/token_service_rate_limited_total\{limit="caller_revoke"\} 1\b/);
    const page = await grpc.unary<ListSecurityEventsResponse>("listSecurityEvents", { type: "rate_limit_exceeded", pageSize: 100 }, { authorization: `Bearer ${admin}` });
    const byPeer = page.events.filter((e) => e.peer !== "");
    const total = byPeer.reduce((sum, e) => sum + Number(e.count), 0);
    expect(total).toBe(refusals);
    expect(byPeer.length).toBeLessThanOrEqual(5); // one per method at most: a handful of rows, not one per request
    const byCaller = page.events.filter((e) => e.callerSubject !== "");
    expect(byCaller.reduce((sum, e) => sum + Number(e.count), 0)).toBe(1);
  });
});
