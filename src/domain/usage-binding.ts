import { isIP } from "node:net";
import { invalidArgument } from "./errors.js";

/**
 * Tokens bound to how they are used: the networks a token may be used from
 * and a rate limit of its own. Decisions only; time is passed in.
 *
 * Both are optional and cost nothing on tokens without them: the cached
 * token carries a {@link UsageBinding} only when it has one, parsed once when
 * the token is loaded, and the hot path tests a single `undefined`.
 *
 * Rate limits are **per replica** (per process): N replicas admit up to N
 * times a token's limit. A shared counter would put a store round trip on
 * every use; the limit is a brake on a runaway or stolen token, not metering.
 */

/** A token's own rate limit: at most `requests` uses per `windowMs`, as a token bucket. */
export interface TokenRateLimit {
  /** Uses per window, and the burst after a quiet spell. */
  readonly requests: number;
  /** The window, in milliseconds. */
  readonly windowMs: number;
}

/** Most networks one token may be bound to: the list is checked on every use. */
export const MAX_ALLOWED_NETWORKS = 32;
/** Bounds of a token's rate limit. */
export const RATE_LIMIT_BOUNDS = Object.freeze({ minRequests: 1, maxRequests: 1_000_000, minWindowMs: 1000, maxWindowMs: 86_400_000 });

/** An IP address as bytes: 4 for IPv4, 16 for IPv6. */
type IpBytes = Uint8Array;

/**
 * Normalises a client address: brackets and an IPv6 zone are dropped, and an
 * IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack socket
 * reports for an IPv4 peer) becomes the IPv4 address, so IPv4 networks match
 * it. Undefined for anything that is not an IP address.
 */
export function normalizeAddress(raw: string | undefined): { readonly address: string; readonly family: "ipv4" | "ipv6" } | undefined {
  if (raw === undefined || raw === "" || raw.length > 64) return undefined;
  let address = raw.trim();
  if (address.startsWith("[") && address.endsWith("]")) address = address.slice(1, -1);
  const zone = address.indexOf("%");
  if (zone >= 0) address = address.slice(0, zone);
  const version = isIP(address);
  if (version === 4) return { address, family: "ipv4" };
  if (version !== 6) return undefined;
  // Only zero groups before `ffff:` and a dotted quad: with `isIP` having
  // accepted the whole (so eight groups in all), that is exactly ::ffff:0:0/96.
  const mapped = MAPPED.exec(address);
  if (mapped) return { address: mapped[1]!, family: "ipv4" };
  return { address: address.toLowerCase(), family: "ipv6" };
}

const MAPPED = /^(?:0{0,4}:){0,5}:?ffff:(\d+\.\d+\.\d+\.\d+)$/i;

/**
 * Whether a client address as a gateway sends it is readable: an IPv4 or
 * IPv6 address (an IPv6 zone allowed), no port, no brackets, at most 64
 * characters. Allocates nothing: it runs on every introspection that
 * carries an address, bound token or not.
 */
export function isClientAddress(raw: string): boolean {
  return raw.length <= 64 && isIP(raw) !== 0;
}

/** Parses a textual IP address (already checked by `isIP`) into bytes. */
function ipBytes(address: string): IpBytes {
  if (isIP(address) === 4) return Uint8Array.from(address.split(".").map(Number));
  let text = address;
  const out = new Uint8Array(16);
  // A trailing dotted IPv4 part (RFC 4291 §2.2 form 3) is two groups.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  let tail: number[] = [];
  if (dotted) {
    tail = dotted[1]!.split(".").map(Number);
    text = text.slice(0, -dotted[1]!.length) + "0:0";
  }
  const [head, rest] = text.includes("::") ? text.split("::") as [string, string] : [text, undefined];
  const headGroups = head === "" ? [] : head.split(":");
  const restGroups = rest === undefined || rest === "" ? [] : rest.split(":");
  const zeros = 8 - headGroups.length - restGroups.length;
  const groups = [...headGroups, ...Array<string>(rest === undefined ? 0 : zeros).fill("0"), ...restGroups];
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
  if (tail.length === 4) out.set(tail, 12);
  return out;
}

function isV4Mapped(bytes: IpBytes): boolean {
  if (bytes.length !== 16) return false;
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** A parsed network. */
interface Network {
  readonly bytes: IpBytes;
  readonly prefix: number;
  readonly family: "ipv4" | "ipv6";
  /** The canonical text: `address/prefix`. */
  readonly text: string;
}

/** Parses one CIDR (or a bare address: /32 or /128). Throws INVALID_ARGUMENT naming `field[index]`. */
function parseNetwork(field: string, raw: string): Network {
  if (raw.length > 64) throw invalidArgument(field, "must be at most 64 characters");
  const slash = raw.indexOf("/");
  const address = (slash < 0 ? raw : raw.slice(0, slash)).trim();
  const version = isIP(address);
  if (version === 0 || address.includes("%")) throw invalidArgument(field, "must be an IPv4 or IPv6 network in CIDR notation, e.g. 10.0.0.0/8 or 2001:db8::/32");
  const max = version === 4 ? 32 : 128;
  const prefixText = slash < 0 ? String(max) : raw.slice(slash + 1).trim();
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) throw invalidArgument(field, `prefix length must be 0 to ${max}`);
  const prefix = Number(prefixText);
  const bytes = ipBytes(address);
  if (version === 6 && isV4Mapped(bytes)) throw invalidArgument(field, "write IPv4 networks in IPv4 form (e.g. 192.0.2.0/24), not IPv4-mapped IPv6");
  for (let bit = prefix; bit < max; bit++) {
    if ((bytes[bit >> 3]! >> (7 - (bit & 7))) & 1) throw invalidArgument(field, "has bits set after the prefix length; give the network address");
  }
  return { bytes, prefix, family: version === 4 ? "ipv4" : "ipv6", text: `${address.toLowerCase()}/${prefix}` };
}

/** Whether network `inner` lies entirely inside `outer`. */
function within(inner: Network, outer: Network): boolean {
  if (inner.family !== outer.family || inner.prefix < outer.prefix) return false;
  for (let bit = 0; bit < outer.prefix; bit++) {
    const mask = 1 << (7 - (bit & 7));
    if ((inner.bytes[bit >> 3]! & mask) !== (outer.bytes[bit >> 3]! & mask)) return false;
  }
  return true;
}

/**
 * Validates an `allowed_networks` list: at most {@link MAX_ALLOWED_NETWORKS},
 * each a CIDR without host bits (a bare address is a single host); returns
 * the canonical texts, duplicates removed.
 */
export function validateNetworks(field: string, values: readonly string[]): readonly string[] {
  if (values.length > MAX_ALLOWED_NETWORKS) throw invalidArgument(field, `at most ${MAX_ALLOWED_NETWORKS} networks`);
  const out = new Set<string>();
  values.forEach((value, i) => out.add(parseNetwork(`${field}[${i}]`, value).text));
  return Object.freeze([...out]);
}

/** Validates a rate limit (from the contract: requests and a window in ms). */
export function validateRateLimit(field: string, limit: TokenRateLimit): TokenRateLimit {
  const b = RATE_LIMIT_BOUNDS;
  if (!Number.isInteger(limit.requests) || limit.requests < b.minRequests || limit.requests > b.maxRequests) {
    throw invalidArgument(`${field}.requests`, `must be ${b.minRequests} to ${b.maxRequests}`);
  }
  if (!Number.isFinite(limit.windowMs) || limit.windowMs < b.minWindowMs || limit.windowMs > b.maxWindowMs) {
    throw invalidArgument(`${field}.window`, "must be 1s to 1d");
  }
  return Object.freeze({ requests: limit.requests, windowMs: limit.windowMs });
}

/**
 * "No broader than the caller's": every network asked for lies inside one of
 * the caller's. Returns how many do not (0: fine). Inputs are canonical.
 */
export function networksOutside(wanted: readonly string[], held: readonly string[]): number {
  const parents = held.map((n) => parseNetwork("allowed_networks", n));
  return wanted.filter((n) => {
    const child = parseNetwork("allowed_networks", n);
    return !parents.some((p) => within(child, p));
  }).length;
}

/**
 * "No looser than the caller's": no larger burst (`requests`) and no higher
 * sustained rate (`requests / window`).
 */
export function rateLimitWithin(wanted: TokenRateLimit, held: TokenRateLimit): boolean {
  // Cross-multiplied, so no rounding: wanted.requests/wanted.window ≤ held.requests/held.window.
  return wanted.requests <= held.requests && wanted.requests * held.windowMs <= held.requests * wanted.windowMs;
}

/** What a use of a bound token is refused for, if anything. */
export type BindingRefusal = { readonly kind: "network" } | { readonly kind: "rate"; readonly retryAfterMs: number };

/**
 * A set of networks, matched on numbers: an IPv4 address is one 32-bit
 * integer against (network, mask) pairs, an IPv6 address 16 bytes against
 * prefixes. (`node:net` `BlockList.check` answers the same but costs ~2 µs a
 * call, building a `SocketAddress` each time; this is a few tens of ns for IPv4.)
 */
export class NetworkSet {
  private readonly v4: { readonly net: number; readonly mask: number }[] = [];
  private readonly v6: Network[] = [];

  /** @param networks canonical CIDR texts (validated) */
  constructor(networks: readonly string[]) {
    for (const text of networks) {
      const network = parseNetwork("network", text);
      if (network.family === "ipv4") {
        const mask = network.prefix === 0 ? 0 : (0xffffffff << (32 - network.prefix)) >>> 0;
        this.v4.push({ net: (ipv4Number(network.bytes) & mask) >>> 0, mask });
      } else {
        this.v6.push(network);
      }
    }
  }

  /** Whether a normalised address (see {@link normalizeAddress}) lies in one of the networks. */
  has(client: { readonly address: string; readonly family: "ipv4" | "ipv6" }): boolean {
    if (client.family === "ipv4") {
      const n = parseIpv4(client.address);
      for (const { net, mask } of this.v4) if (((n & mask) >>> 0) === net) return true;
      return false;
    }
    if (this.v6.length === 0) return false;
    const host: Network = { bytes: ipBytes(client.address), prefix: 128, family: "ipv6", text: "" };
    return this.v6.some((network) => within(host, network));
  }
}

/** A dotted IPv4 address (already checked by `isIP`) as a 32-bit number, without allocating. */
function parseIpv4(address: string): number {
  let n = 0;
  let octet = 0;
  for (let i = 0; i < address.length; i++) {
    const c = address.charCodeAt(i);
    if (c === 46) {
      n = n * 256 + octet;
      octet = 0;
    } else {
      octet = octet * 10 + (c - 48);
    }
  }
  return (n * 256 + octet) >>> 0;
}

function ipv4Number(bytes: IpBytes): number {
  return ((bytes[0]! << 24) | (bytes[1]! << 16) | (bytes[2]! << 8) | bytes[3]!) >>> 0;
}

/**
 * A token's binding, parsed once per cached token: the networks as a
 * {@link NetworkSet} (one check per use) and the rate limit.
 */
export class UsageBinding {
  private readonly networks: NetworkSet | undefined;

  /**
   * @param networks canonical CIDR texts (validated at issue)
   * @param rateLimit the token's own limit, if any
   */
  constructor(
    networks: readonly string[],
    readonly rateLimit: TokenRateLimit | undefined,
  ) {
    if (networks.length > 0) this.networks = new NetworkSet(networks);
  }

  /** A binding for a token, or undefined when it has none (the common case: nothing to check). */
  static of(networks: readonly string[], rateLimit: TokenRateLimit | undefined): UsageBinding | undefined {
    return networks.length === 0 && rateLimit === undefined ? undefined : new UsageBinding(networks, rateLimit);
  }

  /**
   * Checks one use: the network first (a use from outside must not spend the
   * token's budget), then the rate. A missing or unreadable client address
   * fails closed when the token is bound to networks.
   */
  check(tokenId: string, clientAddress: string | undefined, limiter: TokenRateLimiter, nowMs: number): BindingRefusal | undefined {
    if (this.networks !== undefined) {
      const client = normalizeAddress(clientAddress);
      if (client === undefined || !this.networks.has(client)) return NETWORK_REFUSAL;
    }
    if (this.rateLimit !== undefined) {
      const wait = limiter.take(tokenId, this.rateLimit, nowMs);
      if (wait > 0) return { kind: "rate", retryAfterMs: wait };
    }
    return undefined;
  }
}

const NETWORK_REFUSAL: BindingRefusal = Object.freeze({ kind: "network" });

interface Bucket {
  tokens: number;
  atMs: number;
  /** When it will have refilled: from then on it says nothing a fresh bucket would not. */
  fullAtMs: number;
}

/**
 * Per-token buckets, each with its token's own limit: `requests` tokens at
 * most, refilled at `requests / windowMs`. Memory is bounded: a bucket that
 * has refilled says nothing a fresh one would not and is dropped by the
 * sweep, and beyond `maxKeys` the oldest bucket goes (its token restarts
 * full: a leniency only for a replica tracking that many busy tokens at once).
 * Not `TokenBuckets` (`rate-limit.ts`): that holds one spec for every key,
 * and its overflow bucket would make strangers share a token's budget.
 */
export class TokenRateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private lastSweepMs = 0;

  constructor(private readonly maxKeys = 100_000) {}

  /** Takes one use for `tokenId`. Returns 0 when admitted, else ms until the next use may succeed. */
  take(tokenId: string, limit: TokenRateLimit, nowMs: number): number {
    const perMs = limit.requests / limit.windowMs;
    let bucket = this.buckets.get(tokenId);
    if (bucket === undefined) {
      if (this.buckets.size >= this.maxKeys || nowMs - this.lastSweepMs >= 10_000) this.sweep(nowMs);
      if (this.buckets.size >= this.maxKeys) this.buckets.delete(this.buckets.keys().next().value!);
      bucket = { tokens: limit.requests, atMs: nowMs, fullAtMs: nowMs };
      this.buckets.set(tokenId, bucket);
    } else if (nowMs > bucket.atMs) {
      bucket.tokens = Math.min(limit.requests, bucket.tokens + (nowMs - bucket.atMs) * perMs);
      bucket.atMs = nowMs;
    }
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      bucket.fullAtMs = nowMs + (limit.requests - bucket.tokens) / perMs;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - bucket.tokens) / perMs));
  }

  /** Buckets held now. */
  get size(): number {
    return this.buckets.size;
  }

  private sweep(nowMs: number): void {
    this.lastSweepMs = nowMs;
    for (const [key, bucket] of this.buckets) if (nowMs >= bucket.fullAtMs) this.buckets.delete(key);
  }
}

/** Most `X-Forwarded-For` entries looked at, from the right. */
const MAX_FORWARDED_HOPS = 32;

/**
 * Which proxies are believed about the client's address (`TRUSTED_PROXIES`).
 * `X-Forwarded-For` is a list anyone can start: only the entries appended by
 * proxies we trust are facts. So the client is the right-most address that
 * is not a trusted proxy, walking from the socket's peer leftwards through
 * the header; a peer that is not trusted is itself the client (its header is
 * ignored). An unreadable entry ends the walk with no address: bound tokens
 * then fail closed.
 */
export class ProxyTrust {
  private readonly trusted: NetworkSet | undefined;

  /** @param networks canonical CIDRs of the trusted proxies (validated by config) */
  constructor(networks: readonly string[]) {
    if (networks.length > 0) this.trusted = new NetworkSet(networks);
  }

  /** The end client's address, from the socket peer and the `X-Forwarded-For` header. */
  clientAddress(peer: string | undefined, forwardedFor: string | undefined): string | undefined {
    const direct = normalizeAddress(peer);
    if (direct === undefined) return undefined;
    if (this.trusted === undefined || forwardedFor === undefined || !this.trusted.has(direct)) return direct.address;
    const hops = forwardedFor.split(",");
    const stop = Math.max(0, hops.length - MAX_FORWARDED_HOPS);
    let client = direct.address;
    for (let i = hops.length - 1; i >= stop; i--) {
      const hop = normalizeAddress(hops[i]!.trim());
      if (hop === undefined) return undefined;
      client = hop.address;
      if (!this.trusted.has(hop)) return client;
    }
    // Every hop was a trusted proxy: the left-most one seen is the client.
    return client;
  }
}
