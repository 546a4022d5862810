import { describe, expect, it } from "vitest";
import { introspectToken } from "../../src/domain/introspect.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { mintToken } from "../../src/domain/token-format.js";
import { fakeDeps } from "../support/fakes.js";

const meta = { method: "/tokens.v1.TokenService/IntrospectToken", peer: "127.0.0.1", userAgent: "test" };

describe("introspection outcomes", () => {
  it("answers active with the token's claims and notes its use", async () => {
    const f = fakeDeps();
    const { token, record } = await bootstrapAdmin(f.deps, "ops@example.com", "cli");
    const result = await introspectToken(f.deps, token, meta);
    expect(result).toMatchObject({ active: true, claims: { id: record.id, subject: "ops@example.com", isAdmin: true, kind: "opaque" } });
    expect(f.used.get(record.id)).toEqual(f.clock.now());
  });

  it("answers malformed for values of the wrong shape, without touching the store", async () => {
    const f = fakeDeps();
    f.store.down = true;
    expect(await introspectToken(f.deps, "not-a-token", meta)).toEqual({ active: false, reason: "malformed", message: "The token is malformed." });
  });

  it("answers unknown for a well-formed token that was never issued", async () => {
    const f = fakeDeps();
    expect(await introspectToken(f.deps, mintToken("development").token, meta)).toMatchObject({ active: false, reason: "unknown" });
  });

  it("answers expired once the expiry time is reached", async () => {
    const f = fakeDeps();
    const { token } = await bootstrapAdmin(f.deps, "ops@example.com", "cli");
    f.clock.advance(f.deps.policy.defaultTtlMs);
    expect(await introspectToken(f.deps, token, meta)).toMatchObject({ active: false, reason: "expired", message: "The token has expired." });
  });

  it("answers revoked for a revoked token, even after it also expired", async () => {
    const f = fakeDeps();
    const { token, record } = await bootstrapAdmin(f.deps, "ops@example.com", "cli");
    await f.store.revoke(record.id, { by: "x", reason: "", at: f.clock.now() });
    f.clock.advance(f.deps.policy.defaultTtlMs * 2);
    expect(await introspectToken(f.deps, token, meta)).toMatchObject({ active: false, reason: "revoked" });
  });

  it.each([
    ["staging", "production", "Token environment mismatch: staging token used in production"],
    ["development", "production", "Token environment mismatch: development token used in production"],
    ["production", "development", "Token environment mismatch: production token used in development"],
    ["development", "staging", "Token environment mismatch: development token used in staging"],
  ] as const)("refuses a %s token in %s whatever the store holds, and raises a security event", async (tokenEnv, serviceEnv, message) => {
    const f = fakeDeps({ environment: serviceEnv });
    const minted = mintToken(tokenEnv);
    const result = await introspectToken(f.deps, minted.token, meta);
    expect(result).toEqual({ active: false, reason: "environment_mismatch", message, tokenEnvironment: tokenEnv });
    expect(f.events.events).toEqual([
      expect.objectContaining({ type: "environment_mismatch", severity: "critical", message, serviceEnvironment: serviceEnv, tokenEnvironment: tokenEnv, tokenHint: minted.displayHint, peer: "127.0.0.1", userAgent: "test" }),
    ]);
    expect(JSON.stringify(f.events.events)).not.toContain(minted.token);
  });

  it("propagates a store outage instead of answering inactive", async () => {
    const f = fakeDeps();
    f.store.down = true;
    await expect(introspectToken(f.deps, mintToken("development").token, meta)).rejects.toMatchObject({ code: "unavailable" });
  });
});
