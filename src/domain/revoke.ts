import { deny } from "./access.js";
import { TokenError, invalidArgument } from "./errors.js";
import { environmentMismatchMessage, metaFields } from "./introspect.js";
import type { Caller, RequestMeta, TokenRecord } from "./model.js";
import type { TokenDeps } from "./ports.js";
import { MAX_PRESENTED_TOKEN_LENGTH, classifyToken, digestToken, displayHint } from "./token-format.js";
import * as rules from "./validation.js";

/** What to revoke: a token by value or by id. */
export type RevokeInput =
  | { readonly token: string; readonly reason: string }
  | { readonly tokenId: string; readonly reason: string };

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

  if ("token" in input) {
    if (input.token === "") throw invalidArgument("token", "is required (or give token_id)");
    if (input.token.length > MAX_PRESENTED_TOKEN_LENGTH) throw invalidArgument("token", `must be at most ${MAX_PRESENTED_TOKEN_LENGTH} characters`);
    const shape = classifyToken(input.token);
    hint = displayHint(input.token);
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
      throw new TokenError("not_found", `no token with id ${id}`);
    }
    if (!caller.isAdmin && record.subject !== caller.subject) {
      deny(deps, caller, meta, "only admins may revoke another subject's token by id");
    }
    hint = record.displayHint;
  }

  const outcome = await deps.store.revoke(record.id, { by: caller.subject, reason, at: deps.clock.now() });
  if (outcome === undefined) throw new TokenError("not_found", `no token with id ${record.id}`);
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
