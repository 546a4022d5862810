import { TokenError } from "./errors.js";
import type { Environment } from "./environment.js";
import type { Caller, RequestMeta, SecurityEvent } from "./model.js";

/**
 * Rate limits and concurrency caps: decisions only. No timers, no I/O, time
 * passed in, memory bounded whatever the traffic. Everything here is **per
 * replica** (per process, so per worker under WORKERS): N replicas behind a
 * load balancer admit up to N times a limit. That is deliberate: a shared
 * counter would put a store round trip on the hot path, and the limits exist
 * to keep one replica serving, not to meter a tenant.
 */

/** A token bucket's shape: sustained rate and burst. `ratePerSecond` 0 disables the limit. */
export interface BucketSpec {
  /** Tokens added per second: the sustained rate. */
  readonly ratePerSecond: number;
  /** Most tokens held: how many requests may come at once after a quiet spell. */
  readonly burst: number;
}

/** Whether a bucket spec limits anything. */
export function isLimited(spec: BucketSpec): boolean {
  return spec.ratePerSecond > 0 && spec.burst > 0;
}

/** Refused by a limit: RESOURCE_EXHAUSTED with when to come back (`retry-after`, HTTP 429 `Retry-After`). */
export class RateLimitedError extends TokenError {
  /**
   * @param retryAfterMs when a retry can succeed, at the earliest (at least 1 ms)
   * @param limit which limit refused, for metrics
   */
  constructor(
    message: string,
    readonly retryAfterMs: number,
    readonly limit: LimitName,
  ) {
    super("resource_exhausted", message);
  }
}

/** Whole seconds for `Retry-After` (RFC 9110 §10.2.3 takes only integers): rounded up, at least 1. */
export function retryAfterSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}

interface Bucket {
  tokens: number;
  /** When `tokens` was last brought up to date (ms). */
  atMs: number;
}

/**
 * Token buckets by key: each key's bucket gains `ratePerSecond` tokens a
 * second up to `burst`, and a request takes one. Memory is bounded two ways:
 *
 * - A bucket that has refilled to its burst says nothing a fresh bucket would
 *   not, so it is dropped: idle keys cost nothing. A sweep runs at most every
 *   `sweepMs`, and whenever the table is full.
 * - At most `maxKeys` buckets. When full of keys that are all still
 *   draining, a new key shares one overflow bucket with every other
 *   newcomer: an attacker with endless keys (addresses, credentials) neither
 *   grows the table nor resets anyone's bucket; it only competes with itself
 *   (and with genuinely new keys, until the table drains).
 */
export class TokenBuckets {
  private readonly buckets = new Map<string, Bucket>();
  private readonly overflow: Bucket;
  private readonly perMs: number;
  private lastSweepMs = 0;

  constructor(
    private readonly spec: BucketSpec,
    private readonly options: { readonly maxKeys: number; readonly sweepMs?: number },
  ) {
    this.perMs = spec.ratePerSecond / 1000;
    this.overflow = { tokens: spec.burst, atMs: 0 };
  }

  /**
   * Takes one token for `key` at `nowMs`.
   * @returns 0 when admitted, else how many ms until a token is there
   */
  take(key: string, nowMs: number): number {
    const bucket = this.bucketFor(key, nowMs);
    this.refill(bucket, nowMs);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - bucket.tokens) / this.perMs));
  }

  /** How many ms until `key` could take a token (0: now), without taking one. */
  peek(key: string, nowMs: number): number {
    const bucket = this.buckets.get(key) ?? (this.buckets.size >= this.options.maxKeys ? this.overflow : undefined);
    if (bucket === undefined) return 0;
    const tokens = Math.min(this.spec.burst, bucket.tokens + (nowMs - bucket.atMs) * this.perMs);
    return tokens >= 1 ? 0 : Math.max(1, Math.ceil((1 - tokens) / this.perMs));
  }

  /** Buckets held now (the overflow bucket not counted). */
  get size(): number {
    return this.buckets.size;
  }

  private bucketFor(key: string, nowMs: number): Bucket {
    const known = this.buckets.get(key);
    if (known !== undefined) return known;
    if (nowMs - this.lastSweepMs >= (this.options.sweepMs ?? 10_000) || this.buckets.size >= this.options.maxKeys) this.sweep(nowMs);
    if (this.buckets.size >= this.options.maxKeys) return this.overflow;
    const bucket = { tokens: this.spec.burst, atMs: nowMs };
    this.buckets.set(key, bucket);
    return bucket;
  }

  private refill(bucket: Bucket, nowMs: number): void {
    if (nowMs > bucket.atMs) {
      bucket.tokens = Math.min(this.spec.burst, bucket.tokens + (nowMs - bucket.atMs) * this.perMs);
      bucket.atMs = nowMs;
    }
  }

  /** Drops every bucket that has refilled to its burst. O(keys), at most once per `sweepMs` or when full. */
  private sweep(nowMs: number): void {
    this.lastSweepMs = nowMs;
    for (const [key, bucket] of this.buckets) {
      if (bucket.tokens + (nowMs - bucket.atMs) * this.perMs >= this.spec.burst) this.buckets.delete(key);
    }
  }
}

/** A slot held: call it once to give the slot back. */
export type Release = () => void;

interface Lane {
  running: number;
  readonly waiting: (() => void)[];
}

/**
 * At most `maxRunning` tasks at once per key; up to `maxQueued` more wait
 * their turn in order; beyond that, `RateLimitedError`. Keys without work
 * are forgotten at once, so memory follows the work in flight.
 */
export class ConcurrencyLimit {
  private readonly lanes = new Map<string, Lane>();
  private runningTotal = 0;
  private queuedTotal = 0;

  constructor(
    private readonly options: {
      readonly maxRunning: number;
      readonly maxQueued: number;
      readonly limit: LimitName;
      /** The refusal's message: caller-safe, says what to do. */
      readonly message: string;
      /** The retry hint of a refusal. */
      readonly retryAfterMs: number;
      /** Told about every refusal. */
      readonly onRefused?: (limit: LimitName) => void;
    },
  ) {}

  /** Runs `task` in `key`'s lane when a slot is free. Rejects with `RateLimitedError` when the queue is full. */
  async run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const release = await this.acquire(key);
    try {
      return await task();
    } finally {
      release();
    }
  }

  /** Waits for a slot in `key`'s lane; the returned function gives it back. */
  acquire(key: string): Promise<Release> {
    let lane = this.lanes.get(key);
    if (lane === undefined) {
      lane = { running: 0, waiting: [] };
      this.lanes.set(key, lane);
    }
    const held = lane;
    const release = once(() => this.release(key, held));
    if (held.running < this.options.maxRunning) {
      held.running++;
      this.runningTotal++;
      return Promise.resolve(release);
    }
    if (held.waiting.length >= this.options.maxQueued) {
      this.options.onRefused?.(this.options.limit);
      return Promise.reject(new RateLimitedError(this.options.message, this.options.retryAfterMs, this.options.limit));
    }
    this.queuedTotal++;
    return new Promise<Release>((resolve) => {
      held.waiting.push(() => {
        this.queuedTotal--;
        resolve(release);
      });
    });
  }

  /** Tasks running and waiting now, over every key; and how many keys have work. */
  stats(): { running: number; queued: number; keys: number } {
    return { running: this.runningTotal, queued: this.queuedTotal, keys: this.lanes.size };
  }

  private release(key: string, lane: Lane): void {
    const next = lane.waiting.shift();
    // The slot passes straight to the next in line: running stays the same.
    if (next !== undefined) return next();
    lane.running--;
    this.runningTotal--;
    if (lane.running === 0 && this.lanes.get(key) === lane) this.lanes.delete(key);
  }
}

function once(fn: () => void): Release {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}

/** The classes of calls a caller is limited in, each with its own bucket. */
export type MethodClass = "introspect" | "issue" | "revoke" | "list";

/** Which limit refused: the `limit` label of `token_service_rate_limited_total`. */
export type LimitName = `caller_${MethodClass}` | "failed_auth_peer" | "store_lookups" | "store_writes" | "token_own";

/** Configuration of {@link RateLimits}. */
export interface RateLimitOptions {
  /** Per authenticated caller (token id) and method class. */
  readonly perCaller: Readonly<Record<MethodClass, BucketSpec>>;
  /** Per peer address: failed caller authentications. */
  readonly failedAuthPerPeer: BucketSpec;
  /** Most buckets per limit (callers per class; peers). */
  readonly maxKeys: number;
  /** Store lookups (cache misses) one caller may have in flight. */
  readonly lookupsInFlightPerCaller: number;
  /** More lookups waiting per caller; beyond, RESOURCE_EXHAUSTED. */
  readonly lookupsQueuedPerCaller: number;
}

/** Where refusals are counted (implemented by `observability/metrics.ts`). */
export interface RateLimitMetrics {
  /** One request refused by `limit`. Never throws, never waits. */
  rateLimited(limit: LimitName): void;
}

/** What {@link RateLimits} reports a refusal through: the security event sink's `record`. */
export interface RateLimitEventSink {
  record(event: SecurityEvent): void;
}

/**
 * The replica's limits, in one place: the per-caller buckets, the per-peer
 * bucket of failed authentications, and the per-caller cap on store lookups
 * in flight. Each refusal is counted in metrics and reported as a
 * `rate_limit_exceeded` security event; the events carry only what
 * identifies the offender (caller or peer) and the method, so the event sink
 * folds a flood into one row per offender and window.
 */
export class RateLimits {
  private readonly perCaller: Readonly<Record<MethodClass, TokenBuckets | undefined>>;
  private readonly failedAuth: TokenBuckets | undefined;
  /** Store lookups per caller: see `introspectToken`. */
  readonly lookups: ConcurrencyLimit;
  private readonly refused = new Map<LimitName, number>();

  constructor(
    readonly options: RateLimitOptions,
    private readonly environment: Environment,
    private readonly events: RateLimitEventSink,
    private readonly metrics?: RateLimitMetrics,
  ) {
    const buckets = (spec: BucketSpec) => (isLimited(spec) ? new TokenBuckets(spec, { maxKeys: options.maxKeys }) : undefined);
    this.perCaller = {
      introspect: buckets(options.perCaller.introspect),
      issue: buckets(options.perCaller.issue),
      revoke: buckets(options.perCaller.revoke),
      list: buckets(options.perCaller.list),
    };
    this.failedAuth = buckets(options.failedAuthPerPeer);
    this.lookups = new ConcurrencyLimit({
      maxRunning: options.lookupsInFlightPerCaller,
      maxQueued: options.lookupsQueuedPerCaller,
      limit: "store_lookups",
      message: "too many token lookups in flight for this caller; retry shortly",
      retryAfterMs: 1000,
      onRefused: (limit) => this.count(limit),
    });
  }

  /**
   * Admits one call of `methodClass` by an authenticated caller, or throws
   * `RateLimitedError`. The hot path: one Map lookup and some arithmetic.
   */
  admit(caller: Caller, methodClass: MethodClass, meta: RequestMeta, nowMs: number): void {
    const buckets = this.perCaller[methodClass];
    if (buckets === undefined) return;
    const wait = buckets.take(caller.tokenId, nowMs);
    if (wait === 0) return;
    const limit: LimitName = `caller_${methodClass}`;
    this.count(limit);
    this.events.record({
      type: "rate_limit_exceeded",
      severity: "warning",
      message: `rate limit exceeded: ${methodClass} calls by one caller`,
      serviceEnvironment: this.environment,
      callerTokenId: caller.tokenId,
      callerSubject: caller.subject,
      method: meta.method,
    });
    throw new RateLimitedError(`rate limit exceeded for ${methodClass} calls; retry after ${retryAfterSeconds(wait)}s`, wait, limit);
  }

  /**
   * Before authenticating: 0 when the peer may try, else how many ms until it
   * may (its failed-authentication budget is spent). Takes nothing.
   */
  authenticationWait(meta: RequestMeta, nowMs: number): number {
    // No address has failed lately: nothing to look up, and the peer address
    // (parsed lazily by the transports) is not even read on the hot path.
    if (this.failedAuth === undefined || this.failedAuth.size === 0) return 0;
    return this.failedAuth.peek(peerOf(meta), nowMs);
  }

  /** Refuses a peer whose failed-authentication budget is spent. */
  refuseAuthentication(meta: RequestMeta, waitMs: number): never {
    this.count("failed_auth_peer");
    const peer = meta.peer;
    this.events.record({
      type: "rate_limit_exceeded",
      severity: "warning",
      message: "rate limit exceeded: failed authentications from one address",
      serviceEnvironment: this.environment,
      ...(peer !== undefined ? { peer } : {}),
      method: meta.method,
    });
    throw new RateLimitedError(`too many failed authentications from this address; retry after ${retryAfterSeconds(waitMs)}s`, waitMs, "failed_auth_peer");
  }

  /** Charges one failed authentication to the request's peer. */
  authenticationFailed(meta: RequestMeta, nowMs: number): void {
    this.failedAuth?.take(peerOf(meta), nowMs);
  }

  /** Refusals so far by limit, buckets held, lookups in flight: for metrics at scrape time. */
  stats(): { refused: ReadonlyMap<LimitName, number>; buckets: number; lookups: { running: number; queued: number } } {
    let buckets = this.failedAuth?.size ?? 0;
    for (const b of Object.values(this.perCaller)) buckets += b?.size ?? 0;
    const { running, queued } = this.lookups.stats();
    return { refused: this.refused, buckets, lookups: { running, queued } };
  }

  private count(limit: LimitName): void {
    this.refused.set(limit, (this.refused.get(limit) ?? 0) + 1);
    this.metrics?.rateLimited(limit);
  }
}

/**
 * The key of a peer's failed-authentication bucket. An IPv6 client usually
 * holds a whole /64, so IPv6 addresses are keyed by their /64: one host
 * cannot get a fresh bucket per address. Unknown peers share one bucket.
 */
export function peerOf(meta: RequestMeta): string {
  const peer = meta.peer;
  if (peer === undefined || peer === "") return "unknown";
  if (!peer.includes(":") || peer.startsWith("::ffff:")) return peer;
  return ipv6Prefix64(peer);
}

/** The first four groups of an IPv6 address, `::` expanded; the address itself if it is not one. */
function ipv6Prefix64(address: string): string {
  const [head = "", tail] = address.split("::", 2);
  const left = head === "" ? [] : head.split(":");
  const right = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = tail === undefined ? left : [...left, ...new Array<string>(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right];
  if (groups.length < 4) return address;
  return `${groups.slice(0, 4).map((g) => g.toLowerCase().replace(/^0+(?=.)/, "")).join(":")}::/64`;
}
