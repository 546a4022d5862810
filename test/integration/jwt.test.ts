import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SignJWT, createLocalJWKSet, exportSPKI, generateKeyPair, jwtVerify, type JSONWebKeySet } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InactiveReason, TokenKind, TokenService, type GetJwksResponse, type IntrospectTokenResponse, type IssueTokenResponse, type ListLegacyJwtUsageResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";
import * as grpcJs from "@grpc/grpc-js";

const SECRET = "legacy-hmac-secret-0123456789abcdef0123";

/**
 * Legacy JWTs and backend JWTs through the real service on PostgreSQL,
 * configured the way operators configure it (environment variables, a PEM file).
 */
describe("JWTs on the real service", () => {
  let db: TestDatabase;
  let sut: ServiceUnderTest;
  let grpc: ReturnType<typeof grpcClient>;
  let admin: string;
  let rsa: Awaited<ReturnType<typeof generateKeyPair>>;
  const auth = () => ({ authorization: `Bearer ${admin}` });

  beforeAll(async () => {
    db = await createTestDatabase();
    rsa = await generateKeyPair("RS256", { extractable: true });
    const dir = await mkdtemp(join(tmpdir(), "tis-jwt-"));
    const pem = join(dir, "legacy.pem");
    await writeFile(pem, await exportSPKI(rsa.publicKey));
    sut = await startTestService({
      DATABASE_URL: db.url,
      LEGACY_JWT_HMAC_SECRET: SECRET,
      LEGACY_JWT_PUBLIC_KEY_FILE: pem,
      LEGACY_JWT_PUBLIC_KEY_ALGORITHM: "RS256",
      LEGACY_JWT_ISSUER: "legacy-auth",
      LEGACY_JWT_SUNSET_DATE: "2099-01-01",
      LAST_USED_FLUSH_INTERVAL: "50ms",
    });
    admin = sut.bootstrapToken!;
    grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
  });

  afterAll(async () => {
    grpc?.close();
    await sut?.service.stop();
    await db?.drop();
  });

  const now = () => Math.floor(Date.now() / 1000);

  it("answers a legacy JWT over gRPC with the deprecation notice in the message and in the metadata", async () => {
    const jwt = await new SignJWT({ sub: "old@example.com", iss: "legacy-auth", jti: "j-1", env: "dev", scopes: ["orders.read"], exp: now() + 600 })
      .setProtectedHeader({ alg: "HS256" })
      .sign(new TextEncoder().encode(SECRET));
    const md = new grpcJs.Metadata();
    md.set("authorization", `Bearer ${admin}`);
    const { answer, headers } = await new Promise<{ answer: IntrospectTokenResponse; headers: grpcJs.Metadata }>((resolve, reject) => {
      let headers = new grpcJs.Metadata();
      const call = (grpc.client as unknown as Record<string, (...a: unknown[]) => grpcJs.ClientUnaryCall>).introspectToken!.call(grpc.client, { token: jwt }, md, (err: Error | null, res: IntrospectTokenResponse) => (err ? reject(err) : resolve({ answer: res, headers })));
      call.on("metadata", (m: grpcJs.Metadata) => (headers = m));
    });
    expect(answer).toMatchObject({ active: true, tokenKind: TokenKind.LEGACY_JWT, tokenType: "Bearer", sub: "old@example.com", jti: "j-1", deprecation: { notice: "JWT tokens are deprecated. Please migrate to API tokens." } });
    expect(headers.get("x-auth-deprecation")).toEqual(["JWT tokens are deprecated. Please migrate to API tokens."]);
    expect(headers.get("sunset")).toEqual(["Thu, 01 Jan 2099 00:00:00 GMT"]);
    expect(String(headers.get("link")[0])).toContain("rel=\"deprecation\"");
  });

  it("accepts RS256 legacy JWTs from the PEM key and records per-subject usage", async () => {
    const jwt = await new SignJWT({ sub: "rsa-user@example.com", iss: "legacy-auth", jti: "r-1", exp: now() + 600 }).setProtectedHeader({ alg: "RS256" }).sign(rsa.privateKey);
    for (let i = 0; i < 3; i++) expect((await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: jwt }, auth())).active).toBe(true);
    await expect
      .poll(async () => (await grpc.unary<ListLegacyJwtUsageResponse>("listLegacyJwtUsage", {}, auth())).usage.find((u) => u.subject === "rsa-user@example.com")?.introspectionCount, { timeout: 5000 })
      .toBe(3n);
  });

  it("counts only successful introspections in ListLegacyJwtUsage, not a legacy JWT refused as a caller's credential", async () => {
    const sign = (sub: string) => new SignJWT({ sub, iss: "legacy-auth", jti: `${sub}-1`, env: "development", exp: now() + 600 }).setProtectedHeader({ alg: "HS256" }).sign(new TextEncoder().encode(SECRET));
    const refused = await sign("caller-only@example.com");
    // As an OAuth client (Bearer and Basic, the client-auth path) and as an RPC caller: all refused.
    for (const authorization of [`Bearer ${refused}`, `Basic ${Buffer.from(`00000000-0000-4000-8000-000000000000:${refused}`).toString("base64")}`]) {
      const res = await fetch(`http://127.0.0.1:${sut.service.httpPort}/oauth2/introspect`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", authorization },
        body: new URLSearchParams({ token: refused }).toString(),
      });
      expect(res.status).toBe(401);
    }
    await expect(grpc.unary("listTokens", {}, { authorization: `Bearer ${refused}` })).rejects.toMatchObject({ code: grpcJs.status.UNAUTHENTICATED });
    // A successful introspection noted after them: once it is listed, anything noted before has been written too.
    expect((await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: await sign("sentinel@example.com") }, auth())).active).toBe(true);
    let usage: ListLegacyJwtUsageResponse["usage"] = [];
    await expect
      .poll(async () => (usage = (await grpc.unary<ListLegacyJwtUsageResponse>("listLegacyJwtUsage", {}, auth())).usage).some((u) => u.subject === "sentinel@example.com"), { timeout: 5000 })
      .toBe(true);
    expect(usage.map((u) => u.subject)).not.toContain("caller-only@example.com");
  });

  it("mints a backend JWT that verifies against the published JWKS, and stops after revocation", async () => {
    const issued = await grpc.unary<IssueTokenResponse>("issueToken", { name: "svc", subject: "svc@example.com", scopes: ["orders.read"], teams: ["edge"] }, auth());
    const answer = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: issued.token, includeBackendJwt: true }, auth());
    expect(answer.backendJwt).not.toBe("");
    const again = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: issued.token, includeBackendJwt: true }, auth());
    expect(again.backendJwt).toBe(answer.backendJwt); // minted once, reused while valid
    expect((await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: issued.token }, auth())).backendJwt).toBe("");

    const jwks = (await (await fetch(`http://127.0.0.1:${sut.service.httpPort}/.well-known/jwks.json`)).json()) as JSONWebKeySet;
    const { payload, protectedHeader } = await jwtVerify(answer.backendJwt, createLocalJWKSet(jwks), { issuer: "cf-token-service", typ: "at+jwt" });
    expect(protectedHeader).toMatchObject({ alg: "ES256", typ: "at+jwt" });
    expect(payload).toMatchObject({ sub: "svc@example.com", token_id: issued.info!.id, scope: "orders.read", teams: ["edge"], env: "development" });
    expect(payload.exp! - payload.iat!).toBe(300);
    const viaRpc = await grpc.unary<GetJwksResponse>("getJwks", {}, auth());
    expect(JSON.parse(viaRpc.jwksJson)).toEqual(jwks);

    // RFC 8725 §3.11, RFC 9068 §2.1: typed `at+jwt`, so an RFC 9701 answer signed by the same
    // keys is refused where a backend JWT is expected, and a backend JWT where an answer is.
    const signedAnswer = await (
      await fetch(`http://127.0.0.1:${sut.service.httpPort}/oauth2/introspect`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/token-introspection+jwt", authorization: `Bearer ${admin}` },
        body: new URLSearchParams({ token: issued.token }).toString(),
      })
    ).text();
    expect((await jwtVerify(signedAnswer, createLocalJWKSet(jwks), { typ: "token-introspection+jwt" })).payload.token_introspection).toMatchObject({ active: true, token_type: "Bearer", token_kind: "opaque" });
    await expect(jwtVerify(signedAnswer, createLocalJWKSet(jwks), { typ: "at+jwt" })).rejects.toMatchObject({ code: "ERR_JWT_CLAIM_VALIDATION_FAILED", claim: "typ" });
    await expect(jwtVerify(answer.backendJwt, createLocalJWKSet(jwks), { typ: "token-introspection+jwt" })).rejects.toMatchObject({ code: "ERR_JWT_CLAIM_VALIDATION_FAILED", claim: "typ" });

    await grpc.unary("revokeToken", { target: { case: "token", value: issued.token } }, auth());
    const revoked = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: issued.token, includeBackendJwt: true }, auth());
    expect(revoked).toMatchObject({ active: false, reason: InactiveReason.REVOKED, backendJwt: "" });
    expect(sut.logs.raw.join("\n")).not.toContain(answer.backendJwt);
  });
});
