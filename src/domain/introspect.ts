import { ENVIRONMENTS, type Environment } from "./environment.js";
import type { RequestMeta, SecurityEvent, TokenClaims, TokenRecord } from "./model.js";
import type { TokenDeps } from "./ports.js";
import { classifyToken, digestKey, displayHint } from "./token-format.js";
import { TokenCache, type TokenCacheOptions } from "./token-cache.js";
import { millisOf, msOf, secondsOf } from "./packed-time.js";
import { LegacyJwtCache, deprecationOf, sunsetMessage, verifyLegacyJwt, type Deprecation, type LegacyCacheable, type LegacyJwtCacheOptions } from "./legacy-jwt.js";
import { TokenRateLimiter, UsageBinding, type BindingRefusal, type TokenRateLimit } from "./usage-binding.js";

/** Why a presented token is not active. */
export type InactiveReason =
  | "malformed"
  | "invalid"
  | "unknown"
  | "expired"
  | "revoked"
  | "environment_mismatch"
  | "legacy_jwt_sunset"
  /** Bound to networks, used from outside them or without a client address (`usage-binding.ts`). */
  | "network_not_allowed"
  /** Over its own rate limit on this replica; `retryAfterMs` says when to come back. */
  | "token_rate_limited";

/** What kind of credential was presented. */
export type TokenKind = "opaque" | "legacy_jwt";

/** The claims of an active token, as introspection reports them. */
export interface IntrospectedClaims extends TokenClaims {
  /** The token's id: `jti`. */
  readonly id: string;
  readonly kind: TokenKind;
  /** `iss` of a legacy JWT; opaque tokens report the service's issuer. */
  readonly issuer?: string | undefined;
  /** `aud` of a legacy JWT; opaque tokens report the service's audience. */
  readonly audience?: readonly string[];
  /** `nbf` of a legacy JWT; opaque tokens are valid from issue. */
  readonly notBefore?: Date | undefined;
}

/**
 * The answer to "what is this token?". Inactive is an expected outcome, not an
 * error (RFC 7662 §2.2): it carries a reason for the trusted caller and a
 * message the gateway may show, and no claims at all.
 */
export type IntrospectResult =
  | {
      readonly active: true;
      readonly claims: IntrospectedClaims;
      /** Set for legacy JWTs: the notice the gateway should pass on. */
      readonly deprecation?: Deprecation;
      /** A signed JWT with the same claims, when asked for (opaque tokens only). */
      readonly backendJwt?: string;
      /** True when answered from the cache: a token seen again, worth keeping a built answer for. */
      readonly fromCache?: boolean;
    }
  | {
      readonly active: false;
      readonly reason: InactiveReason;
      readonly message: string;
      /** The environment the token belongs to, when its shape says. */
      readonly tokenEnvironment?: Environment;
      /** With `token_rate_limited`: ms until the token may be used again here. */
      readonly retryAfterMs?: number;
    };

const MESSAGES: Readonly<Record<"malformed" | "unknown" | "expired" | "revoked", string>> = Object.freeze({
  malformed: "The token is malformed.",
  unknown: "The token is not recognised.",
  expired: "The token has expired.",
  revoked: "The token has been revoked.",
});

/** Frozen inactive answers, shared: the common outcomes allocate nothing. */
const INACTIVE = Object.freeze({
  malformed: Object.freeze({ active: false, reason: "malformed", message: MESSAGES.malformed }),
  unknown: Object.freeze({ active: false, reason: "unknown", message: MESSAGES.unknown }),
  expired: Object.freeze({ active: false, reason: "expired", message: MESSAGES.expired }),
  revoked: Object.freeze({ active: false, reason: "revoked", message: MESSAGES.revoked }),
} satisfies Record<string, IntrospectResult>);

const LEGACY_WITHOUT_ENV: IntrospectResult = Object.freeze({
  active: false,
  reason: "invalid",
  message: 'The token names no environment ("env" claim); this service accepts legacy JWTs only for its own environment.',
});

/** The exact message for a token from another environment. */
export function environmentMismatchMessage(token: Environment, service: Environment): string {
  return `Token environment mismatch: ${token} token used in ${service}`;
}

/** Why a token is being resolved: a caller asked about it, or it is a caller's own credential. */
export type IntrospectionUse = "introspect" | "authenticate";

/** Options of {@link introspectToken}. */
export interface IntrospectOptions {
  /** Mint a backend JWT for an active opaque token. */
  readonly backendJwt?: boolean;
  /** Reported to `deps.metrics`; default "introspect". */
  readonly use?: IntrospectionUse;
  /**
   * Whose store lookups these are, for the cap on lookups in flight
   * (`deps.limits`): the authenticated caller's token id. Unset (a caller's
   * own credential, `/auth`): the request's peer address.
   */
  readonly lookupOwner?: string;
  /**
   * The end client's address, for tokens bound to networks: from the
   * gateway (`client_address`) or the proxy's `X-Forwarded-For`. Unset: a
   * caller's own credential is judged by the request's peer address, an
   * introspected token by nothing, so a bound one is refused (fail closed).
   * A function is called only for a bound token (parsing `X-Forwarded-For`
   * is work an unbound token should not pay for).
   */
  readonly clientAddress?: string | (() => string | undefined) | undefined;
}

const NO_OPTIONS: IntrospectOptions = Object.freeze({});

/**
 * Resolves a presented token. The environment guard runs first, on the
 * token's prefix alone, so a foreign token is refused whatever the store
 * holds. A store failure propagates as `TokenError("unavailable")`: an outage
 * must never read as "inactive". Every answer is reported to `deps.metrics`.
 */
export async function introspectToken(
  deps: TokenDeps,
  presented: string,
  meta: RequestMeta,
  options: IntrospectOptions = NO_OPTIONS,
): Promise<IntrospectResult> {
  const shape = classifyToken(presented);
  if (shape.shape === "jwt") return answered(deps, options, "legacy_jwt", await introspectLegacyJwt(deps, presented, meta, options.use ?? "introspect"));
  if (shape.shape !== "opaque") return answered(deps, options, "unrecognized", INACTIVE.malformed);

  const service = deps.policy.environment;
  if (shape.environment !== service) return answered(deps, options, "opaque", environmentMismatch(deps, shape.environment, displayHint(presented), meta));

  // The hot path: one digest, one Map lookup. Only a miss reaches the store,
  // fenced so that a revocation landing meanwhile keeps the answer out of the cache.
  const now = deps.clock.now();
  const nowMs = now.getTime();
  const key = digestKey(presented);
  const hit = deps.cache.get(key, nowMs);
  const fromCache = hit !== undefined;
  let token: CachedToken | null;
  if (hit !== undefined) {
    token = hit.record;
  } else {
    token = await deps.cache.load(key, nowMs, (provenAt) => lookUp(deps, key, options.lookupOwner ?? `peer:${meta.peer ?? ""}`, provenAt));
  }
  deps.tracing?.cacheOutcome(hit === undefined ? "miss" : hit.record === null ? "negative" : "hit", options.use ?? "introspect");
  // A row from another environment can only exist in a store shared across
  // environments; the prefix check above already makes this unreachable, but
  // the record's own environment is the authority.
  if (token === null || token.environment !== service) return answered(deps, options, "opaque", INACTIVE.unknown);
  if (token.revoked) return answered(deps, options, "opaque", INACTIVE.revoked);
  if (token.expiresAtMs <= nowMs) return answered(deps, options, "opaque", INACTIVE.expired);
  if (token.binding !== undefined) {
    const given = options.clientAddress;
    const client = typeof given === "function" ? given() : (given ?? (options.use === "authenticate" ? meta.peer : undefined));
    const refused = token.binding.check(token.id, client, deps.tokenRates ?? SHARED_TOKEN_RATES, nowMs);
    if (refused !== undefined) return answered(deps, options, "opaque", bindingRefused(deps, token, refused, meta));
  }
  const claims: IntrospectedClaims = token;

  deps.usage.note(claims.id, now);
  // Only tokens linked by rotation pay for this (domain/rotate.ts); the watcher returns at once.
  if (token.predecessorId !== undefined) deps.lifecycle?.watcher.successorUsed(token.id, token.predecessorId);
  if (token.successorId !== undefined) deps.lifecycle?.watcher.rotatedTokenUsed(token.id, displayHint(presented), meta);
  if (options.backendJwt) return answered(deps, options, "opaque", { active: true, claims, backendJwt: await deps.backendJwt.mint(claims, now) });
  return answered(deps, options, "opaque", { active: true, claims, fromCache });
}

/**
 * A cache miss's store read. Identical misses in flight already share one
 * (`TokenCache.load`); here each owner (one gateway credential, one address)
 * may have only so many reads in flight, the rest wait in a bounded queue
 * and beyond it are refused, retryably: a flood of unknown tokens through one
 * gateway costs a bounded share of the store instead of all of it, and that
 * gateway is never throttled for the tokens it relays (RFC 7662 §4 asks us to
 * resist token scanning, not to punish the relay).
 */
function lookUp(deps: TokenDeps, key: string, owner: string, provenAt: (atMs: number) => void): Promise<CachedToken | null> {
  const read = async () => {
    const record = await deps.store.findByDigest(Buffer.from(key, "base64"), provenAt);
    return record === undefined ? null : new CachedToken(record);
  };
  return deps.limits === undefined ? read() : deps.limits.lookups.run(owner, read);
}

/** Reports an answer to the metrics port, if there is one, and returns it. */
function answered(deps: TokenDeps, options: IntrospectOptions, kind: TokenKind | "unrecognized", result: IntrospectResult): IntrospectResult {
  deps.metrics?.introspected(kind, result.active ? "active" : result.reason, options.use ?? "introspect");
  return result;
}

/** Per-token buckets when the deps bring none (tools, tests): one per process, like the deps' own. */
const SHARED_TOKEN_RATES = new TokenRateLimiter();

const NETWORK_NOT_ALLOWED: IntrospectResult = Object.freeze({ active: false, reason: "network_not_allowed", message: "The token may not be used from this network." });

/** The answer for a bound token's refused use, with its security event. */
function bindingRefused(deps: TokenDeps, token: CachedToken, refused: BindingRefusal, meta: RequestMeta): IntrospectResult {
  const common = { serviceEnvironment: deps.policy.environment, tokenId: token.id, ...metaFields(meta) };
  if (refused.kind === "network") {
    // The client's address is not in the event's fold key on purpose: a
    // stolen token tried from many addresses is one row with a count.
    deps.events.record({ type: "token_network_denied", severity: "warning", message: "token bound to networks used from outside them (or without a client address)", ...common });
    return NETWORK_NOT_ALLOWED;
  }
  deps.events.record({ type: "rate_limit_exceeded", severity: "warning", message: "token over its own rate limit", ...common });
  const seconds = Math.max(1, Math.ceil(refused.retryAfterMs / 1000));
  return { active: false, reason: "token_rate_limited", message: `The token is over its rate limit; retry after ${seconds}s.`, retryAfterMs: refused.retryAfterMs };
}

/** Refuses a token of another environment and raises the critical security event. */
function environmentMismatch(deps: TokenDeps, tokenEnvironment: Environment, tokenHint: string, meta: RequestMeta): IntrospectResult {
  const service = deps.policy.environment;
  const message = environmentMismatchMessage(tokenEnvironment, service);
  deps.events.record({
    type: "environment_mismatch",
    severity: "critical",
    message,
    serviceEnvironment: service,
    tokenEnvironment,
    tokenHint,
    ...metaFields(meta),
  });
  return { active: false, reason: "environment_mismatch", message, tokenEnvironment };
}

/**
 * A legacy JWT: accepted through the deprecation window with a notice, then
 * refused. Its `env` claim meets the same environment guard as a prefix (and
 * must be there with `LEGACY_JWT_REQUIRE_ENV`), and a revoked `jti` is
 * refused like a revoked token. Only an introspection is counted as a use
 * (`ListLegacyJwtUsage`): a legacy JWT sent as a caller's own credential is
 * always refused, so it is not one.
 *
 * A verified JWT's answer (active, revoked, or refused by the environment
 * guard) is kept in `deps.legacy.cache` by digest until its `exp`
 * (`LegacyJwtCache`): a repeat skips the signature and the store. What must
 * hold at every read is checked at every read: the sunset date (before the
 * cache), `exp` and `nbf` (by the cache), the use counted, the security
 * event raised again. A revoked `jti` evicts its answers on every replica
 * (the revocation log's notice, `RevocationHub`).
 */
async function introspectLegacyJwt(deps: TokenDeps, jwt: string, meta: RequestMeta, use: IntrospectionUse): Promise<IntrospectResult> {
  const policy = deps.legacy.policy;
  if (policy.keys.length === 0) return { active: false, reason: "malformed", message: "Legacy JWTs are not accepted by this service; send an API token." };
  const now = deps.clock.now();
  const nowMs = now.getTime();
  // Checked at every read, before the cache: a kept answer turns into the sunset answer on the date.
  if (nowMs >= policy.sunsetAt.getTime()) return { active: false, reason: "legacy_jwt_sunset", message: sunsetMessage(policy) };

  const cache = deps.legacy.cache;
  const key = cache !== undefined && jwt.length <= policy.maxLength ? digestKey(jwt) : undefined;
  if (key !== undefined) {
    const kept = cache!.get(key, nowMs);
    if (kept !== undefined) {
      if (kept.event !== undefined) deps.events.record({ ...kept.event, ...metaFields(meta) });
      if (kept.subject !== undefined && use === "introspect") deps.legacy.usage.note(kept.subject, now);
      return kept.result;
    }
  }
  // Before the revocation read: a jti revoked meanwhile keeps this answer out of the cache.
  const fence = cache?.fence() ?? 0;
  const kept = await verifyLegacyAnswer(deps, policy, jwt, now);
  if (kept.event !== undefined) deps.events.record({ ...kept.event, ...metaFields(meta) });
  if (kept.subject !== undefined && use === "introspect") deps.legacy.usage.note(kept.subject, now);
  if (key !== undefined && kept.expiresAtMs > nowMs) cache!.put(key, kept, fence, nowMs);
  // `fromCache` only on a repeat: a one-off JWT must not churn the edge's built answers.
  return kept.result.active ? { ...kept.result, fromCache: false } : kept.result;
}

/** A legacy JWT that did not verify: its answer, kept nowhere. */
function legacyRefused(result: IntrospectResult): KeptLegacyAnswer {
  return { result, jti: undefined, expiresAtMs: 0, validFromMs: 0, subject: undefined, event: undefined };
}

/** The full check of a legacy JWT: signature and claims, environment guard, jti revocation. */
async function verifyLegacyAnswer(deps: TokenDeps, policy: TokenDeps["legacy"]["policy"], jwt: string, now: Date): Promise<KeptLegacyAnswer> {
  const checked = await verifyLegacyJwt(policy, jwt, now);
  if (!checked.ok) return legacyRefused({ active: false, reason: checked.reason, message: checked.message });
  const claims = checked.claims;
  const service = deps.policy.environment;
  const expiresAtMs = claims.expiresAt!.getTime();
  // nbf was accepted with the clock tolerance: so is every later read (earlier only with a clock set back).
  const validFromMs = (claims.notBefore?.getTime() ?? Number.NEGATIVE_INFINITY) - policy.clockToleranceSec * 1000;
  const kept = (result: IntrospectResult, extra: Partial<KeptLegacyAnswer> = {}): KeptLegacyAnswer =>
    Object.freeze({ result, jti: claims.jti, expiresAtMs, validFromMs, subject: undefined, event: undefined, ...extra });
  if (claims.claimedEnvironment !== undefined && claims.claimedEnvironment !== service) {
    // The environment guard's verdict is part of the kept answer, its critical event raised on every use.
    const message = environmentMismatchMessage(claims.claimedEnvironment, service);
    return kept(
      { active: false, reason: "environment_mismatch", message, tokenEnvironment: claims.claimedEnvironment },
      { event: { type: "environment_mismatch", severity: "critical", message, serviceEnvironment: service, tokenEnvironment: claims.claimedEnvironment, tokenHint: displayHint(jwt) } },
    );
  }
  if (claims.claimedEnvironment === undefined && policy.requireEnv) {
    // Without `env` a JWT could come from any environment whose secret it
    // shares: refused, and said so to whoever watches security events.
    return kept(LEGACY_WITHOUT_ENV, {
      event: {
        type: "legacy_jwt_without_env",
        severity: "warning",
        message: "legacy JWT without env claim refused (LEGACY_JWT_REQUIRE_ENV)",
        serviceEnvironment: service,
        callerSubject: claims.subject,
        tokenHint: displayHint(jwt),
      },
    });
  }
  let event: KeptLegacyAnswer["event"];
  if (claims.jti === undefined) {
    if (policy.requireJti) return legacyRefused({ active: false, reason: "invalid", message: "The token has no jti claim; this service requires one." });
    // Accepted, but it cannot be revoked one by one: said on every use (folded into one row per window).
    event = {
      type: "legacy_jwt_without_jti",
      severity: "warning",
      message: "legacy JWT without jti accepted; it cannot be revoked individually",
      serviceEnvironment: service,
      callerSubject: claims.subject,
      tokenHint: displayHint(jwt),
    };
  } else if (await deps.legacy.store.isRevoked(claims.jti)) {
    // Revocation is never undone: kept until exp like any other answer.
    return kept(INACTIVE.revoked);
  }
  const result: IntrospectResult = Object.freeze({
    active: true,
    claims: Object.freeze({ ...claims, environment: service, id: claims.jti ?? "", kind: "legacy_jwt" as const }),
    deprecation: deprecationFor(policy),
    // Each kept answer is one object shared by every hit: the edge may keep its encoding.
    fromCache: true,
  });
  return kept(result, { subject: claims.subject, event });
}

/** The deprecation notice of a policy, built once per policy. */
function deprecationFor(policy: TokenDeps["legacy"]["policy"]): Deprecation {
  let notice = DEPRECATIONS.get(policy);
  if (notice === undefined) DEPRECATIONS.set(policy, (notice = Object.freeze(deprecationOf(policy))));
  return notice;
}

const DEPRECATIONS = new WeakMap<object, Deprecation>();

/**
 * A legacy answer as kept by `LegacyJwtCache` until the JWT's `exp`: the
 * answer itself (one frozen object for every hit), whose use to count, and
 * the security event to raise again on every use.
 */
export interface KeptLegacyAnswer extends LegacyCacheable {
  readonly result: IntrospectResult;
  /** Set on an active answer: the subject counted in `ListLegacyJwtUsage`. */
  readonly subject: string | undefined;
  /** Raised on every use, with the request's facts added. */
  readonly event: Omit<SecurityEvent, "method" | "peer" | "userAgent" | "requestId"> | undefined;
}

/** The replica's cache of legacy JWT answers. */
export type LegacyAnswerCache = LegacyJwtCache<KeptLegacyAnswer>;

/** Builds the replica's legacy JWT answer cache. */
export function createLegacyAnswerCache(options: LegacyJwtCacheOptions): LegacyAnswerCache {
  return new LegacyJwtCache<KeptLegacyAnswer>(options);
}

/** The rarely set parts of a cached token, kept out of line so the common token pays one field for them. */
interface TokenExtras {
  readonly allowedNetworks: readonly string[];
  readonly rateLimit: TokenRateLimit | undefined;
  readonly binding: UsageBinding | undefined;
  readonly predecessorId: string | undefined;
  readonly successorId: string | undefined;
  /** Set only for an environment outside `ENVIRONMENTS` (a row from a store shared more widely). */
  readonly environment: Environment | undefined;
}

/**
 * What many tokens share: their lists and metadata, interned as one frozen
 * object, so a token pays one field for all four and nothing for the lists.
 */
interface TokenProfile {
  readonly teams: readonly string[];
  readonly scopes: readonly string[];
  readonly namespaces: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  /**
   * Estimated bytes when the token holds this profile alone (the table of
   * shared ones was full); 0 for a shared profile, whose bounded cost is
   * not any one token's.
   */
  readonly ownBytes: number;
}

// Bit layout of CachedToken.bits: flags, environment, and the ms parts of the two times.
const ADMIN = 1;
const REVOKED = 2;
const NEVER_EXPIRES = 4;
const ENV_SHIFT = 3; // two bits: index in ENVIRONMENTS, 3 = in extras
const ISSUED_MS_SHIFT = 5; // ten bits
const EXPIRES_MS_SHIFT = 15; // ten bits
const OTHER_ENVIRONMENT = 3;

/**
 * What the cache keeps of a stored token: its claims, built once and shared
 * by every hit, and whether it is revoked. Not the row: no digest, no
 * bookkeeping columns. Laid out for a cache of a million: nine fields, each
 * a pointer or a small integer V8 keeps in the field itself (see
 * `packed-time.ts`), so a token is 96 bytes plus its four own strings.
 * Lists and metadata are one shared `TokenProfile`; flags, environment and
 * the times' ms parts are packed in `bits`; what only bound or rotated
 * tokens carry is in `extras`. Every claim is a getter over these, on the
 * prototype, costing no memory per token. Expiry is judged at read time.
 */
export class CachedToken implements IntrospectedClaims {
  readonly id: string;
  readonly subject: string;
  readonly fullName: string;
  readonly name: string;
  private readonly profile: TokenProfile;
  /** `issuedAt`'s whole seconds since 2020. */
  private readonly issuedS: number;
  /** `expiresAt`'s whole seconds since 2020; 0 when it never expires (NEVER_EXPIRES). */
  private readonly expiresS: number;
  private readonly bits: number;
  private readonly extras: TokenExtras | undefined;

  constructor(record: TokenRecord) {
    this.id = record.id;
    this.subject = record.subject;
    this.fullName = record.fullName;
    this.name = record.name;
    this.profile = profileOf(record);
    const issuedMs = record.createdAt.getTime();
    this.issuedS = secondsOf(issuedMs);
    let bits = (record.isAdmin ? ADMIN : 0) | (record.revokedAt !== null ? REVOKED : 0) | (millisOf(issuedMs) << ISSUED_MS_SHIFT);
    if (record.expiresAt === null) {
      this.expiresS = 0;
      bits |= NEVER_EXPIRES;
    } else {
      const expiresMs = record.expiresAt.getTime();
      this.expiresS = secondsOf(expiresMs);
      bits |= millisOf(expiresMs) << EXPIRES_MS_SHIFT;
    }
    const environment = ENVIRONMENTS.indexOf(record.environment);
    bits |= (environment < 0 ? OTHER_ENVIRONMENT : environment) << ENV_SHIFT;
    this.bits = bits;
    const networks = record.allowedNetworks ?? NO_STRINGS;
    const predecessorId = record.rotation?.predecessorId ?? undefined;
    const successorId = record.rotation?.successorId ?? undefined;
    this.extras =
      networks.length === 0 && record.rateLimit === undefined && predecessorId === undefined && successorId === undefined && environment >= 0
        ? undefined
        : {
            allowedNetworks: internList(networks),
            rateLimit: record.rateLimit,
            binding: UsageBinding.of(networks, record.rateLimit),
            predecessorId,
            successorId,
            environment: environment < 0 ? record.environment : undefined,
          };
  }

  /** What this token's profile costs it alone (see `TokenProfile.ownBytes`). */
  get profileBytes(): number {
    return this.profile.ownBytes;
  }

  get kind(): "opaque" {
    return "opaque";
  }

  get teams(): readonly string[] {
    return this.profile.teams;
  }

  get scopes(): readonly string[] {
    return this.profile.scopes;
  }

  get namespaces(): readonly string[] {
    return this.profile.namespaces;
  }

  get metadata(): Readonly<Record<string, string>> {
    return this.profile.metadata;
  }

  get isAdmin(): boolean {
    return (this.bits & ADMIN) !== 0;
  }

  get revoked(): boolean {
    return (this.bits & REVOKED) !== 0;
  }

  get environment(): Environment {
    const index = (this.bits >>> ENV_SHIFT) & 3;
    return index === OTHER_ENVIRONMENT ? this.extras!.environment! : ENVIRONMENTS[index]!;
  }

  get issuedAtMs(): number {
    return msOf(this.issuedS, (this.bits >>> ISSUED_MS_SHIFT) & 1023);
  }

  /** Infinity when the token never expires. */
  get expiresAtMs(): number {
    return (this.bits & NEVER_EXPIRES) !== 0 ? Number.POSITIVE_INFINITY : msOf(this.expiresS, (this.bits >>> EXPIRES_MS_SHIFT) & 1023);
  }

  get allowedNetworks(): readonly string[] {
    return this.extras?.allowedNetworks ?? NO_STRINGS;
  }

  get rateLimit(): TokenRateLimit | undefined {
    return this.extras?.rateLimit;
  }

  /** Parsed once; undefined for a token bound to nothing, so the hot path checks one field. */
  get binding(): UsageBinding | undefined {
    return this.extras?.binding;
  }

  /** The token this one replaced through rotation, if any. */
  get predecessorId(): string | undefined {
    return this.extras?.predecessorId;
  }

  /** The token that replaced this one through rotation, if any. */
  get successorId(): string | undefined {
    return this.extras?.successorId;
  }

  get issuedAt(): Date {
    return new Date(this.issuedAtMs);
  }

  get expiresAt(): Date | null {
    return (this.bits & NEVER_EXPIRES) !== 0 ? null : new Date(this.expiresAtMs);
  }
}

/** The replica's introspection cache. */
export type IntrospectionCache = TokenCache<CachedToken | null>;

/** Builds the replica's introspection cache with the given limits. */
export function createIntrospectionCache(limits: Omit<TokenCacheOptions<CachedToken | null>, "sizeOf" | "isNegative">): IntrospectionCache {
  return new TokenCache<CachedToken | null>({ ...limits, sizeOf: estimateBytes });
}

/**
 * The bytes one entry adds to the process, for the cache's memory bound
 * (CACHE_MAX_MEGABYTES) and its reported size: the key, the Map's slot, the
 * cache entry, the token and its own strings, times what the V8 heap commits
 * beyond what is live. Shared profiles and interned names are not counted
 * (bounded, and shared by every token that has them). Calibrated against
 * `bench/cache-memory.ts`, which measures RSS after a full GC at 100,000 and
 * 1,000,000 tokens; see the README's cache section.
 */
export function estimateBytes(key: string, token: CachedToken | null): number {
  if (token === null) return HEAP_OVERHEAD * (ENTRY_BYTES + stringBytes(key));
  let bytes = ENTRY_BYTES + TOKEN_BYTES + stringBytes(key) + stringBytes(token.id) + stringBytes(token.subject) + stringBytes(token.fullName) + stringBytes(token.name);
  if (token.binding !== undefined || token.predecessorId !== undefined || token.successorId !== undefined) bytes += EXTRAS_BYTES;
  // A profile of its own (distinct lists or metadata past the shared table's
  // bound) is this token's memory: without it, tokens with large unique
  // metadata would slip past CACHE_MAX_MEGABYTES.
  bytes += token.profileBytes;
  return Math.round(HEAP_OVERHEAD * bytes);
}

/** A Map slot (three words, plus its share of the bucket array at the table's average fill) and an `Entry` (header and three fields). */
const ENTRY_BYTES = 40 + 48;
/** A `CachedToken`: header and nine fields. */
const TOKEN_BYTES = 24 + 9 * 8;
/** The extras object with its binding, for the few tokens that have one. */
const EXTRAS_BYTES = 200;
/**
 * RSS over live bytes after a full GC, as measured (README, "Memory per
 * cached token"): 1.4 for the cache filled alone, 1.8-2.0 in the service
 * at 100,000 tokens, whose misses leave more garbage between the entries.
 * Chosen so both are within ±20 %.
 */
const HEAP_OVERHEAD = 1.58;

/** A sequential string's size: 16-byte header, one byte a character (two if any is outside Latin-1), to 8 bytes. */
function stringBytes(value: string): number {
  const width = /^[\u0000-\u00ff]*$/.test(value) ? 1 : 2;
  return (16 + value.length * width + 7) & ~7;
}

/**
 * Strings that repeat across many tokens (network names) are kept once: the
 * driver makes a new string per row. Bounded, so a flood of distinct names
 * cannot grow it without limit.
 */
const INTERNED = new Map<string, string>();
const MAX_INTERNED = 50_000;

function intern(value: string): string {
  const known = INTERNED.get(value);
  if (known !== undefined) return known;
  if (INTERNED.size < MAX_INTERNED) INTERNED.set(value, value);
  return value;
}

const NO_STRINGS: readonly string[] = Object.freeze([]);
const NO_METADATA: Readonly<Record<string, string>> = Object.freeze({});

function internList(values: readonly string[]): readonly string[] {
  return values.length === 0 ? NO_STRINGS : Object.freeze(values.map(intern));
}

/**
 * Profiles by their content: tokens of one team with one set of scopes
 * share one. Bounded like `INTERNED`; past the bound a token gets a profile
 * of its own (correct, only larger).
 */
const PROFILES = new Map<string, TokenProfile>();
const MAX_PROFILES = 20_000;

function profileOf(record: TokenRecord): TokenProfile {
  const metadata = record.metadata;
  let hasMetadata = false;
  for (const _ in metadata) {
    hasMetadata = true;
    break;
  }
  const key = JSON.stringify([record.teams, record.scopes, record.namespaces, hasMetadata ? metadata : 0]);
  const known = PROFILES.get(key);
  if (known !== undefined) return known;
  const shared = PROFILES.size < MAX_PROFILES;
  const lists = { teams: internList(record.teams), scopes: internList(record.scopes), namespaces: internList(record.namespaces) };
  const ownMetadata = hasMetadata ? Object.freeze({ ...metadata }) : NO_METADATA;
  const profile: TokenProfile = Object.freeze({ ...lists, metadata: ownMetadata, ownBytes: shared ? 0 : profileBytes(lists, ownMetadata) });
  if (shared) PROFILES.set(key, profile);
  return profile;
}

/** A profile's own objects: the profile, three lists and their strings, the metadata object and its strings. */
function profileBytes(lists: { readonly teams: readonly string[]; readonly scopes: readonly string[]; readonly namespaces: readonly string[] }, metadata: Readonly<Record<string, string>>): number {
  let bytes = 24 + 5 * 8;
  for (const list of [lists.teams, lists.scopes, lists.namespaces]) {
    if (list.length === 0) continue;
    bytes += 32 + 16 + 8 * list.length;
    for (const value of list) bytes += stringBytes(value);
  }
  if (metadata !== NO_METADATA) {
    bytes += 56;
    for (const name in metadata) bytes += 16 + stringBytes(name) + stringBytes(metadata[name] ?? "");
  }
  return bytes;
}

/** The request facts every security event carries. */
export function metaFields(meta: RequestMeta): { method: string; peer?: string; userAgent?: string; requestId?: string } {
  const requestId = meta.requestId;
  return {
    method: meta.method,
    ...(meta.peer ? { peer: meta.peer } : {}),
    ...(meta.userAgent ? { userAgent: meta.userAgent } : {}),
    ...(requestId ? { requestId } : {}),
  };
}
