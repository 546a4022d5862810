import { describe, expect, it } from "vitest";
import { authenticate } from "../../src/domain/access.js";
import { bootstrapAdmin, issueToken, type IssueInput } from "../../src/domain/issue.js";
import { listSecurityEvents, listTokens } from "../../src/domain/list.js";
import { revokeToken } from "../../src/domain/revoke.js";
import { mintToken } from "../../src/domain/token-format.js";
import { fakeDeps } from "../support/fakes.js";

const meta = { method: "/tokens.v1.TokenService/RevokeToken" };
const base: IssueInput = { name: "t", scopes: [], teams: [], namespaces: [], metadata: {}, subject: "", fullName: "", isAdmin: false };

async function setup() {
  const f = fakeDeps({ maxActiveTokensPerSubject: 1000 });
  const boot = await bootstrapAdmin(f.deps, "admin@example.com", "cli");
  const admin = await authenticate(f.deps, `Bearer ${boot.token}`, meta);
  const a = await issueToken(f.deps, admin, { ...base, subject: "alice@example.com", scopes: ["tokens.revoke", "tokens.read"], teams: ["red"] }, meta);
  const alice = await authenticate(f.deps, `Bearer ${a.token}`, meta);
  const b = await issueToken(f.deps, admin, { ...base, subject: "bob@example.com", teams: ["blue"] }, meta);
  return { ...f, admin, alice, aliceToken: a, bobToken: b };
}

const all = { subject: "", team: "", includeRevoked: false, includeExpired: false, pageSize: 0, pageToken: "" };

describe("revocation", () => {
  it("revokes by value, then succeeds again as already revoked", async () => {
    const s = await setup();
    const first = await revokeToken(s.deps, s.admin, { token: s.bobToken.token, reason: "leaked" }, meta);
    expect(first).toMatchObject({ alreadyRevoked: false, record: { id: s.bobToken.record.id, revokeReason: "leaked", revokedBy: "admin@example.com" } });
    const second = await revokeToken(s.deps, s.admin, { token: s.bobToken.token, reason: "again" }, meta);
    expect(second).toMatchObject({ alreadyRevoked: true, record: { revokeReason: "leaked" } });
    expect(s.events.events.filter((e) => e.type === "token_revoked")).toHaveLength(1);
  });

  it("succeeds silently for unknown and malformed values (RFC 7009 §2.2)", async () => {
    const s = await setup();
    expect(await revokeToken(s.deps, s.alice, { token: mintToken("development").token, reason: "" }, meta)).toEqual({ alreadyRevoked: false });
    expect(await revokeToken(s.deps, s.alice, { token: "garbage", reason: "" }, meta)).toEqual({ alreadyRevoked: false });
  });

  it("lets anyone holding a token value revoke it, but shows its metadata only to owner or admin", async () => {
    const s = await setup();
    const result = await revokeToken(s.deps, s.alice, { token: s.bobToken.token, reason: "found in a log" }, meta);
    expect(result).toEqual({ alreadyRevoked: false });
    expect(s.store.rows.get(s.bobToken.record.id)?.revokedAt).not.toBeNull();
  });

  it("by id: not_found for unknown ids, permission_denied for another subject's token, invalid_argument for a non-UUID", async () => {
    const s = await setup();
    await expect(revokeToken(s.deps, s.alice, { tokenId: "00000000-0000-4000-8000-000000000000", reason: "" }, meta)).rejects.toMatchObject({ code: "not_found" });
    await expect(revokeToken(s.deps, s.alice, { tokenId: s.bobToken.record.id, reason: "" }, meta)).rejects.toMatchObject({ code: "permission_denied" });
    await expect(revokeToken(s.deps, s.alice, { tokenId: "nope", reason: "" }, meta)).rejects.toMatchObject({ code: "invalid_argument", message: "token_id: must be a UUID" });
    expect(s.store.rows.get(s.bobToken.record.id)?.revokedAt).toBeNull();
    const own = await revokeToken(s.deps, s.alice, { tokenId: s.aliceToken.record.id, reason: "" }, meta);
    expect(own.record?.id).toBe(s.aliceToken.record.id);
  });

  it("raises an environment event when asked to revoke a foreign token", async () => {
    const s = await setup();
    expect(await revokeToken(s.deps, s.alice, { token: mintToken("staging").token, reason: "" }, meta)).toEqual({ alreadyRevoked: false });
    expect(s.events.events.at(-1)).toMatchObject({ type: "environment_mismatch", tokenEnvironment: "staging" });
  });
});

describe("listing", () => {
  it("shows non-admins only their own tokens and denies asking for others", async () => {
    const s = await setup();
    const page = await listTokens(s.deps, s.alice, all, meta);
    expect(page.items.map((r) => r.subject)).toEqual(["alice@example.com"]);
    await expect(listTokens(s.deps, s.alice, { ...all, subject: "bob@example.com" }, meta)).rejects.toMatchObject({ code: "permission_denied" });
  });

  it("pages newest first with tokens bound to their filters", async () => {
    const s = await setup();
    for (let i = 0; i < 5; i++) {
      s.clock.advance(1000);
      await issueToken(s.deps, s.admin, { ...base, name: `n${i}`, subject: "carol@example.com" }, meta);
    }
    const filter = { ...all, subject: "carol@example.com", pageSize: 2 };
    const names: string[] = [];
    let pageToken = "";
    do {
      const page = await listTokens(s.deps, s.admin, { ...filter, pageToken }, meta);
      names.push(...page.items.map((r) => r.name));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    expect(names).toEqual(["n4", "n3", "n2", "n1", "n0"]);
    const first = await listTokens(s.deps, s.admin, filter, meta);
    await expect(listTokens(s.deps, s.admin, { ...filter, team: "red", pageToken: first.nextPageToken }, meta)).rejects.toMatchObject({ code: "invalid_argument", message: expect.stringContaining("page_token: was made for other filters") });
    await expect(listTokens(s.deps, s.admin, { ...filter, pageToken: "bm9wZQ" }, meta)).rejects.toMatchObject({ code: "invalid_argument", message: "page_token: is not a page token from this service" });
    await expect(listTokens(s.deps, s.admin, { ...filter, pageSize: 501 }, meta)).rejects.toMatchObject({ code: "invalid_argument", message: "page_size: must be between 1 and 500 (0 means 50)" });
  });

  it("lists security events for admins only", async () => {
    const s = await setup();
    await expect(listSecurityEvents(s.deps, s.alice, { type: "", pageSize: 0, pageToken: "" }, meta)).rejects.toMatchObject({ code: "permission_denied" });
    await expect(listSecurityEvents(s.deps, s.admin, { type: "", pageSize: 0, pageToken: "" }, meta)).resolves.toMatchObject({ nextPageToken: "" });
  });
});
