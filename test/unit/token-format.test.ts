import { describe, expect, it } from "vitest";
import { classifyToken, digestToken, displayHint, mintToken } from "../../src/domain/token-format.js";
import { parseEnvironment } from "../../src/domain/environment.js";

describe("token format", () => {
  it.each([
    ["development", /^cf-[0-9A-Za-z]{22}$/],
    ["staging", /^cfstg-[0-9A-Za-z]{22}$/],
    ["production", /^cfprd-[0-9A-Za-z]{22}$/],
  ] as const)("mints %s tokens with their prefix and 22 base62 characters", (env, shape) => {
    const minted = mintToken(env);
    expect(minted.token).toMatch(shape);
    expect(classifyToken(minted.token)).toEqual({ shape: "opaque", environment: env });
  });

  it("stores only a SHA-256 digest and a hint of prefix plus last four characters", () => {
    const minted = mintToken("development");
    expect(minted.digest).toHaveLength(32);
    expect(Buffer.compare(minted.digest, digestToken(minted.token))).toBe(0);
    expect(minted.displayHint).toBe(`cf-…${minted.token.slice(-4)}`);
    expect(minted.displayHint).not.toContain(minted.token.slice(3, 21));
  });

  it("draws every base62 character with about the same frequency (no modulo bias)", () => {
    const counts = new Map<string, number>();
    const samples = 4000;
    for (let i = 0; i < samples; i++) for (const c of mintToken("development").token.slice(3)) counts.set(c, (counts.get(c) ?? 0) + 1);
    expect(counts.size).toBe(62);
    const expected = (samples * 22) / 62;
    // With modulo 256 → 62, the first 8 characters would be drawn 5/4 as often: ±12% would fail.
    for (const n of counts.values()) expect(Math.abs(n - expected) / expected).toBeLessThan(0.12);
  });

  it("never mints the same token twice in 10,000 draws", () => {
    const seen = new Set(Array.from({ length: 10_000 }, () => mintToken("production").token));
    expect(seen.size).toBe(10_000);
  });

  it.each([
    ["", "malformed"],
    ["cf-short", "malformed"],
    ["cf-" + "a".repeat(23), "malformed"],
    ["cf-" + "a".repeat(21) + "!", "malformed"],
    ["CF-" + "a".repeat(22), "malformed"],
    ["xx-" + "a".repeat(22), "malformed"],
    ["eyJhbGciOiJIUzI1NiJ9.e30.sig", "jwt"],
  ])("classifies %j as %s", (value, shape) => {
    expect(classifyToken(value).shape).toBe(shape);
  });

  it("hints at non-tokens only by length", () => {
    expect(displayHint("secret-password")).toBe("(15 chars)");
    expect(displayHint("eyJabc.def.ghi")).toBe("eyJ…(14 chars)");
  });

  it.each([
    ["dev", "development"],
    ["Development", "development"],
    ["stage", "staging"],
    ["staging", "staging"],
    ["PROD", "production"],
    ["production", "production"],
    ["qa", undefined],
  ])("reads environment %j as %s", (raw, env) => {
    expect(parseEnvironment(raw)).toBe(env);
  });
});
