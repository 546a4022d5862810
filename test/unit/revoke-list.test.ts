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
    expect(await revokeToken(s.deps, s.alice, { token: mintToken("development").token, reason: "" }, meta)).toEqual({ alreadyRevoked: false, revokedCount: 0 });
    expect(await revokeToken(s.deps, s.alice, { token: "garbage", reason: "" }, meta)).toEqual({ alreadyRevoked: false, revokedCount: 0 });
  });

  it("lets anyone holding a token value revoke it, but shows its metadata only to owner or admin", async () => {
    const s = await setup();
    const result = await revokeToken(s.deps, s.alice, { token: s.bobToken.token, reason: "found in a log" }, meta);
    expect(result).toEqual({ alreadyRevoked: false, revokedCount: 1 });
    expect(s.store.rows.get(s.bobToken.record.id)?.revokedAt).not.toBeNull();
  });

  it("by id: not_found for unknown ids and for another subject's token alike, invalid_argument for a non-UUID", async () => {
    const s = await setup();
    await expect(revokeToken(s.deps, s.alice, { tokenId: "00000000-0000-4000-8000-000000000000", reason: "" }, meta)).rejects.toMatchObject({ code: "not_found" });
    await expect(revokeToken(s.deps, s.alice, { tokenId: s.bobToken.record.id, reason: "" }, meta)).rejects.toMatchObject({ code: "not_found" });
    await expect(revokeToken(s.deps, s.alice, { tokenId: "nope", reason: "" }, meta)).rejects.toMatchObject({ code: "invalid_argument", message: "token_id: must be a UUID" });
    expect(s.store.rows.get(s.bobToken.record.id)?.revokedAt).toBeNull();
    const own = await revokeToken(s.deps, s.alice, { tokenId: s.aliceToken.record.id, reason: "" }, meta);
    expect(own.record?.id).toBe(s.aliceToken.record.id);
  });

  it("raises an environment event when asked to revoke a foreign token", async () => {
    const s = await setup();
    expect(await revokeToken(s.deps, s.alice, { token: mintToken("staging").token, reason: "" }, meta)).toEqual({ alreadyRevoked: false, revokedCount: 0 });
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

describe("revoking another subject's token by id cannot probe ids", () => {
  it("answers exactly as for an unknown id: same code, same message shape, same event type and severity", async () => {
    const s = await setup();
    const unknownId = "00000000-0000-4000-8000-000000000000";
    const outcome = async (tokenId: string) => {
      const before = s.events.events.length;
      const error = await revokeToken(s.deps, s.alice, { tokenId, reason: "" }, meta).then(
        () => undefined,
        (e: { code: string; message: string }) => e,
      );
      const events = s.events.events.slice(before).map((e) => ({ type: e.type, severity: e.severity }));
      return { code: error?.code, message: error?.message.replace(tokenId, "<id>"), events };
    };
    const foreign = await outcome(s.bobToken.record.id);
    const unknown = await outcome(unknownId);
    expect(foreign).toEqual(unknown);
    expect(foreign).toEqual({ code: "not_found", message: "token_id: no such token", events: [{ type: "permission_denied", severity: "warning" }] });
    expect(s.store.rows.get(s.bobToken.record.id)?.revokedAt).toBeNull();
    // Admins keep their power, and the other subject's own token still works on itself.
    await expect(revokeToken(s.deps, s.admin, { tokenId: s.bobToken.record.id, reason: "" }, meta)).resolves.toMatchObject({ revokedCount: 1 });
  });
});

describe("cascading revocation", () => {
  /** admin → alice (root) → two children → a grandchild under the first; plus an unrelated sibling of alice's. */
  async function family() {
    const s = await setup();
    const rootIssued = await issueToken(s.deps, s.admin, { ...base, name: "root", subject: "alice@example.com", scopes: ["tokens.create", "tokens.revoke", "tokens.read"] }, meta);
    const root = await authenticate(s.deps, `Bearer ${rootIssued.token}`, meta);
    const child1 = await issueToken(s.deps, root, { ...base, name: "child1", scopes: ["tokens.create", "tokens.revoke"] }, meta);
    const child2 = await issueToken(s.deps, root, { ...base, name: "child2" }, meta);
    const child1Caller = await authenticate(s.deps, `Bearer ${child1.token}`, meta);
    const grandchild = await issueToken(s.deps, child1Caller, { ...base, name: "grandchild" }, meta);
    const sibling = await issueToken(s.deps, s.alice, { ...base, name: "sibling" }, meta);
    return { ...s, rootIssued, root, child1, child2, grandchild, sibling };
  }

  it("records the issuing token's id on every token, and none for bootstrap", async () => {
    const s = await family();
    expect(s.child1.record.issuedByTokenId).toBe(s.rootIssued.record.id);
    expect(s.grandchild.record.issuedByTokenId).toBe(s.child1.record.id);
    expect(s.rootIssued.record.issuedByTokenId).toBe(s.admin.tokenId);
    expect(s.store.rows.get(s.admin.tokenId)?.issuedByTokenId).toBeNull();
  });

  it("revokes the token and every descendant, answers the count and raises one event with it", async () => {
    const s = await family();
    for (const t of [s.child2, s.grandchild]) await authenticate(s.deps, `Bearer ${t.token}`, meta); // cached now
    const before = s.events.events.length;
    const result = await revokeToken(s.deps, s.root, { token: s.rootIssued.token, reason: "leaked", cascade: true }, meta);
    expect(result).toMatchObject({ alreadyRevoked: false, revokedCount: 4, record: { id: s.rootIssued.record.id } });
    for (const t of [s.rootIssued, s.child1, s.child2, s.grandchild]) {
      expect(s.store.rows.get(t.record.id)).toMatchObject({ revokeReason: "leaked", revokedBy: "alice@example.com" });
      await expect(authenticate(s.deps, `Bearer ${t.token}`, meta)).rejects.toMatchObject({ code: "unauthenticated" });
    }
    expect(s.store.rows.get(s.sibling.record.id)?.revokedAt).toBeNull();
    expect(s.store.rows.get(s.alice.tokenId)?.revokedAt).toBeNull();
    const events = s.events.events.slice(before).filter((e) => e.type === "token_revoked");
    expect(events).toEqual([expect.objectContaining({ tokenId: s.rootIssued.record.id, message: "token and 3 descendants revoked (cascade, 4 in all): leaked" })]);
  });

  it("without cascade revokes only the token; a later cascade by id still reaches the descendants", async () => {
    const s = await family();
    expect(await revokeToken(s.deps, s.admin, { tokenId: s.rootIssued.record.id, reason: "" }, meta)).toMatchObject({ revokedCount: 1 });
    expect(s.store.rows.get(s.child1.record.id)?.revokedAt).toBeNull();
    const again = await revokeToken(s.deps, s.alice, { tokenId: s.rootIssued.record.id, reason: "", cascade: true }, meta);
    expect(again).toMatchObject({ alreadyRevoked: true, revokedCount: 3 });
    expect(s.events.events.at(-1)?.message).toBe("3 descendants of an already revoked token revoked (cascade)");
    expect(await revokeToken(s.deps, s.alice, { tokenId: s.rootIssued.record.id, reason: "", cascade: true }, meta)).toMatchObject({ alreadyRevoked: true, revokedCount: 0 });
  });

  it("by id needs the same permission as the token itself: another subject's root is not found, and nothing is revoked", async () => {
    const s = await family();
    const bob = await authenticate(s.deps, `Bearer ${s.bobToken.token}`, meta);
    const bobRevoker = await authenticate(
      s.deps,
      `Bearer ${(await issueToken(s.deps, s.admin, { ...base, subject: bob.subject, scopes: ["tokens.revoke"] }, meta)).token}`,
      meta,
    );
    await expect(revokeToken(s.deps, bobRevoker, { tokenId: s.rootIssued.record.id, reason: "", cascade: true }, meta)).rejects.toMatchObject({ code: "not_found" });
    for (const t of [s.rootIssued, s.child1, s.grandchild]) expect(s.store.rows.get(t.record.id)?.revokedAt).toBeNull();
  });

  it("refuses to store a child of a token revoked after its caller was authenticated", async () => {
    const s = await family();
    await revokeToken(s.deps, s.admin, { tokenId: s.rootIssued.record.id, reason: "", cascade: true }, meta);
    // `s.root` was authenticated before: as a replica's cache might still hold it.
    await expect(issueToken(s.deps, s.root, { ...base, name: "late" }, meta)).rejects.toMatchObject({ code: "unauthenticated" });
  });
});

describe("listing by issuer and by environment", () => {
  it("filters by the issuing token, validates the id, and binds page tokens to it", async () => {
    const s = await setup();
    const issuer = await authenticate(
      s.deps,
      `Bearer ${(await issueToken(s.deps, s.admin, { ...base, subject: "alice@example.com", scopes: ["tokens.create", "tokens.read"] }, meta)).token}`,
      meta,
    );
    for (let i = 0; i < 3; i++) {
      s.clock.advance(1000);
      await issueToken(s.deps, issuer, { ...base, name: `c${i}` }, meta);
    }
    const page = await listTokens(s.deps, s.admin, { ...all, issuedByTokenId: issuer.tokenId, pageSize: 2 }, meta);
    expect(page.items.map((r) => r.name)).toEqual(["c2", "c1"]);
    const rest = await listTokens(s.deps, s.admin, { ...all, issuedByTokenId: issuer.tokenId, pageSize: 2, pageToken: page.nextPageToken }, meta);
    expect(rest.items.map((r) => r.name)).toEqual(["c0"]);
    await expect(listTokens(s.deps, s.admin, { ...all, pageSize: 2, pageToken: page.nextPageToken }, meta)).rejects.toMatchObject({ message: expect.stringContaining("page_token: was made for other filters") });
    await expect(listTokens(s.deps, s.admin, { ...all, issuedByTokenId: "nope" }, meta)).rejects.toMatchObject({ code: "invalid_argument", message: "issued_by_token_id: must be a UUID" });
    // A non-admin filtering by issuer still sees only its own subject's tokens.
    const mine = await listTokens(s.deps, s.alice, { ...all, issuedByTokenId: s.admin.tokenId }, meta);
    expect(mine.items.map((r) => r.subject)).toEqual(["alice@example.com", "alice@example.com"]);
  });

  it("neither lists nor counts against the cap another environment's tokens in a shared store", async () => {
    const f = fakeDeps({ maxActiveTokensPerSubject: 2 });
    const boot = await bootstrapAdmin(f.deps, "admin@example.com", "cli");
    const admin = await authenticate(f.deps, `Bearer ${boot.token}`, meta);
    // Another environment's service wrote two tokens for carol into the same store.
    const staging = { ...fakeDeps({ environment: "staging", maxActiveTokensPerSubject: 2 }).deps, store: f.store };
    const stagingBoot = await bootstrapAdmin(staging, "admin@example.com", "cli");
    const stagingAdmin = await authenticate(staging, `Bearer ${stagingBoot.token}`, meta);
    for (let i = 0; i < 2; i++) await issueToken(staging, stagingAdmin, { ...base, name: `stg${i}`, subject: "carol@example.com" }, meta);

    const listed = await listTokens(f.deps, admin, { ...all }, meta);
    expect(listed.items.map((r) => r.environment)).toEqual(["development"]);
    for (let i = 0; i < 2; i++) await issueToken(f.deps, admin, { ...base, name: `dev${i}`, subject: "carol@example.com" }, meta);
    await expect(issueToken(f.deps, admin, { ...base, name: "dev2", subject: "carol@example.com" }, meta)).rejects.toMatchObject({ code: "resource_exhausted" });
  });
});
