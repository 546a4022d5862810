import { deny, requireAdmin } from "./access.js";
import { verifyLegacyJwt } from "./legacy-jwt.js";
import { TokenError, invalidArgument } from "./errors.js";
import { environmentMismatchMessage, metaFields } from "./introspect.js";
import type { Caller, RequestMeta, TokenRecord } from "./model.js";
import type { TokenDeps } from "./ports.js";
import { MAX_PRESENTED_TOKEN_LENGTH, classifyToken, digestToken, displayHint, keyOfDigest } from "./token-format.js";
import * as rules from "./validation.js";

/** What to revoke: a token by value or by id. */
export type RevokeInput =
  | { readonly token: string; readonly reason: string }
  | { readonly tokenId: string; readonly reason: string }
  | { readonly legacyJti: string; readonly reason: string };

/** The outcome of a revocation. */
export interface RevokeResult {
  /** The token, when it exists and the caller may see it (owner or admin). */
  readonly record?: TokenRecord;
  /** True when it had been revoked before this call. */
  readonly alreadyRevoked: boolean;
}

/**
 * Revokes a token, idempotently. By value, possession is authority (RFC 7009
 * §2.1): anyone with `tokens.revoke` who holds a token may kill it, and an
 * unknown or invalid value succeeds without saying so (RFC 7009 §2.2). By id,
 * admins revoke any token and others only their own; an unknown id is
 * `not_found`. The store write is committed before this resolves.
 */
export async function revokeToken(deps: TokenDeps, caller: Caller, input: RevokeInput, meta: RequestMeta): Promise<RevokeResult> {
  const reason = rules.optionalText("reason", input.reason, 512);
  let record: TokenRecord | undefined;
  let hint: string;

  if ("legacyJti" in input) {
    requireAdmin(deps, caller, meta, "revoke a legacy JWT by its jti");
    const jti = rules.requiredText("legacy_jti", input.legacyJti, 256);
    return revokeLegacyJti(deps, caller, jti, { reason, expiresAt: null, hint: undefined }, meta);
  }
  if ("token" in input) {
    if (input.token === "") throw invalidArgument("token", "is required (or give token_id)");
    if (input.token.length > MAX_PRESENTED_TOKEN_LENGTH) throw invalidArgument("token", `must be at most ${MAX_PRESENTED_TOKEN_LENGTH} characters`);
    const shape = classifyToken(input.token);
    hint = displayHint(input.token);
    if (shape.shape === "jwt") return revokeLegacyJwt(deps, caller, input.token, reason, meta);
    if (shape.shape !== "opaque") return { alreadyRevoked: false };
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
      return { alreadyRevoked: false };
    }
    record = await deps.store.findByDigest(digestToken(input.token));
    if (record === undefined || record.environment !== deps.policy.environment) return { alreadyRevoked: false };
  } else {
    const id = rules.uuid("token_id", input.tokenId);
    record = await deps.store.findById(id);
    if (record === undefined || record.environment !== deps.policy.environment) {
      throw new TokenError("not_found", "token_id: no such token");
    }
    if (!caller.isAdmin && record.subject !== caller.subject) {
      deny(deps, caller, meta, "only admins may revoke another subject's token by id");
    }
    hint = record.displayHint;
  }

  const outcome = await deps.store.revoke(record.id, { by: caller.subject, reason, at: deps.clock.now() });
  if (outcome === undefined) throw new TokenError("not_found", "token_id: no such token");
  // This replica forgets it at once; the others hear of it through the store's notice.
  deps.cache.evict(keyOfDigest(record.digest));
  if (!outcome.alreadyRevoked) {
    deps.events.record({
      type: "token_revoked",
      severity: "info",
      message: reason === "" ? "token revoked" : `token revoked: ${reason}`,
      serviceEnvironment: deps.policy.environment,
      tokenId: record.id,
      tokenHint: hint,
      callerTokenId: caller.tokenId,
      callerSubject: caller.subject,
      ...metaFields(meta),
    });
  }
  const visible = caller.isAdmin || outcome.record.subject === caller.subject;
  return visible ? { record: outcome.record, alreadyRevoked: outcome.alreadyRevoked } : { alreadyRevoked: outcome.alreadyRevoked };
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
  if (policy.keys.length === 0 || now.getTime() >= policy.sunsetAt.getTime()) return { alreadyRevoked: false };
  const checked = await verifyLegacyJwt(policy, jwt, now);
  if (!checked.ok) return { alreadyRevoked: false };
  const { claims } = checked;
  if (claims.claimedEnvironment !== undefined && claims.claimedEnvironment !== deps.policy.environment) return { alreadyRevoked: false };
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
  return { alreadyRevoked: outcome.alreadyRevoked };
}
