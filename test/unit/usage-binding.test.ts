import { BlockList } from "node:net";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { authenticate } from "../../src/domain/access.js";
import { introspectToken } from "../../src/domain/introspect.js";
import { bootstrapAdmin, issueToken, type IssueInput } from "../../src/domain/issue.js";
import { mintToken } from "../../src/domain/token-format.js";
import {
  NetworkSet,
  ProxyTrust,
  TokenRateLimiter,
  UsageBinding,
  networksOutside,
  normalizeAddress,
  rateLimitWithin,
  validateNetworks,
  validateRateLimit,
} from "../../src/domain/usage-binding.js";
import { fakeDeps } from "../support/fakes.js";

const meta = { method: "/tokens.v1.TokenService/IntrospectToken" };
const base: IssueInput = { name: "ci", scopes: [], teams: [], namespaces: [], metadata: {}, subject: "", fullName: "", isAdmin: false };

describe("allowed networks: validation", () => {
  it("accepts IPv4 and IPv6 CIDRs and bare addresses, canonical and deduplicated", () => {
    expect(validateNetworks("allowed_networks", ["10.0.0.0/8", "192.0.2.7", "2001:DB8::/32", "10.0.0.0/8", "::1"])).toEqual(["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128"]);
  });

  it.each([
    [["10.0.0.1/8"], "allowed_networks[0]: has bits set after the prefix length; give the network address"],
    [["10.0.0.0/33"], "allowed_networks[0]: prefix length must be 0 to 32"],
    [["2001:db8::/129"], "allowed_networks[0]: prefix length must be 0 to 128"],
    [["10.0.0.0/-1"], "allowed_networks[0]: prefix length must be 0 to 32"],
    [["10.0.0/8"], "allowed_networks[0]: must be an IPv4 or IPv6 network in CIDR notation, e.g. 10.0.0.0/8 or 2001:db8::/32"],
    [["fe80::1%eth0"], "allowed_networks[0]: must be an IPv4 or IPv6 network in CIDR notation, e.g. 10.0.0.0/8 or 2001:db8::/32"],
    [["::ffff:10.0.0.0/104"], "allowed_networks[0]: write IPv4 networks in IPv4 form (e.g. 192.0.2.0/24), not IPv4-mapped IPv6"],
    [["10.0.0.0/8", "hostname"], "allowed_networks[1]: must be an IPv4 or IPv6 network in CIDR notation, e.g. 10.0.0.0/8 or 2001:db8::/32"],
    [Array.from({ length: 33 }, (_, i) => `10.0.${i}.0/24`), "allowed_networks: at most 32 networks"],
  ])("refuses %j naming the entry", (values, message) => {
    expect(() => validateNetworks("allowed_networks", values)).toThrow(expect.objectContaining({ code: "invalid_argument", message }));
  });

  it("validates rate limits: 1 to 1,000,000 requests per 1s to 1d", () => {
    expect(validateRateLimit("rate_limit", { requests: 10, windowMs: 60_000 })).toEqual({ requests: 10, windowMs: 60_000 });
    expect(() => validateRateLimit("rate_limit", { requests: 0, windowMs: 60_000 })).toThrow("rate_limit.requests: must be 1 to 1000000");
    expect(() => validateRateLimit("rate_limit", { requests: 5, windowMs: 999 })).toThrow("rate_limit.window: must be 1s to 1d");
    expect(() => validateRateLimit("rate_limit", { requests: 5, windowMs: Number.NaN })).toThrow("rate_limit.window: must be 1s to 1d");
  });
});

describe("allowed networks: matching", () => {
  it("normalises addresses: IPv4-mapped IPv6 becomes IPv4, brackets and zones go", () => {
    expect(normalizeAddress("::ffff:192.0.2.1")).toEqual({ address: "192.0.2.1", family: "ipv4" });
    expect(normalizeAddress("[2001:db8::1]")).toEqual({ address: "2001:db8::1", family: "ipv6" });
    expect(normalizeAddress("fe80::1%eth0")).toEqual({ address: "fe80::1", family: "ipv6" });
    expect(normalizeAddress("0:0:0:0:0:FFFF:192.0.2.1")).toEqual({ address: "192.0.2.1", family: "ipv4" });
    expect(normalizeAddress("::ffff:0:192.0.2.1")).toEqual({ address: "::ffff:0:192.0.2.1", family: "ipv6" });
    expect(normalizeAddress("not-an-ip")).toBeUndefined();
    expect(normalizeAddress(undefined)).toBeUndefined();
  });

  it("admits inside, refuses outside and a missing address (fail closed), for IPv4 and IPv6", () => {
    const binding = new UsageBinding(["10.0.0.0/8", "2001:db8::/32"], undefined);
    const limiter = new TokenRateLimiter();
    expect(binding.check("t", "10.1.2.3", limiter, 0)).toBeUndefined();
    expect(binding.check("t", "::ffff:10.1.2.3", limiter, 0)).toBeUndefined();
    expect(binding.check("t", "2001:db8:1::5", limiter, 0)).toBeUndefined();
    expect(binding.check("t", "10.255.255.255", limiter, 0)).toBeUndefined();
    expect(binding.check("t", "9.255.255.255", limiter, 0)).toEqual({ kind: "network" });
    expect(new UsageBinding(["0.0.0.0/0"], undefined).check("t", "203.0.113.1", limiter, 0)).toBeUndefined();
    expect(new UsageBinding(["0.0.0.0/0"], undefined).check("t", "2001:db8::1", limiter, 0)).toEqual({ kind: "network" });
    expect(binding.check("t", "11.0.0.1", limiter, 0)).toEqual({ kind: "network" });
    expect(binding.check("t", "2001:db9::1", limiter, 0)).toEqual({ kind: "network" });
    expect(binding.check("t", undefined, limiter, 0)).toEqual({ kind: "network" });
    expect(binding.check("t", "garbage", limiter, 0)).toEqual({ kind: "network" });
  });

  it("a token bound to nothing has no binding at all", () => {
    expect(UsageBinding.of([], undefined)).toBeUndefined();
  });

  it("defines 'no broader' as: every network inside one of the caller's; no more requests and no higher rate", () => {
    expect(networksOutside(["10.1.0.0/16", "10.2.3.4/32"], ["10.0.0.0/8"])).toBe(0);
    expect(networksOutside(["10.0.0.0/7"], ["10.0.0.0/8"])).toBe(1);
    expect(networksOutside(["2001:db8:1::/48", "192.0.2.0/24"], ["2001:db8::/32"])).toBe(1);
    expect(rateLimitWithin({ requests: 10, windowMs: 60_000 }, { requests: 10, windowMs: 60_000 })).toBe(true);
    expect(rateLimitWithin({ requests: 5, windowMs: 60_000 }, { requests: 10, windowMs: 60_000 })).toBe(true);
    expect(rateLimitWithin({ requests: 11, windowMs: 120_000 }, { requests: 10, windowMs: 60_000 })).toBe(false);
    expect(rateLimitWithin({ requests: 10, windowMs: 30_000 }, { requests: 10, windowMs: 60_000 })).toBe(false);
  });
});

describe("network matching agrees with node:net BlockList", () => {
  const group = fc.integer({ min: 0, max: 0xffff }).map((n) => n.toString(16));
  const v6 = fc.array(group, { minLength: 8, maxLength: 8 }).chain((groups) =>
    // Sometimes compress a run of groups to "::", sometimes zero some first, to reach every textual form.
    fc.tuple(fc.constant(groups), fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 8 }), fc.boolean()).map(([g, a, b, zero]) => {
      const [from, to] = a <= b ? [a, b] : [b, a];
      const gs = zero ? g.map((x, i) => (i >= from && i < to ? "0" : x)) : g;
      if (!zero || to - from < 2) return gs.join(":");
      return `${gs.slice(0, from).join(":")}::${gs.slice(to).join(":")}`;
    }),
  );
  const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join("."));

  it("for IPv4 and IPv6 addresses and prefixes", () => {
    fc.assert(
      fc.property(fc.oneof(fc.tuple(v4, fc.integer({ min: 0, max: 32 }), v4), fc.tuple(v6, fc.integer({ min: 0, max: 128 }), v6)), ([net, prefix, address]) => {
        const family = net.includes(":") ? "ipv6" : "ipv4";
        const oracle = new BlockList();
        oracle.addSubnet(net, prefix, family);
        // The network address with host bits cleared, as validation demands.
        const canonical = `${maskedNetwork(oracle, net, prefix, family)}/${prefix}`;
        // IPv4-mapped networks are refused at validation (write them as IPv4).
        fc.pre(!canonical.startsWith("0:0:0:0:0:ffff:"));
        const ours = new NetworkSet([canonical]);
        for (const probe of [address, net]) {
          const normal = normalizeAddress(probe)!;
          if (normal.family !== family) continue; // IPv4-mapped probes are matched as IPv4 by design
          expect(ours.has(normal)).toBe(oracle.check(probe, family));
        }
      }),
      { numRuns: 500 },
    );
  });
});

/** The network address of `net/prefix` (host bits cleared), found through the oracle's own parse. */
function maskedNetwork(_oracle: BlockList, net: string, prefix: number, family: "ipv4" | "ipv6"): string {
  if (family === "ipv4") {
    const n = net.split(".").reduce((acc, o) => acc * 256 + Number(o), 0);
    const mask = prefix === 0 ? 0 : Number((0xffffffffn << BigInt(32 - prefix)) & 0xffffffffn);
    const m = Number(BigInt(n) & BigInt(mask));
    return [24, 16, 8, 0].map((s) => (m >>> s) & 255).join(".");
  }
  const groups = expandV6(net);
  let value = groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
  value &= prefix === 0 ? 0n : ((1n << 128n) - 1n) ^ ((1n << BigInt(128 - prefix)) - 1n);
  return Array.from({ length: 8 }, (_, i) => ((value >> BigInt(112 - 16 * i)) & 0xffffn).toString(16)).join(":");
}

function expandV6(text: string): string[] {
  if (!text.includes("::")) return text.split(":");
  const [head, tail] = text.split("::") as [string, string];
  const h = head === "" ? [] : head.split(":");
  const t = tail === "" ? [] : tail.split(":");
  return [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
}

describe("per-token rate limit", () => {
  it("admits a burst of `requests`, then refuses with the wait, then refills over the window", () => {
    const limiter = new TokenRateLimiter();
    const limit = { requests: 3, windowMs: 3000 };
    expect([0, 0, 0].map(() => limiter.take("t", limit, 1000))).toEqual([0, 0, 0]);
    expect(limiter.take("t", limit, 1000)).toBe(1000);
    expect(limiter.take("other", limit, 1000)).toBe(0);
    expect(limiter.take("t", limit, 2000)).toBe(0);
  });

  it("stays bounded: refilled buckets are swept, and beyond the cap the oldest goes", () => {
    const limiter = new TokenRateLimiter(2);
    const limit = { requests: 1, windowMs: 1000 };
    limiter.take("a", limit, 0);
    limiter.take("b", limit, 0);
    limiter.take("c", limit, 100);
    expect(limiter.size).toBe(2);
    limiter.take("d", limit, 20_000);
    expect(limiter.size).toBe(1);
  });
});

describe("X-Forwarded-For through trusted proxies", () => {
  const trust = new ProxyTrust(validateNetworks("TRUSTED_PROXIES", ["10.0.0.0/8", "fd00::/8"]));

  it("ignores the header from a peer that is not a trusted proxy", () => {
    expect(trust.clientAddress("203.0.113.9", "192.0.2.1")).toBe("203.0.113.9");
    expect(new ProxyTrust([]).clientAddress("10.0.0.1", "192.0.2.1")).toBe("10.0.0.1");
  });

  it("takes the right-most address that is not a trusted proxy: a client cannot spoof by prepending", () => {
    expect(trust.clientAddress("10.0.0.1", "198.51.100.7")).toBe("198.51.100.7");
    expect(trust.clientAddress("10.0.0.1", "1.2.3.4, 198.51.100.7, 10.0.0.2")).toBe("198.51.100.7");
    expect(trust.clientAddress("::ffff:10.0.0.1", "2001:db8::7, fd00::1")).toBe("2001:db8::7");
  });

  it("fails closed on an unreadable hop, and takes the left-most when every hop is trusted", () => {
    expect(trust.clientAddress("10.0.0.1", "garbage, 10.0.0.2")).toBeUndefined();
    expect(trust.clientAddress("10.0.0.1", "10.0.0.3, 10.0.0.2")).toBe("10.0.0.3");
  });
});

describe("bound tokens in introspection and issuing", () => {
  async function setup() {
    const f = fakeDeps();
    const deps = { ...f.deps, tokenRates: new TokenRateLimiter() };
    const boot = await bootstrapAdmin(deps, "admin@example.com", "cli");
    const admin = await authenticate(deps, `Bearer ${boot.token}`, meta);
    return { ...f, deps, admin };
  }

  it("refuses a use from outside with a reason and a security event; admits inside", async () => {
    const s = await setup();
    const { token, record } = await issueToken(s.deps, s.admin, { ...base, subject: "svc@example.com", allowedNetworks: ["192.0.2.0/24"] }, meta);
    expect(record.allowedNetworks).toEqual(["192.0.2.0/24"]);
    const inside = await introspectToken(s.deps, token, meta, { clientAddress: "192.0.2.10" });
    expect(inside).toMatchObject({ active: true, claims: { allowedNetworks: ["192.0.2.0/24"] } });
    const outside = await introspectToken(s.deps, token, meta, { clientAddress: "198.51.100.1" });
    expect(outside).toMatchObject({ active: false, reason: "network_not_allowed" });
    expect(await introspectToken(s.deps, token, meta)).toMatchObject({ active: false, reason: "network_not_allowed" });
    expect(s.events.events.filter((e) => e.type === "token_network_denied")).toHaveLength(2);
    expect(s.events.events.at(-1)).toMatchObject({ tokenId: record.id, severity: "warning" });
  });

  it("refuses past the token's own limit with retry-after, as a caller too", async () => {
    const s = await setup();
    const { token } = await issueToken(s.deps, s.admin, { ...base, scopes: ["tokens.read"], subject: "svc@example.com", rateLimit: { requests: 2, windowMs: 60_000 } }, meta);
    expect((await introspectToken(s.deps, token, meta)).active).toBe(true);
    expect((await introspectToken(s.deps, token, meta)).active).toBe(true);
    expect(await introspectToken(s.deps, token, meta)).toMatchObject({ active: false, reason: "token_rate_limited", retryAfterMs: 30_000 });
    await expect(authenticate(s.deps, `Bearer ${token}`, meta)).rejects.toMatchObject({ code: "resource_exhausted", retryAfterMs: 30_000 });
    s.clock.advance(30_000);
    expect((await introspectToken(s.deps, token, meta)).active).toBe(true);
  });

  it("a non-admin inherits its own bindings and may not issue broader ones", async () => {
    const s = await setup();
    const parent = await issueToken(s.deps, s.admin, { ...base, subject: "alice@example.com", scopes: ["tokens.create"], allowedNetworks: ["10.0.0.0/8"], rateLimit: { requests: 10, windowMs: 60_000 } }, meta);
    const alice = await authenticate(s.deps, `Bearer ${parent.token}`, { ...meta, peer: "10.1.1.1" });
    const child = await issueToken(s.deps, alice, { ...base }, meta);
    expect(child.record).toMatchObject({ allowedNetworks: ["10.0.0.0/8"], rateLimit: { requests: 10, windowMs: 60_000 } });
    const narrower = await issueToken(s.deps, alice, { ...base, allowedNetworks: ["10.9.0.0/16"], rateLimit: { requests: 1, windowMs: 60_000 } }, meta);
    expect(narrower.record).toMatchObject({ allowedNetworks: ["10.9.0.0/16"], rateLimit: { requests: 1, windowMs: 60_000 } });
    const before = s.store.rows.size;
    await expect(issueToken(s.deps, alice, { ...base, allowedNetworks: ["0.0.0.0/0"] }, meta)).rejects.toMatchObject({ code: "permission_denied" });
    await expect(issueToken(s.deps, alice, { ...base, rateLimit: { requests: 10, windowMs: 1000 } }, meta)).rejects.toMatchObject({ code: "permission_denied" });
    expect(s.store.rows.size).toBe(before);
  });

  it("judges a caller's own credential by the request's peer address", async () => {
    const s = await setup();
    const { token } = await issueToken(s.deps, s.admin, { ...base, subject: "svc@example.com", allowedNetworks: ["10.0.0.0/8"] }, meta);
    await expect(authenticate(s.deps, `Bearer ${token}`, { ...meta, peer: "10.2.3.4" })).resolves.toMatchObject({ subject: "svc@example.com" });
    await expect(authenticate(s.deps, `Bearer ${token}`, { ...meta, peer: "192.0.2.1" })).rejects.toMatchObject({ code: "unauthenticated" });
  });

  it("costs unbound tokens nothing: no binding on their cached record", async () => {
    const s = await setup();
    const { token } = await issueToken(s.deps, s.admin, { ...base, subject: "svc@example.com" }, meta);
    const result = await introspectToken(s.deps, token, meta);
    expect(result.active && (result.claims as { binding?: unknown }).binding).toBeUndefined();
  });
});

describe("the secret-scanning pattern in the README", () => {
  // The README's regex, exactly: prefix, a dash, 22 base62 characters, word boundaries.
  const pattern = /\b(?:cf|cfstg|cfprd)-[0-9A-Za-z]{22}\b/g;
  it("matches tokens of all three environments and nothing near them", () => {
    for (const env of ["development", "staging", "production"] as const) {
      const { token } = mintToken(env);
      expect(`key = "${token}"`.match(pattern)).toEqual([token]);
    }
    const body = "cf-" + "a".repeat(22);
    for (const miss of [`cf-${"a".repeat(21)}`, `${body}a`, `xcf-${"a".repeat(22)}`, `cfdev-${"a".repeat(22)}`, `cf_${"a".repeat(22)}`, `cf-${"a".repeat(21)}-`]) {
      expect(miss.match(pattern)).toBeNull();
    }
  });

  it("the per-environment patterns each match only their own environment's tokens", () => {
    const patterns = { development: /\bcf-[0-9A-Za-z]{22}\b/, staging: /\bcfstg-[0-9A-Za-z]{22}\b/, production: /\bcfprd-[0-9A-Za-z]{22}\b/ } as const;
    for (const env of ["development", "staging", "production"] as const) {
      const { token } = mintToken(env);
      for (const [other, re] of Object.entries(patterns)) expect(re.test(` ${token} `)).toBe(other === env);
    }
  });
});
