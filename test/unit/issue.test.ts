import { describe, expect, it } from "vitest";
import type { Caller } from "../../src/domain/model.js";
import { authenticate } from "../../src/domain/access.js";
import { bootstrapAdmin, issueToken, type IssueInput } from "../../src/domain/issue.js";
import { buildClaims } from "../../src/domain/claims.js";
import { fakeDeps } from "../support/fakes.js";

const meta = { method: "/tokens.v1.TokenService/IssueToken" };
const base: IssueInput = { name: "ci", scopes: [], teams: [], namespaces: [], metadata: {}, subject: "", fullName: "", isAdmin: false };

async function setup() {
  const f = fakeDeps();
  const boot = await bootstrapAdmin(f.deps, "admin@example.com", "cli");
  const admin = await authenticate(f.deps, `Bearer ${boot.token}`, meta);
  const userToken = await issueToken(
    f.deps,
    admin,
    { ...base, name: "alice", subject: "alice@example.com", scopes: ["tokens.create", "orders.read"], teams: ["payments"], namespaces: ["ns1"], ttlMs: 86_400_000 },
    meta,
  );
  const alice: Caller = await authenticate(f.deps, `Bearer ${userToken.token}`, meta);
  return { ...f, admin, alice };
}

describe("issuing tokens", () => {
  it("issues within what a non-admin holds, for itself, with the default lifetime capped by its own", async () => {
    const s = await setup();
    const issued = await issueToken(s.deps, s.alice, { ...base, name: "  deploy  ", scopes: ["orders.read", "orders.read"], teams: ["payments"] }, meta);
    expect(issued.token).toMatch(/^cf-[0-9A-Za-z]{22}$/);
    expect(issued.record).toMatchObject({ name: "deploy", subject: "alice@example.com", scopes: ["orders.read"], teams: ["payments"], isAdmin: false, createdBy: "alice@example.com" });
    expect(s.store.rows.get(issued.record.id)).toBeDefined();
    expect(JSON.stringify([...s.store.rows.values()])).not.toContain(issued.token);
  });

  it.each([
    [{ subject: "bob@example.com" }, "only admins may issue tokens for another subject"],
    [{ isAdmin: true }, "only admins may issue admin tokens"],
    [{ fullName: "Alice A." }, "only admins may set full_name"],
    [{ scopes: ["orders.write"] }, "scopes: you may only grant scopes you hold yourself; 1 of those asked for are not held"],
    [{ teams: ["platform"] }, "teams: you may only grant teams you hold yourself; 1 of those asked for are not held"],
    [{ namespaces: ["ns2"] }, "namespaces: you may only grant namespaces you hold yourself; 1 of those asked for are not held"],
    [{ ttlMs: 2 * 86_400_000 }, "the new token may not outlive yours (which expires at 2026-11-23T12:00:00.000Z)"],
  ])("denies a non-admin %j and records a security event, writing nothing", async (extra, message) => {
    const s = await setup();
    const before = s.store.rows.size;
    await expect(issueToken(s.deps, s.alice, { ...base, ...extra }, meta)).rejects.toMatchObject({ code: "permission_denied", message });
    expect(s.store.rows.size).toBe(before);
    expect(s.events.events.at(-1)).toMatchObject({ type: "permission_denied", callerSubject: "alice@example.com", message });
  });

  it("lets admins issue for anyone, with admin rights and a full name", async () => {
    const s = await setup();
    const issued = await issueToken(s.deps, s.admin, { ...base, subject: "bob@example.com", fullName: "Bob B.", isAdmin: true, scopes: ["anything"] }, meta);
    expect(issued.record).toMatchObject({ subject: "bob@example.com", fullName: "Bob B.", isAdmin: true, createdBy: "admin@example.com" });
  });

  it.each([
    [{ name: "" }, "name: is required"],
    [{ name: "x".repeat(129) }, "name: must be at most 128 characters"],
    [{ name: "a\nb" }, "name: must not contain control characters"],
    [{ scopes: ["has space"] }, 'scopes[0]: must be 1 to 128 printable ASCII characters without space, " or \\ (RFC 6749 §3.3)'],
    [{ teams: ["-bad"] }, "teams[0]: must be 1 to 128 letters, digits or ._:/- and start with a letter or digit"],
    [{ scopes: Array.from({ length: 65 }, (_, i) => `s${i}`) }, "scopes: must have at most 64 entries"],
    [{ metadata: { "bad key": "v" } }, 'metadata[0]: keys must be 1 to 64 letters, digits or ._- (entries counted in key order from 0)'],
    [{ metadata: { k: "v".repeat(513) } }, "metadata[0]: values must be at most 512 characters (entries counted in key order from 0)"],
    [{ ttlMs: 0 }, "ttl: must be between 1s and 365d"],
    [{ ttlMs: 366 * 86_400_000 }, "ttl: must be between 1s and 365d"],
    [{ expiresAt: new Date("2020-01-01T00:00:00Z") }, "expire_time: must be at least 1s and at most 365d from now"],
  ])("refuses %j as invalid_argument naming the field, writing nothing", async (extra, message) => {
    const s = await setup();
    const before = s.store.rows.size;
    await expect(issueToken(s.deps, s.admin, { ...base, ...extra } as IssueInput, meta)).rejects.toMatchObject({ code: "invalid_argument", message });
    expect(s.store.rows.size).toBe(before);
  });

  it("applies the default lifetime when none is asked for, or none when expiry is not required", async () => {
    const s = await setup();
    const issued = await issueToken(s.deps, s.admin, base, meta);
    expect(issued.record.expiresAt).toEqual(new Date(s.clock.now().getTime() + s.deps.policy.defaultTtlMs));
    const relaxed = fakeDeps({ requireExpiry: false });
    const boot = await bootstrapAdmin(relaxed.deps, "admin@example.com", "cli");
    const admin = await authenticate(relaxed.deps, `Bearer ${boot.token}`, meta);
    expect((await issueToken(relaxed.deps, admin, base, meta)).record.expiresAt).toBeNull();
  });

  it("answers resource_exhausted at the per-subject cap", async () => {
    const s = await setup(); // cap is 5 in the test policy; alice holds 1
    for (let i = 0; i < 4; i++) await issueToken(s.deps, s.alice, base, meta);
    await expect(issueToken(s.deps, s.alice, base, meta)).rejects.toMatchObject({ code: "resource_exhausted" });
  });

  it("builds identical claims for identical parameters on every path", () => {
    const params = { subject: "a@example.com", name: "n", environment: "development", issuedAt: new Date(0), expiresAt: null, scopes: ["x"] } as const;
    expect(buildClaims(params)).toEqual(buildClaims({ ...params }));
    expect(Object.isFrozen(buildClaims(params).scopes)).toBe(true);
  });

  it("bootstrap creates an admin with every service scope and records a security event", async () => {
    const f = fakeDeps();
    const { record } = await bootstrapAdmin(f.deps, "root@example.com", "cli");
    expect(record).toMatchObject({ isAdmin: true, subject: "root@example.com", createdBy: "bootstrap", scopes: ["tokens.introspect", "tokens.create", "tokens.read", "tokens.revoke"] });
    expect(f.events.events).toEqual([expect.objectContaining({ type: "platform_admin_bootstrap", severity: "info", tokenId: record.id })]);
  });
  describe("metadata keys non-admins may set", () => {
    it("refuses a key not on the allow-list as permission_denied, naming the entry by index and never the key", async () => {
      const s = await setup();
      const before = s.store.rows.size;
      const secretKey = "role_zq9";
      const allowing = { ...s.deps, policy: { ...s.deps.policy, metadataAllowedKeys: ["pipeline"] } };
      const error = await issueToken(allowing, s.alice, { ...base, metadata: { [secretKey]: "admin", pipeline: "42" } }, meta).catch((e: { code: string; message: string }) => e);
      expect(error).toMatchObject({ code: "permission_denied", message: expect.stringMatching(/^metadata\[1\]: /) });
      expect(JSON.stringify(error)).not.toContain(secretKey);
      expect((error as { message: string }).message).not.toContain(secretKey);
      expect(s.events.events.at(-1)).toMatchObject({ type: "permission_denied" });
      expect(s.events.events.at(-1)?.message).not.toContain(secretKey);
      expect(s.store.rows.size).toBe(before);
    });

    it("accepts allowed keys from non-admins, and any key from admins", async () => {
      const s = await setup();
      const allowing = { ...s.deps, policy: { ...s.deps.policy, metadataAllowedKeys: ["pipeline", "ticket"] } };
      await expect(issueToken(allowing, s.alice, { ...base, metadata: { pipeline: "42", ticket: "OPS-1" } }, meta)).resolves.toMatchObject({ record: { metadata: { pipeline: "42", ticket: "OPS-1" } } });
      await expect(issueToken(allowing, s.alice, { ...base, metadata: { pipeline: "42", role: "admin" } }, meta)).rejects.toMatchObject({ code: "permission_denied", message: expect.stringMatching(/^metadata\[1\]: /) });
      await expect(issueToken(s.deps, s.admin, { ...base, metadata: { role: "admin" } }, meta)).resolves.toMatchObject({ record: { metadata: { role: "admin" } } });
      // No metadata at all needs no allowance.
      await expect(issueToken(s.deps, s.alice, base, meta)).resolves.toBeDefined();
    });
  });

  it("records the caller's token as the issuer, and none for bootstrap", async () => {
    const s = await setup();
    const issued = await issueToken(s.deps, s.alice, base, meta);
    expect(issued.record.issuedByTokenId).toBe(s.alice.tokenId);
    expect(s.store.rows.get(s.admin.tokenId)?.issuedByTokenId).toBeNull();
  });
});
