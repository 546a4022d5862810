import { describe, expect, it } from "vitest";
import { introspectToken } from "../../src/domain/introspect.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import type { CacheOutcome, DomainTracing } from "../../src/domain/ports.js";
import type { IntrospectionUse } from "../../src/domain/introspect.js";
import { mintToken } from "../../src/domain/token-format.js";
import { fakeDeps } from "../support/fakes.js";

const meta = { method: "/tokens.v1.TokenService/IntrospectToken", peer: "127.0.0.1", userAgent: "test" };

/** The domain's tracing port, recording what it is told. */
function recordingTracing() {
  const seen: [CacheOutcome, IntrospectionUse][] = [];
  const tracing: DomainTracing = { cacheOutcome: (outcome, use) => void seen.push([outcome, use]) };
  return { tracing, seen };
}

describe("the cache's answer, told to the tracing port", () => {
  it("says miss, then hit, for a stored token, by use", async () => {
    const f = fakeDeps();
    const { token } = await bootstrapAdmin(f.deps, "ops@example.com", "cli");
    const t = recordingTracing();
    const deps = { ...f.deps, tracing: t.tracing };
    await introspectToken(deps, token, meta);
    await introspectToken(deps, token, meta, { use: "authenticate" });
    expect(t.seen).toEqual([
      ["miss", "introspect"],
      ["hit", "authenticate"],
    ]);
  });

  it("says negative for an unknown token seen again", async () => {
    const f = fakeDeps();
    const t = recordingTracing();
    const deps = { ...f.deps, tracing: t.tracing };
    const unknown = mintToken("development").token;
    await introspectToken(deps, unknown, meta);
    await introspectToken(deps, unknown, meta);
    expect(t.seen).toEqual([
      ["miss", "introspect"],
      ["negative", "introspect"],
    ]);
  });

  it("is not told about tokens that never reach the cache (malformed, another environment)", async () => {
    const f = fakeDeps();
    const t = recordingTracing();
    const deps = { ...f.deps, tracing: t.tracing };
    await introspectToken(deps, "not-a-token", meta);
    await introspectToken(deps, mintToken("production").token, meta);
    expect(t.seen).toEqual([]);
  });
});
