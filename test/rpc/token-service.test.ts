import { create, toJsonString } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { beforeEach, describe, expect, it } from "vitest";
import {
  Environment,
  InactiveReason,
  IssueTokenRequestSchema,
  Severity,
  TokenKind,
  TokenService,
  TokenState,
  TokenInfoSchema,
} from "../../gen/tokens/v1/token_service_pb.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { mintToken } from "../../src/domain/token-format.js";
import { TokenServiceHandler } from "../../src/rpc/token-service.js";
import { fakeDeps } from "../support/fakes.js";

/**
 * The real service implementation behind Connect's in-memory transport: the
 * whole RPC edge (auth, validation, mapping, error table) without sockets.
 */
function setup() {
  const f = fakeDeps({ maxActiveTokensPerSubject: 3 });
  const transport = createRouterTransport(({ service }) => service(TokenService, new TokenServiceHandler(f.deps)));
  const client: Client<typeof TokenService> = createClient(TokenService, transport);
  return { ...f, client };
}

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

async function code(promise: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await promise;
  } catch (error) {
    const e = ConnectError.from(error);
    return { code: e.code, message: e.rawMessage };
  }
  throw new Error("expected the call to fail");
}

describe("TokenService over an in-memory transport", () => {
  let s: ReturnType<typeof setup>;
  let admin: string;
  beforeEach(async () => {
    s = setup();
    admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
  });

  describe("IssueToken", () => {
    it("returns the token once with its metadata, never its digest", async () => {
      const res = await s.client.issueToken(
        { name: "ci", scopes: ["orders.read"], teams: ["red"], namespaces: ["ns"], metadata: { pipeline: "42" }, subject: "bob@example.com", expiry: { case: "ttl", value: durationFromMs(3_600_000) } },
        as(admin),
      );
      expect(res.token).toMatch(/^cf-[0-9A-Za-z]{22}$/);
      expect(res.info).toMatchObject({ name: "ci", subject: "bob@example.com", scopes: ["orders.read"], teams: ["red"], namespaces: ["ns"], metadata: { pipeline: "42" }, environment: Environment.DEVELOPMENT, state: TokenState.ACTIVE, createdBy: "admin@example.com", displayHint: `cf-…${res.token.slice(-4)}` });
      expect(res.info?.expireTime).toEqual(timestampFromDate(new Date(s.clock.now().getTime() + 3_600_000)));
      expect(toJsonString(TokenInfoSchema, res.info!)).not.toContain(res.token.slice(3));
    });

    it("accepts an absolute expiry", async () => {
      const at = new Date(s.clock.now().getTime() + 86_400_000);
      const res = await s.client.issueToken({ name: "x", expiry: { case: "expireTime", value: timestampFromDate(at) } }, as(admin));
      expect(res.info?.expireTime).toEqual(timestampFromDate(at));
    });

    it.each([
      [{ name: "" }, "name: is required"],
      [{ name: "ok", expiry: { case: "ttl" as const, value: durationFromMs(-5) } }, "ttl: must be between 1s and 365d"],
      [{ name: "ok", scopes: ["a b"] }, 'scopes[0]: must be 1 to 128 printable ASCII characters without space, " or \\ (RFC 6749 §3.3)'],
    ])("answers INVALID_ARGUMENT (%#) and writes nothing", async (req, message) => {
      const before = s.store.rows.size;
      expect(await code(s.client.issueToken(create(IssueTokenRequestSchema, req), as(admin)))).toEqual({ code: Code.InvalidArgument, message });
      expect(s.store.rows.size).toBe(before);
    });

    it("answers RESOURCE_EXHAUSTED at the per-subject cap", async () => {
      for (let i = 0; i < 3; i++) await s.client.issueToken({ name: `t${i}`, subject: "c@example.com" }, as(admin));
      expect((await code(s.client.issueToken({ name: "t4", subject: "c@example.com" }, as(admin)))).code).toBe(Code.ResourceExhausted);
    });
  });

  describe("caller authentication and permissions", () => {
    it("answers UNAUTHENTICATED without credentials or with a bad one", async () => {
      expect(await code(s.client.listTokens({}))).toEqual({ code: Code.Unauthenticated, message: "missing credentials: send `Authorization: Bearer <token>` with a token issued by this service" });
      expect((await code(s.client.listTokens({}, as(mintToken("development").token)))).message).toBe("caller credential refused: The token is not recognised.");
    });

    it("answers PERMISSION_DENIED for a scope the caller lacks, on every RPC", async () => {
      const { token } = await s.client.issueToken({ name: "nothing", subject: "n@example.com" }, as(admin));
      for (const call of [
        s.client.issueToken({ name: "x" }, as(token)),
        s.client.introspectToken({ token: admin }, as(token)),
        s.client.revokeToken({ target: { case: "token", value: admin } }, as(token)),
        s.client.listTokens({}, as(token)),
        s.client.listSecurityEvents({}, as(token)),
      ]) {
        expect((await code(call)).code).toBe(Code.PermissionDenied);
      }
    });
  });

  describe("IntrospectToken", () => {
    it("answers active with RFC 7662 claims plus ours", async () => {
      const issued = await s.client.issueToken({ name: "gw", subject: "bob@example.com", fullName: "Bob", scopes: ["a", "b"], teams: ["red"], isAdmin: false }, as(admin));
      const res = await s.client.introspectToken({ token: issued.token, tokenTypeHint: "access_token" }, as(admin));
      const iat = BigInt(Math.floor(s.clock.now().getTime() / 1000));
      expect(res).toMatchObject({
        active: true, scope: "a b", scopes: ["a", "b"], sub: "bob@example.com", username: "bob@example.com", clientId: issued.info!.id, jti: issued.info!.id,
        tokenType: "Bearer", iss: "test-issuer", aud: ["gateway"], iat, nbf: iat, exp: iat + 30n * 86_400n,
        teams: ["red"], isAdmin: false, environment: Environment.DEVELOPMENT, tokenName: "gw", fullName: "Bob", tokenKind: TokenKind.OPAQUE, reason: InactiveReason.UNSPECIFIED, message: "",
      });
    });

    it("answers inactive with a reason and no claims at all", async () => {
      const res = await s.client.introspectToken({ token: mintToken("production").token }, as(admin));
      expect(res).toMatchObject({ active: false, reason: InactiveReason.ENVIRONMENT_MISMATCH, message: "Token environment mismatch: production token used in development", sub: "", scope: "", scopes: [], jti: "", exp: 0n, tokenKind: TokenKind.UNSPECIFIED });
      expect((await s.client.introspectToken({ token: "junk" }, as(admin))).reason).toBe(InactiveReason.MALFORMED);
    });

    it("refuses empty and oversized tokens before any work", async () => {
      expect(await code(s.client.introspectToken({ token: "" }, as(admin)))).toEqual({ code: Code.InvalidArgument, message: "token: is required" });
      expect(await code(s.client.introspectToken({ token: "x".repeat(4097) }, as(admin)))).toEqual({ code: Code.InvalidArgument, message: "token: must be at most 4096 characters" });
    });

    it("answers UNAVAILABLE when the store is down, never inactive", async () => {
      const token = mintToken("development").token;
      s.store.down = true;
      expect((await code(s.client.introspectToken({ token }, as(admin)))).code).toBe(Code.Unavailable);
    });

    it("answers INTERNAL with no internals when something unexpected fails", async () => {
      s.store.findByDigest = async () => {
        throw new Error("relation \"tokens\" does not exist at 10.1.2.3");
      };
      expect(await code(s.client.introspectToken({ token: admin }, as(admin)))).toEqual({ code: Code.Internal, message: "internal error" });
      expect(s.log.lines.some((l) => l.level === "error")).toBe(true);
    });
  });

  describe("RevokeToken and ListTokens", () => {
    it("revokes, is idempotent, and lists with state", async () => {
      const issued = await s.client.issueToken({ name: "r", subject: "bob@example.com" }, as(admin));
      const first = await s.client.revokeToken({ target: { case: "tokenId", value: issued.info!.id }, reason: "rotation" }, as(admin));
      expect(first).toMatchObject({ alreadyRevoked: false, info: { state: TokenState.REVOKED, revokeReason: "rotation" } });
      expect((await s.client.revokeToken({ target: { case: "token", value: issued.token } }, as(admin))).alreadyRevoked).toBe(true);
      const unknown = await s.client.revokeToken({ target: { case: "token", value: mintToken("development").token } }, as(admin));
      expect(unknown.alreadyRevoked).toBe(false);
      expect(unknown.info).toBeUndefined();
      expect(await code(s.client.revokeToken({ target: { case: "tokenId", value: "00000000-0000-4000-8000-000000000000" } }, as(admin)))).toEqual({ code: Code.NotFound, message: "token_id: no such token" });
      expect(await code(s.client.revokeToken({}, as(admin)))).toEqual({ code: Code.InvalidArgument, message: "target: set one of token, token_id or legacy_jti" });

      const active = await s.client.listTokens({ subject: "bob@example.com" }, as(admin));
      expect(active.tokens).toHaveLength(0);
      const all = await s.client.listTokens({ subject: "bob@example.com", includeRevoked: true }, as(admin));
      expect(all.tokens.map((t) => [t.name, t.state])).toEqual([["r", TokenState.REVOKED]]);
    });

    it("cascades down issuer links, shows the issuer in TokenInfo and lists by it", async () => {
      const parent = await s.client.issueToken({ name: "parent", subject: "p@example.com", scopes: ["tokens.create", "tokens.read", "tokens.revoke"] }, as(admin));
      const child = await s.client.issueToken({ name: "child", scopes: ["tokens.create"] }, as(parent.token));
      const grandchild = await s.client.issueToken({ name: "grandchild" }, as(child.token));
      expect(child.info?.issuedByTokenId).toBe(parent.info!.id);
      expect(grandchild.info?.issuedByTokenId).toBe(child.info!.id);
      expect(parent.info?.issuedByTokenId).not.toBe("");

      const listed = await s.client.listTokens({ issuedByTokenId: parent.info!.id }, as(parent.token));
      expect(listed.tokens.map((t) => t.name)).toEqual(["child"]);
      expect(await code(s.client.listTokens({ issuedByTokenId: "x" }, as(admin)))).toEqual({ code: Code.InvalidArgument, message: "issued_by_token_id: must be a UUID" });

      const res = await s.client.revokeToken({ target: { case: "token", value: parent.token }, cascade: true, reason: "leaked" }, as(parent.token));
      expect(res).toMatchObject({ alreadyRevoked: false, revokedCount: 3, info: { id: parent.info!.id, state: TokenState.REVOKED } });
      for (const t of [child, grandchild]) expect((await s.client.introspectToken({ token: t.token }, as(admin))).reason).toBe(InactiveReason.REVOKED);
      const plain = await s.client.issueToken({ name: "plain", subject: "p@example.com" }, as(admin));
      expect((await s.client.revokeToken({ target: { case: "tokenId", value: plain.info!.id } }, as(admin))).revokedCount).toBe(1);
    });

    it("answers another subject's id exactly like an unknown id", async () => {
      const mine = await s.client.issueToken({ name: "mine", subject: "m@example.com", scopes: ["tokens.revoke"] }, as(admin));
      const theirs = await s.client.issueToken({ name: "theirs", subject: "t@example.com" }, as(admin));
      const unknownId = "00000000-0000-4000-8000-000000000000";
      const foreign = await code(s.client.revokeToken({ target: { case: "tokenId", value: theirs.info!.id } }, as(mine.token)));
      const unknown = await code(s.client.revokeToken({ target: { case: "tokenId", value: unknownId } }, as(mine.token)));
      expect(foreign).toEqual({ code: Code.NotFound, message: "token_id: no such token" });
      expect(unknown).toEqual({ code: Code.NotFound, message: "token_id: no such token" });
    });

    it("answers PERMISSION_DENIED for metadata keys a non-admin may not set, by index", async () => {
      const user = await s.client.issueToken({ name: "u", subject: "u@example.com", scopes: ["tokens.create"] }, as(admin));
      expect(await code(s.client.issueToken({ name: "x", metadata: { tenant: "acme" } }, as(user.token)))).toEqual({
        code: Code.PermissionDenied,
        message: "metadata[0]: this key may be set by admins only; an admin may allow it for everyone (TOKEN_METADATA_ALLOWED_KEYS). Entries are counted in key order",
      });
    });

    it("lists security events, folded and filtered", async () => {
      for (let i = 0; i < 3; i++) await s.client.introspectToken({ token: mintToken("staging").token }, as(admin));
      const res = await s.client.listSecurityEvents({ minSeverity: Severity.CRITICAL }, as(admin));
      expect(res.events.every((e) => e.severity === Severity.CRITICAL && e.type === "environment_mismatch")).toBe(true);
    });
  });
});
