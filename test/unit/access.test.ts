import { describe, expect, it } from "vitest";
import { authenticate, requireScope } from "../../src/domain/access.js";
import { bootstrapAdmin, issueToken } from "../../src/domain/issue.js";
import { mintToken } from "../../src/domain/token-format.js";
import { fakeDeps } from "../support/fakes.js";

const meta = { method: "/tokens.v1.TokenService/ListTokens", peer: "10.0.0.1" };

describe("caller authentication", () => {
  it.each([
    [undefined, "missing credentials: send `Authorization: Bearer <token>` with a token issued by this service"],
    ["", "missing credentials: send `Authorization: Bearer <token>` with a token issued by this service"],
    ["Basic dXNlcjpwYXNz", "the Authorization header must use the Bearer scheme: `Authorization: Bearer <token>`"],
    ["Bearer garbage", "caller credential refused: The token is malformed."],
    [`Bearer ${"x".repeat(5000)}`, "the Authorization header is too long"],
  ])("refuses %j as unauthenticated", async (header, message) => {
    const f = fakeDeps();
    await expect(authenticate(f.deps, header, meta)).rejects.toMatchObject({ code: "unauthenticated", message });
  });

  it("refuses a foreign-environment caller token and raises the environment event", async () => {
    const f = fakeDeps();
    const foreign = mintToken("production").token;
    await expect(authenticate(f.deps, `Bearer ${foreign}`, meta)).rejects.toMatchObject({
      code: "unauthenticated",
      message: "caller credential refused: Token environment mismatch: production token used in development",
    });
    expect(f.events.events.map((e) => e.type)).toEqual(["environment_mismatch"]);
  });

  it("refuses unknown and revoked caller tokens and records authentication_failed", async () => {
    const f = fakeDeps();
    await expect(authenticate(f.deps, `Bearer ${mintToken("development").token}`, meta)).rejects.toMatchObject({ code: "unauthenticated" });
    const { token, record } = await bootstrapAdmin(f.deps, "a@example.com", "cli");
    await f.store.revoke(record.id, { by: "x", reason: "", at: f.clock.now() });
    await expect(authenticate(f.deps, `bearer ${token}`, meta)).rejects.toMatchObject({ message: "caller credential refused: The token has been revoked." });
    expect(f.events.events.filter((e) => e.type === "authentication_failed")).toHaveLength(2);
  });

  it("requires the scope unless the caller is an admin", async () => {
    const f = fakeDeps();
    const boot = await bootstrapAdmin(f.deps, "a@example.com", "cli");
    const admin = await authenticate(f.deps, `Bearer ${boot.token}`, meta);
    const plain = await issueToken(f.deps, admin, { name: "p", scopes: ["tokens.read"], teams: [], namespaces: [], metadata: {}, subject: "p@example.com", fullName: "", isAdmin: false }, meta);
    const caller = await authenticate(f.deps, `Bearer ${plain.token}`, meta);
    expect(() => requireScope(f.deps, caller, "tokens.read", meta)).not.toThrow();
    expect(() => requireScope(f.deps, caller, "tokens.revoke", meta)).toThrow("this call needs the `tokens.revoke` scope, which your token does not have");
    expect(() => requireScope(f.deps, { ...caller, isAdmin: true, scopes: [] }, "tokens.revoke", meta)).not.toThrow();
    expect(f.events.events.at(-1)).toMatchObject({ type: "permission_denied", callerTokenId: caller.tokenId, peer: "10.0.0.1" });
  });
});
