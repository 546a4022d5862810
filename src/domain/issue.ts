import { deny } from "./access.js";
import { buildClaims, newTokenRecord } from "./claims.js";
import { invalidArgument } from "./errors.js";
import type { Caller, RequestMeta, TokenRecord } from "./model.js";
import { SCOPES } from "./model.js";
import type { TokenDeps } from "./ports.js";
import { displayHint, mintToken } from "./token-format.js";
import * as rules from "./validation.js";
import { networksOutside, rateLimitWithin, validateNetworks, validateRateLimit, type TokenRateLimit } from "./usage-binding.js";

/** An `IssueToken` request, as the domain sees it. */
export interface IssueInput {
  readonly name: string;
  readonly scopes: readonly string[];
  readonly teams: readonly string[];
  readonly namespaces: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  /** Lifetime from now, if the request set one. */
  readonly ttlMs?: number;
  /** Absolute expiry, if the request set one. */
  readonly expiresAt?: Date;
  /** Admins only; empty means the caller's own subject. */
  readonly subject: string;
  /** Admins only. */
  readonly fullName: string;
  /** Admins only. */
  readonly isAdmin: boolean;
  /** CIDRs the token may be used from; empty or absent: any (or the caller's, see {@link issueToken}). */
  readonly allowedNetworks?: readonly string[];
  /** The token's own rate limit; absent: none (or the caller's). */
  readonly rateLimit?: TokenRateLimit | undefined;
}

/** A newly issued token: the secret, shown once, and its stored record. */
export interface IssuedToken {
  readonly token: string;
  readonly record: TokenRecord;
}

/**
 * Issues a token. Everything is validated before anything is written; a
 * non-admin may only issue for itself, within the scopes, teams and
 * namespaces it holds, and no longer-lived than its own token (otherwise a
 * short-lived token could mint itself a long-lived successor).
 */
export async function issueToken(deps: TokenDeps, caller: Caller, input: IssueInput, meta: RequestMeta): Promise<IssuedToken> {
  const { policy } = deps;
  const now = deps.clock.now();
  const name = rules.requiredText("name", input.name, 128);
  const scopes = rules.scopes("scopes", input.scopes);
  const teams = rules.labels("teams", input.teams);
  const namespaces = rules.labels("namespaces", input.namespaces);
  const metadata = rules.metadata("metadata", input.metadata);
  const requestedSubject = rules.optionalText("subject", input.subject, 256);
  const fullName = rules.optionalText("full_name", input.fullName, 256);
  let expiresAt = expiryOf(deps, input, now);
  let allowedNetworks = validateNetworks("allowed_networks", input.allowedNetworks ?? []);
  let rateLimit = input.rateLimit === undefined ? undefined : validateRateLimit("rate_limit", input.rateLimit);

  let subject = caller.subject;
  if (!caller.isAdmin) {
    if (requestedSubject !== "" && requestedSubject !== caller.subject) deny(deps, caller, meta, "only admins may issue tokens for another subject");
    if (fullName !== "") deny(deps, caller, meta, "only admins may set full_name");
    if (input.isAdmin) deny(deps, caller, meta, "only admins may issue admin tokens");
    requireSubset(deps, caller, meta, "scopes", scopes, caller.scopes);
    requireSubset(deps, caller, meta, "teams", teams, caller.teams);
    requireSubset(deps, caller, meta, "namespaces", namespaces, caller.namespaces);
    requireAllowedMetadata(deps, caller, meta, input.metadata);
    const askedForExpiry = input.ttlMs !== undefined || input.expiresAt !== undefined;
    if (caller.expiresAt !== null && (expiresAt === null || expiresAt.getTime() > caller.expiresAt.getTime())) {
      // Unasked, the default lifetime is simply cut to the caller's own.
      if (!askedForExpiry) expiresAt = caller.expiresAt;
      else deny(deps, caller, meta, `the new token may not outlive yours (which expires at ${caller.expiresAt.toISOString()})`);
    }
    // Bindings narrow like expiry: unasked, the caller's own are inherited;
    // asked, they may be no broader (every network inside one of the
    // caller's; no larger burst and no higher rate).
    const heldNetworks = caller.allowedNetworks ?? [];
    if (heldNetworks.length > 0) {
      if (allowedNetworks.length === 0) allowedNetworks = heldNetworks;
      else {
        const outside = networksOutside(allowedNetworks, heldNetworks);
        if (outside > 0) deny(deps, caller, meta, `allowed_networks: the new token may be used only within your own networks; ${outside} of those asked for are not inside them`);
      }
    }
    if (caller.rateLimit !== undefined) {
      if (rateLimit === undefined) rateLimit = caller.rateLimit;
      else if (!rateLimitWithin(rateLimit, caller.rateLimit)) deny(deps, caller, meta, "rate_limit: the new token's limit may be no looser than yours (no more requests, no higher rate)");
    }
  } else if (requestedSubject !== "") {
    subject = requestedSubject;
  }

  const claims = buildClaims({
    subject,
    fullName: fullName !== "" ? fullName : subject === caller.subject ? caller.fullName : "",
    name,
    teams,
    scopes,
    namespaces,
    isAdmin: input.isAdmin,
    metadata,
    environment: policy.environment,
    issuedAt: now,
    expiresAt,
    allowedNetworks,
    rateLimit,
  });
  const minted = mintToken(policy.environment);
  // The caller's own token id is recorded, so a leak can be followed to everything it made.
  const record = await deps.store.insert(newTokenRecord(claims, minted, caller.subject, caller.tokenId), {
    maxActivePerSubject: policy.maxActiveTokensPerSubject,
    now,
  });
  deps.log.info({ token_id: record.id, token_hint: minted.displayHint, subject, created_by: caller.subject, issued_by_token_id: caller.tokenId, is_admin: record.isAdmin }, "token issued");
  return { token: minted.token, record };
}

/**
 * The expiry a request asks for, checked against the service's policy: a
 * lifetime of 1s up to the maximum, or an instant in that window. Checked
 * before any Date is made from it, so no lifetime can overflow into an
 * invalid Date that would slip past the comparisons.
 */
function expiryOf(deps: TokenDeps, input: IssueInput, now: Date): Date | null {
  const { policy } = deps;
  if (input.ttlMs !== undefined) {
    const ttlMs = rules.durationWithin("ttl", input.ttlMs, MIN_TTL_MS, policy.maxTtlMs);
    return new Date(now.getTime() + ttlMs);
  }
  if (input.expiresAt !== undefined) {
    const ahead = input.expiresAt.getTime() - now.getTime();
    if (!(ahead >= MIN_TTL_MS && ahead <= policy.maxTtlMs)) {
      throw invalidArgument("expire_time", `must be at least ${rules.formatDuration(MIN_TTL_MS)} and at most ${rules.formatDuration(policy.maxTtlMs)} from now`);
    }
    return input.expiresAt;
  }
  return policy.requireExpiry ? new Date(now.getTime() + policy.defaultTtlMs) : null;
}

/** The shortest lifetime a token may be issued with. */
const MIN_TTL_MS = 1000;

/**
 * Refuses values the caller does not hold. The refusal counts them rather
 * than listing them: a caller's error message never repeats what it sent.
 */
function requireSubset(deps: TokenDeps, caller: Caller, meta: RequestMeta, field: string, wanted: readonly string[], held: readonly string[]): void {
  const extra = wanted.filter((value) => !held.includes(value));
  if (extra.length > 0) deny(deps, caller, meta, `${field}: you may only grant ${field} you hold yourself; ${extra.length} of those asked for are not held`);
}

/**
 * Metadata reaches gateways beside the claims (introspection answers, backend
 * JWTs, forward-auth headers), and a gateway may read a key such as `role`
 * or `tenant` as a claim. So a non-admin may set only the keys an admin
 * allowed (`TOKEN_METADATA_ALLOWED_KEYS`). The refusal names the entry by
 * its index, never by the key the caller sent. A protobuf map has no order
 * on the wire, so entries are counted in key order (by UTF-16 code unit),
 * which the caller can reproduce.
 */
function requireAllowedMetadata(deps: TokenDeps, caller: Caller, meta: RequestMeta, metadata: Readonly<Record<string, string>>): void {
  const allowed = deps.policy.metadataAllowedKeys;
  const keys = Object.keys(metadata).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const index = keys.findIndex((key) => !allowed.includes(key));
  if (index >= 0) {
    deny(deps, caller, meta, `metadata[${index}]: this key may be set by admins only; an admin may allow it for everyone (TOKEN_METADATA_ALLOWED_KEYS). Entries are counted in key order`);
  }
}

/** Milliseconds as the largest whole unit, e.g. `90d`, `12h`. */
export function formatDuration(ms: number): string {
  const units: [string, number][] = [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]];
  for (const [unit, size] of units) if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

/**
 * Creates an admin token directly in the store, for the first operator (the
 * CLI's `bootstrap` and the first start of a development server). Records a
 * `platform_admin_bootstrap` security event. The claims come from the same
 * builder as every other token.
 */
export async function bootstrapAdmin(deps: TokenDeps, subjectInput: string, source: "cli" | "first-start"): Promise<IssuedToken> {
  const subject = rules.requiredText("subject", subjectInput, 256);
  const now = deps.clock.now();
  const claims = buildClaims({
    subject,
    name: "platform-admin-bootstrap",
    isAdmin: true,
    scopes: Object.values(SCOPES),
    metadata: { source },
    environment: deps.policy.environment,
    issuedAt: now,
    expiresAt: new Date(now.getTime() + deps.policy.defaultTtlMs),
  });
  const minted = mintToken(deps.policy.environment);
  // The cap would only block an operator locked out of their own service.
  const record = await deps.store.insert(newTokenRecord(claims, minted, "bootstrap", null), { maxActivePerSubject: Number.MAX_SAFE_INTEGER, now });
  deps.events.record({
    type: "platform_admin_bootstrap",
    severity: "info",
    message: `platform admin token bootstrapped for ${subject} (${source})`,
    serviceEnvironment: deps.policy.environment,
    tokenId: record.id,
    tokenHint: displayHint(minted.token),
    callerSubject: subject,
    method: source === "cli" ? "tokenctl bootstrap" : "first start",
  });
  return { token: minted.token, record };
}
