import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { beforeEach, describe, expect, it } from "vitest";
import { IssueTokenRequestSchema, TokenService } from "../../gen/tokens/v1/token_service_pb.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { TokenServiceHandler } from "../../src/rpc/token-service.js";
import { fakeDeps } from "../support/fakes.js";

/**
 * The reported cases where bad input answered INTERNAL or an error repeated
 * what was sent, each pinned as an example; the properties in this folder
 * search the space around them.
 */
function setup() {
  const f = fakeDeps();
  const transport = createRouterTransport(({ service }) => service(TokenService, new TokenServiceHandler(f.deps)));
  const client: Client<typeof TokenService> = createClient(TokenService, transport);
  return { ...f, client };
}

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

async function failure(promise: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await promise;
  } catch (error) {
    const e = ConnectError.from(error);
    return { code: e.code, message: e.rawMessage };
  }
  throw new Error("expected the call to fail");
}

describe("every Duration, Timestamp, page size and page token has a range", () => {
  let s: ReturnType<typeof setup>;
  let admin: string;
  beforeEach(async () => {
    s = setup();
    admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
  });

  it.each([
    ["9e12 s", { seconds: 9_000_000_000_000n, nanos: 0 }],
    ["5.8e18 s", { seconds: 5_800_000_000_000_000_000n, nanos: 0 }],
    ["int64 max", { seconds: 9_223_372_036_854_775_807n, nanos: 999_999_999 }],
    ["int64 min", { seconds: -9_223_372_036_854_775_808n, nanos: 0 }],
    ["-5 ms", { seconds: 0n, nanos: -5_000_000 }],
    ["0", { seconds: 0n, nanos: 0 }],
    ["half a second", { seconds: 0n, nanos: 500_000_000 }],
    ["mixed signs", { seconds: 10n, nanos: -1 }],
    ["nanos out of range", { seconds: 10n, nanos: 2_000_000_000 }],
    ["366 days", { seconds: 366n * 86_400n, nanos: 0 }],
  ])("IssueToken ttl %s: INVALID_ARGUMENT naming ttl, nothing written", async (_label, ttl) => {
    const before = s.store.rows.size;
    const req = create(IssueTokenRequestSchema, { name: "x", expiry: { case: "ttl", value: ttl } });
    expect(await failure(s.client.issueToken(req, as(admin)))).toEqual({ code: Code.InvalidArgument, message: "ttl: must be between 1s and 365d" });
    expect(s.store.rows.size).toBe(before);
  });

  it.each([
    ["int64 max", { seconds: 9_223_372_036_854_775_807n, nanos: 0 }],
    ["past protobuf's year 9999", { seconds: 253_402_300_800n, nanos: 0 }],
    ["nanos out of range", { seconds: 1_900_000_000n, nanos: -1 }],
    ["in the past", { seconds: 1n, nanos: 0 }],
    ["a year and a day ahead", { seconds: BigInt(Math.floor(Date.parse("2027-11-23T12:00:00Z") / 1000)), nanos: 0 }],
  ])("IssueToken expire_time %s: INVALID_ARGUMENT naming expire_time, nothing written", async (_label, at) => {
    const before = s.store.rows.size;
    const req = create(IssueTokenRequestSchema, { name: "x", expiry: { case: "expireTime", value: at } });
    const { code, message } = await failure(s.client.issueToken(req, as(admin)));
    expect(code).toBe(Code.InvalidArgument);
    expect(message).toMatch(/^expire_time: /);
    expect(s.store.rows.size).toBe(before);
  });

  it.each([
    ["int64 min", { seconds: -9_223_372_036_854_775_808n, nanos: 0 }],
    ["-9.2e18", { seconds: -9_200_000_000_000_000_000n, nanos: 0 }],
    ["int64 max", { seconds: 9_223_372_036_854_775_807n, nanos: 0 }],
    ["before year 1", { seconds: -62_135_596_801n, nanos: 0 }],
    ["negative nanos", { seconds: 0n, nanos: -1 }],
  ])("ListSecurityEvents since %s: INVALID_ARGUMENT naming since", async (_label, since) => {
    expect(await failure(s.client.listSecurityEvents({ since }, as(admin)))).toEqual({
      code: Code.InvalidArgument,
      message: "since: must be a valid time between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
    });
  });

  it("WatchRevocations heartbeat_interval at int64 edges: INVALID_ARGUMENT naming the field", async () => {
    for (const seconds of [9_223_372_036_854_775_807n, -9_223_372_036_854_775_808n]) {
      const stream = s.client.watchRevocations({ heartbeatInterval: { seconds, nanos: 0 } }, as(admin));
      const { code, message } = await failure((async () => { for await (const _ of stream) break; })());
      expect(code).toBe(Code.InvalidArgument);
      expect(message).toMatch(/^heartbeat_interval: must be between /);
    }
  });

  it.each([
    ["t=1e300", { v: 1, t: 1e300, i: "00000000-0000-4000-8000-000000000000", f: "x" }],
    ["t=-1e300", { v: 1, t: -1e300, i: "00000000-0000-4000-8000-000000000000", f: "x" }],
    ["t=8.7e15", { v: 1, t: 8.7e15, i: "00000000-0000-4000-8000-000000000000", f: "x" }],
  ])("a forged page token (%s) is refused cleanly on every list", async (_label, body) => {
    const pageToken = Buffer.from(JSON.stringify(body)).toString("base64url");
    const expected = { code: Code.InvalidArgument, message: "page_token: is not a page token from this service" };
    expect(await failure(s.client.listTokens({ pageToken }, as(admin)))).toEqual(expected);
    expect(await failure(s.client.listSecurityEvents({ pageToken }, as(admin)))).toEqual(expected);
    expect(await failure(s.client.listLegacyJwtUsage({ pageToken }, as(admin)))).toEqual(expected);
  });

  it("a page token with its body altered is refused, and a real one still works", async () => {
    for (let i = 0; i < 3; i++) await s.client.issueToken({ name: `t${i}` }, as(admin));
    const first = await s.client.listTokens({ pageSize: 1 }, as(admin));
    expect(first.nextPageToken).not.toBe("");
    const second = await s.client.listTokens({ pageSize: 1, pageToken: first.nextPageToken }, as(admin));
    expect(second.tokens).toHaveLength(1);
    const [body, mac] = first.nextPageToken.split(".");
    const parsed = JSON.parse(Buffer.from(body!, "base64url").toString("utf8")) as Record<string, unknown>;
    const altered = `${Buffer.from(JSON.stringify({ ...parsed, t: 0 })).toString("base64url")}.${mac}`;
    expect(await failure(s.client.listTokens({ pageSize: 1, pageToken: altered }, as(admin)))).toEqual({
      code: Code.InvalidArgument,
      message: "page_token: is not a page token from this service",
    });
  });

  it.each([-1, 501, 2_147_483_647, -2_147_483_648])("page_size %i is INVALID_ARGUMENT naming page_size on every list", async (pageSize) => {
    for (const call of [s.client.listTokens({ pageSize }, as(admin)), s.client.listSecurityEvents({ pageSize }, as(admin)), s.client.listLegacyJwtUsage({ pageSize }, as(admin))]) {
      expect(await failure(call)).toEqual({ code: Code.InvalidArgument, message: "page_size: must be between 1 and 500 (0 means 50)" });
    }
  });
});

describe("errors never repeat what was sent", () => {
  let s: ReturnType<typeof setup>;
  let admin: string;
  beforeEach(async () => {
    s = setup();
    admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
  });

  it("a metadata value too long is named by its entry's index, not its key", async () => {
    const key = `cfprd-${"A".repeat(22)}`;
    const { code, message } = await failure(s.client.issueToken({ name: "x", metadata: { a: "1", [key]: "v".repeat(513) } }, as(admin)));
    expect(code).toBe(Code.InvalidArgument);
    expect(message).toBe("metadata[1]: values must be at most 512 characters (entries counted in key order from 0)");
    expect(message).not.toContain("AAAA");
  });

  it("a bad metadata key is named by its entry's index", async () => {
    const key = `cfprd-${"B".repeat(22)} bad`;
    const { message } = await failure(s.client.issueToken({ name: "x", metadata: { [key]: "v" } }, as(admin)));
    expect(message).toBe("metadata[0]: keys must be 1 to 64 letters, digits or ._- (entries counted in key order from 0)");
  });

  it("scopes a non-admin does not hold are counted, not listed", async () => {
    const own = await s.client.issueToken({ name: "mine", scopes: ["tokens.create"], subject: "bob@example.com" }, as(admin));
    const { code, message } = await failure(s.client.issueToken({ name: "x", scopes: ["tokens.create", "secret-scope-name"] }, as(own.token)));
    expect(code).toBe(Code.PermissionDenied);
    expect(message).not.toContain("secret-scope");
  });

  it("an unknown token_id is not repeated", async () => {
    const id = "0e5e2a54-6a1f-4a57-9d38-2f0f3c9e4b11";
    const { code, message } = await failure(s.client.revokeToken({ target: { case: "tokenId", value: id } }, as(admin)));
    expect(code).toBe(Code.NotFound);
    expect(message).not.toContain("0e5e2a54");
  });
});
