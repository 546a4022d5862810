/**
 * Rotation with grace (issue 13): a successor with the same claims, issued
 * through the one issuing path (`issueToken`, hence `buildClaims`), and the
 * old token's revocation scheduled at the end of a grace period, carried out
 * by every replica's `RevocationScheduler` (whichever is alive; exactly once,
 * by the store's conditional UPDATE).
 *
 * Permissions: `tokens.create` (checked at the edge, rate-limited as an
 * issue) and `tokens.revoke` (checked here): a rotation is an issue and a
 * (deferred) revocation. By value, holding the token is authority to rotate
 * it, as for `RevokeToken` (RFC 7009 §2.1). By id, admins rotate any token
 * and others only their own subject's; any other id is the same NOT_FOUND
 * as an unknown one. Either way the successor goes through `issueToken`'s
 * rules, so it never exceeds what the caller may issue: a non-admin rotates
 * only its own subject's non-admin tokens within the scopes, teams,
 * namespaces, metadata keys and lifetime it holds.
 */
import { requireScope } from "./access.js";
import { TokenError, invalidArgument } from "./errors.js";
import { metaFields } from "./introspect.js";
import { issueToken } from "./issue.js";
import { SCOPES, tokenState, type Caller, type RequestMeta, type TokenRecord } from "./model.js";
import type { IntrospectionCache } from "./introspect.js";
import type { Clock, EventSink, LifecycleDeps, LifecycleStore, Logger, RotationUseWatcher, TokenDeps, TokenStore } from "./ports.js";
import type { Environment } from "./environment.js";
import { MAX_PRESENTED_TOKEN_LENGTH, classifyToken, digestToken, keyOfDigest } from "./token-format.js";
import * as rules from "./validation.js";

/** A `RotateToken` request, as the domain sees it. */
export type RotateInput = ({ readonly token: string } | { readonly tokenId: string }) & {
  /** Grace period in ms; undefined: the service's default. */
  readonly graceMs?: number;
  /** Renewed lifetime from now in ms; undefined: keep the old token's expiry. */
  readonly ttlMs?: number;
  readonly revokeOnSuccessorUse: boolean;
  readonly reason: string;
};

/** A rotation's outcome: the successor (shown once) and both records. */
export interface RotateResult {
  readonly token: string;
  readonly successor: TokenRecord;
  readonly predecessor: TokenRecord;
}

/** Who rotations and scheduled revocations are recorded as. */
export const ROTATION_ACTOR = "rotation";

/**
 * Rotates a token. Everything is validated before anything is written; the
 * successor's insert and the link are separate writes, so a rotation that
 * loses a race (the old token revoked or rotated meanwhile) revokes the
 * successor it just made and answers FAILED_PRECONDITION.
 */
export async function rotateToken(deps: TokenDeps, caller: Caller, input: RotateInput, meta: RequestMeta): Promise<RotateResult> {
  const lifecycle = requireLifecycle(deps);
  const reason = rules.optionalText("reason", input.reason, 512);
  const graceMs = input.graceMs === undefined ? lifecycle.defaultGraceMs : rules.durationWithin("grace_period", input.graceMs, 0, lifecycle.maxGraceMs);
  // Checked before any lookup, with IssueToken's range, so a bad request costs nothing.
  if (input.ttlMs !== undefined) rules.durationWithin("ttl", input.ttlMs, 1000, deps.policy.maxTtlMs);
  requireScope(deps, caller, SCOPES.revoke, meta);
  const old = await resolveTarget(deps, caller, input);
  const now = deps.clock.now();
  const state = tokenState(old, now);
  if (state !== "active") throw new TokenError("failed_precondition", `the token is ${state}; only an active token can be rotated`);
  if (old.rotation?.successorId != null) throw new TokenError("failed_precondition", "the token was rotated already; rotate its successor (successor_id) instead");

  // Same claims; the lifetime is kept (same expiry) unless renewal was asked for.
  const issued = await issueToken(
    deps,
    caller,
    {
      name: old.name,
      scopes: old.scopes,
      teams: old.teams,
      namespaces: old.namespaces,
      metadata: old.metadata,
      subject: old.subject,
      // Only admins may set full_name; for their own subject others get their own name.
      fullName: caller.isAdmin ? old.fullName : "",
      isAdmin: old.isAdmin,
      ...(input.ttlMs !== undefined ? { ttlMs: input.ttlMs } : old.expiresAt !== null ? { expiresAt: old.expiresAt } : {}),
    },
    meta,
  );
  const scheduledRevokeAt = graceMs === 0 ? null : new Date(now.getTime() + graceMs);
  const linked = await lifecycle.store.linkRotation(old.id, issued.record.id, { scheduledRevokeAt, revokeOnSuccessorUse: input.revokeOnSuccessorUse });
  if (linked === undefined) {
    await deps.store.revoke(issued.record.id, { by: ROTATION_ACTOR, reason: "rotation lost a race: the old token was revoked or rotated meanwhile", at: deps.clock.now() });
    throw new TokenError("failed_precondition", "the token was revoked or rotated meanwhile; nothing was issued");
  }
  let predecessor = linked.predecessor;
  // This replica forgets the old answer at once, so its next use sees the link.
  deps.cache.evict(keyOfDigest(old.digest));
  if (graceMs === 0) {
    const revoked = await lifecycle.store.revokeMany([old.id], { by: caller.subject, reason: reason === "" ? "rotated without grace" : reason, at: deps.clock.now() });
    for (const record of revoked) {
      predecessor = record;
      recordRevoked(deps.events, deps.policy.environment, record, `token revoked: rotated without grace${reason === "" ? "" : `: ${reason}`}`, { callerTokenId: caller.tokenId, callerSubject: caller.subject, ...metaFields(meta) });
    }
  }
  deps.log.info(
    { token_id: old.id, token_hint: old.displayHint, successor_id: linked.successor.id, grace_ms: graceMs, revoke_on_successor_use: input.revokeOnSuccessorUse, by: caller.subject },
    "token rotated",
  );
  return { token: issued.token, successor: linked.successor, predecessor };
}

/** The lifecycle deps, or UNIMPLEMENTED-like refusal when this service was built without them. */
export function requireLifecycle(deps: TokenDeps): LifecycleDeps {
  if (deps.lifecycle === undefined) throw new TokenError("failed_precondition", "rotation and bulk revocation are not available in this service");
  return deps.lifecycle;
}

/** The token named by value or id, with the same not-found answer for all the caller may not see. */
async function resolveTarget(deps: TokenDeps, caller: Caller, input: RotateInput): Promise<TokenRecord> {
  if ("token" in input) {
    if (input.token === "") throw invalidArgument("token", "is required (or give token_id)");
    if (input.token.length > MAX_PRESENTED_TOKEN_LENGTH) throw invalidArgument("token", `must be at most ${MAX_PRESENTED_TOKEN_LENGTH} characters`);
    const shape = classifyToken(input.token);
    if (shape.shape !== "opaque" || shape.environment !== deps.policy.environment) throw new TokenError("not_found", "token: no such token");
    const found = await deps.store.findByDigest(digestToken(input.token));
    if (found === undefined || found.environment !== deps.policy.environment) throw new TokenError("not_found", "token: no such token");
    return found;
  }
  const id = rules.uuid("token_id", input.tokenId);
  const found = await deps.store.findById(id);
  if (found === undefined || found.environment !== deps.policy.environment || (!caller.isAdmin && found.subject !== caller.subject)) {
    throw new TokenError("not_found", "token_id: no such token");
  }
  return found;
}

/** Raises the `token_revoked` event for one token revoked by rotation. */
export function recordRevoked(events: EventSink, environment: Environment, record: TokenRecord, message: string, extra: { callerTokenId?: string; callerSubject?: string; method?: string } = {}): void {
  events.record({ type: "token_revoked", severity: "info", message, serviceEnvironment: environment, tokenId: record.id, tokenHint: record.displayHint, ...extra });
}

/** What the watcher needs. */
export interface RotationWatcherParts {
  readonly lifecycle: LifecycleStore;
  readonly tokens: Pick<TokenStore, "findById">;
  readonly cache: Pick<IntrospectionCache, "evict">;
  readonly events: EventSink;
  readonly clock: Clock;
  readonly log: Logger;
  readonly environment: Environment;
}

/** Most successors remembered as handled, and rotated tokens as recently checked, per replica. */
const MAX_REMEMBERED = 10_000;
/** A rotated token's reuse is checked at most this often per replica. */
const REUSE_CHECK_MS = 5_000;

/**
 * Off the hot path, once per replica per token: introspection calls it and
 * returns at once; the store work runs after.
 *
 * - A successor's first use on this replica records the use on its
 *   predecessor (`successor_used_at`, the earliest time wins) and, when the
 *   rotation asked for it, revokes the predecessor through the conditional
 *   UPDATE (every replica may try; exactly one revokes).
 * - A rotated token's use reads its row (at most every few seconds per
 *   token) and raises `rotated_token_reused` when its successor has been
 *   used: an old copy is still deployed somewhere.
 */
export class RotationWatcher implements RotationUseWatcher {
  private readonly handled = new Set<string>();
  private readonly checked = new Map<string, number>();

  constructor(private readonly parts: RotationWatcherParts) {}

  successorUsed(successorId: string, predecessorId: string): void {
    if (this.handled.has(successorId)) return;
    if (this.handled.size >= MAX_REMEMBERED) this.handled.clear();
    this.handled.add(successorId);
    void this.onSuccessorUse(successorId, predecessorId).catch((error: unknown) => {
      // Forget it, so the next use tries again; the grace period still bounds the old token.
      this.handled.delete(successorId);
      this.parts.log.warn({ token_id: successorId, err: error }, "recording a successor's first use failed");
    });
  }

  rotatedTokenUsed(tokenId: string, hint: string | undefined, meta: RequestMeta): void {
    const nowMs = this.parts.clock.now().getTime();
    const last = this.checked.get(tokenId);
    if (last !== undefined && nowMs - last < REUSE_CHECK_MS) return;
    if (this.checked.size >= MAX_REMEMBERED) this.checked.clear();
    this.checked.set(tokenId, nowMs);
    void this.onRotatedUse(tokenId, hint, meta).catch((error: unknown) => {
      this.parts.log.warn({ token_id: tokenId, err: error }, "checking a rotated token's reuse failed");
    });
  }

  private async onSuccessorUse(successorId: string, predecessorId: string): Promise<void> {
    const { lifecycle, clock } = this.parts;
    const predecessor = await lifecycle.markSuccessorUsed(predecessorId, successorId, clock.now());
    if (predecessor === undefined || predecessor.revokedAt !== null || predecessor.rotation?.revokeOnSuccessorUse !== true) return;
    const revoked = await lifecycle.revokeMany([predecessorId], { by: ROTATION_ACTOR, reason: "successor used (revoke_on_successor_use)", at: clock.now() });
    for (const record of revoked) {
      this.parts.cache.evict(keyOfDigest(record.digest));
      recordRevoked(this.parts.events, this.parts.environment, record, "rotated token revoked: its successor was used (revoke_on_successor_use)", { method: "successor first use" });
    }
  }

  private async onRotatedUse(tokenId: string, hint: string | undefined, meta: RequestMeta): Promise<void> {
    const record = await this.parts.tokens.findById(tokenId);
    if (record === undefined || record.revokedAt !== null || record.rotation?.successorUsedAt == null) return;
    this.parts.events.record({
      type: "rotated_token_reused",
      severity: "warning",
      message: "a rotated token was used after its successor had been used: an old copy is still deployed",
      serviceEnvironment: this.parts.environment,
      tokenId,
      ...(hint !== undefined ? { tokenHint: hint } : {}),
      ...metaFields(meta),
    });
  }
}
