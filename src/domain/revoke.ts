import { requireAdmin } from "./access.js";
import { verifyLegacyJwt } from "./legacy-jwt.js";
import { TokenError, invalidArgument } from "./errors.js";
import { environmentMismatchMessage, metaFields } from "./introspect.js";
import type { Caller, RequestMeta, TokenRecord } from "./model.js";
import type { Revocation, RevokeOutcome, RevokeTarget, TokenDeps } from "./ports.js";
import { MAX_PRESENTED_TOKEN_LENGTH, classifyToken, digestToken, displayHint, keyOfDigest } from "./token-format.js";
import * as rules from "./validation.js";

/** What to revoke: a token by value or by id, or a legacy JWT by `jti`. */
export type RevokeInput =
  | { readonly token: string; readonly reason: string; readonly cascade?: boolean }
  | { readonly tokenId: string; readonly reason: string; readonly cascade?: boolean }
  | { readonly legacyJti: string; readonly reason: string; readonly cascade?: boolean };

/** The outcome of a revocation. */
export interface RevokeResult {
  /** The token, when it exists and the caller may see it (owner or admin). */
  readonly record?: TokenRecord;
  /** True when it had been revoked before this call. */
  readonly alreadyRevoked: boolean;
  /** How many tokens this call revoked: the token itself (0 or 1) plus, with cascade, its descendants. */
  readonly revokedCount: number;
}

/**
 * Revokes a token, idempotently. By value, possession is authority (RFC 7009
 * §2.1): anyone with `tokens.revoke` who holds a token may kill it, and an
 * unknown or invalid value succeeds without saying so (RFC 7009 §2.2). By id,
 * admins revoke any token and others only their own; an unknown id and
 * another subject's id are the same `not_found`, so ids cannot be probed.
 *
 * With `cascade`, every token issued below it (through `issuedByTokenId`) is
 * revoked in the same transaction. Only the named token's permission is
 * checked: its descendants were made with its authority, so whoever may
 * revoke it may revoke them. That reaches other subjects only below an admin
 * token (a non-admin issues only non-admin tokens for itself), and holding
 * an admin token, or being its subject, already allows as much.
 * The store write is committed before this resolves. Without cascade,
 * finding the token and revoking it is one call to the store (one round
 * trip): the scope (environment, and the subject for a non-admin by id) is
 * a condition of the revocation itself, not a read before it.
 */
export async function revokeToken(deps: TokenDeps, caller: Caller, input: RevokeInput, meta: RequestMeta): Promise<RevokeResult> {
  const reason = rules.optionalText("reason", input.reason, 512);

  if ("legacyJti" in input) {
    requireAdmin(deps, caller, meta, "revoke a legacy JWT by its jti");
    const jti = rules.requiredText("legacy_jti", input.legacyJti, 256);
    return revokeLegacyJti(deps, caller, jti, { reason, expiresAt: null, hint: undefined }, meta);
  }
  let target: RevokeTarget;
  let hint: string | undefined;
  if ("token" in input) {
    if (input.token === "") throw invalidArgument("token", "is required (or give token_id)");
    if (input.token.length > MAX_PRESENTED_TOKEN_LENGTH) throw invalidArgument("token", `must be at most ${MAX_PRESENTED_TOKEN_LENGTH} characters`);
    const shape = classifyToken(input.token);
    hint = displayHint(input.token);
    if (shape.shape === "jwt") return revokeLegacyJwt(deps, caller, input.token, reason, meta);
    if (shape.shape !== "opaque") return NOTHING_REVOKED;
    if (shape.environment !== deps.policy.environment) {
      deps.events.record({
        type: "environment_mismatch",
        severity: "critical",
        message: environmentMismatchMessage(shape.environment, deps.policy.environment),
        serviceEnvironment: deps.policy.environment,
        tokenEnvironment: shape.environment,
        tokenHint: hint,
        callerTokenId: caller.tokenId,
        callerSubject: caller.subject,
        ...metaFields(meta),
      });
      return NOTHING_REVOKED;
    }
    // Possession is authority: no subject to match.
    target = { digest: digestToken(input.token), environment: deps.policy.environment };
  } else {
    const id = rules.uuid("token_id", input.tokenId);
    target = { id, environment: deps.policy.environment, ...(caller.isAdmin ? {} : { subject: caller.subject }) };
  }

  const revocation = { by: caller.subject, reason, at: deps.clock.now() };
  if (input.cascade === true) return revokeWithDescendants(deps, caller, target, hint, revocation, meta);
  // One round trip: the store finds and revokes the token in one call.
  const outcome = await deps.store.revokeOne(target, revocation);
  if (outcome === undefined || outcome === "other_subject") return notRevoked(deps, caller, target, outcome === "other_subject", meta);
  return answerRevoked(deps, caller, outcome, [], hint ?? outcome.record.displayHint, revocation, false, meta);
}

/**
 * With `cascade`: the token is found first (the walk starts from its id),
 * then it and its descendants are revoked in one transaction. Rare and
 * heavier by nature, so it keeps its lookup.
 */
async function revokeWithDescendants(
  deps: TokenDeps,
  caller: Caller,
  target: RevokeTarget,
  hint: string | undefined,
  revocation: Revocation,
  meta: RequestMeta,
): Promise<RevokeResult> {
  const found = "digest" in target ? await deps.store.findByDigest(target.digest) : await deps.store.findById(target.id);
  const known = found !== undefined && found.environment === target.environment;
  if (!known || (target.subject !== undefined && found.subject !== target.subject)) return notRevoked(deps, caller, target, known, meta);
  const cascade = await deps.store.revokeCascade(found.id, revocation);
  if (cascade === undefined) throw notFound(found.id);
  return answerRevoked(deps, caller, cascade.root, cascade.descendants, hint ?? found.displayHint, revocation, true, meta);
}

/**
 * Nothing revoked: a value that names no token succeeds without saying so
 * (RFC 7009 §2.2); an id that is unknown or another subject's is the same
 * `not_found`, and the same event, so not even the metrics (per type and
 * severity) tell the caller which it was; the message is for admins.
 */
function notRevoked(deps: TokenDeps, caller: Caller, target: RevokeTarget, otherSubject: boolean, meta: RequestMeta): RevokeResult {
  if ("digest" in target) return NOTHING_REVOKED;
  if (!caller.isAdmin) {
    deps.events.record({
      type: "permission_denied",
      severity: "warning",
      message: otherSubject ? "revoke by id of another subject's token, answered as not found" : "revoke by id of an unknown token",
      serviceEnvironment: deps.policy.environment,
      tokenId: target.id,
      callerTokenId: caller.tokenId,
      callerSubject: caller.subject,
      ...metaFields(meta),
    });
  }
  throw notFound(target.id);
}

/** After the store committed: evict here, record the event, shape the answer. */
function answerRevoked(
  deps: TokenDeps,
  caller: Caller,
  outcome: RevokeOutcome,
  descendants: readonly TokenRecord[],
  hint: string,
  revocation: Revocation,
  cascade: boolean,
  meta: RequestMeta,
): RevokeResult {
  const record = outcome.record;
  const reason = revocation.reason;
  // This replica forgets them at once; the others hear of each through the store's notice.
  deps.cache.evict(keyOfDigest(record.digest));
  for (const descendant of descendants) deps.cache.evict(keyOfDigest(descendant.digest));
  const revokedCount = (outcome.alreadyRevoked ? 0 : 1) + descendants.length;
  if (revokedCount > 0) {
    const what = !cascade ? "token revoked" : cascadeSummary(outcome.alreadyRevoked, descendants.length);
    deps.events.record({
      type: "token_revoked",
      severity: "info",
      message: reason === "" ? what : `${what}: ${reason}`,
      serviceEnvironment: deps.policy.environment,
      tokenId: record.id,
      tokenHint: hint,
      callerTokenId: caller.tokenId,
      callerSubject: caller.subject,
      ...metaFields(meta),
    });
  }
  if (descendants.length > 0) {
    deps.log.info({ token_id: record.id, token_hint: hint, revoked_count: revokedCount, by: caller.subject }, "token revoked with its descendants (cascade)");
  }
  const visible = caller.isAdmin || record.subject === caller.subject;
  return visible ? { record, alreadyRevoked: outcome.alreadyRevoked, revokedCount } : { alreadyRevoked: outcome.alreadyRevoked, revokedCount };
}

/** The answer when nothing was revoked and nothing may be shown. */
const NOTHING_REVOKED: RevokeResult = Object.freeze({ alreadyRevoked: false, revokedCount: 0 });

/** One message for an unknown id and an id the caller may not revoke: the answers must not differ. */
function notFound(id: string): TokenError {
  // The id is not repeated: it is a value the caller sent.
  return new TokenError("not_found", "token_id: no such token");
}

/** The security event's message for a cascade: one event, with the count. */
function cascadeSummary(rootAlreadyRevoked: boolean, descendants: number): string {
  const below = `${descendants} descendant${descendants === 1 ? "" : "s"}`;
  return rootAlreadyRevoked ? `${below} of an already revoked token revoked (cascade)` : `token and ${below} revoked (cascade, ${descendants + 1} in all)`;
}

/**
 * Revokes a legacy JWT presented by value. It must verify (a forged JWT must
 * not be able to revoke somebody else's `jti`); an invalid, expired or
 * foreign one succeeds without effect, as RFC 7009 §2.2 asks for invalid
 * tokens. A JWT without `jti` cannot be revoked on its own.
 */
async function revokeLegacyJwt(deps: TokenDeps, caller: Caller, jwt: string, reason: string, meta: RequestMeta): Promise<RevokeResult> {
  const policy = deps.legacy.policy;
  const now = deps.clock.now();
  if (policy.keys.length === 0 || now.getTime() >= policy.sunsetAt.getTime()) return NOTHING_REVOKED;
  const checked = await verifyLegacyJwt(policy, jwt, now);
  if (!checked.ok) return NOTHING_REVOKED;
  const { claims } = checked;
  if (claims.claimedEnvironment !== undefined && claims.claimedEnvironment !== deps.policy.environment) return NOTHING_REVOKED;
  if (claims.jti === undefined) {
    throw new TokenError("failed_precondition", "this legacy JWT has no jti, so it cannot be revoked on its own; rotate the legacy signing secret to revoke all of them");
  }
  return revokeLegacyJti(deps, caller, claims.jti, { reason, expiresAt: claims.expiresAt, hint: displayHint(jwt) }, meta);
}

async function revokeLegacyJti(
  deps: TokenDeps,
  caller: Caller,
  jti: string,
  details: { reason: string; expiresAt: Date | null; hint: string | undefined },
  meta: RequestMeta,
): Promise<RevokeResult> {
  const outcome = await deps.legacy.store.revoke(jti, { by: caller.subject, reason: details.reason, at: deps.clock.now(), expiresAt: details.expiresAt });
  // At once here; every other replica hears it through the revocation log.
  deps.legacy.cache?.evictJti(jti);
  if (!outcome.alreadyRevoked) {
    deps.events.record({
      type: "token_revoked",
      severity: "info",
      message: details.reason === "" ? `legacy JWT revoked (jti ${jti})` : `legacy JWT revoked (jti ${jti}): ${details.reason}`,
      serviceEnvironment: deps.policy.environment,
      ...(details.hint ? { tokenHint: details.hint } : {}),
      callerTokenId: caller.tokenId,
      callerSubject: caller.subject,
      ...metaFields(meta),
    });
  }
  return { alreadyRevoked: outcome.alreadyRevoked, revokedCount: outcome.alreadyRevoked ? 0 : 1 };
}
