/**
 * Bulk revocation (issue 13): `RevokeTokens(selector, dry_run)`.
 *
 * One durable operation: recorded first (`bulk_revocations`), then run in
 * batches of {@link BULK_BATCH} tokens, each batch one transaction through
 * the write gate (so the hot path's lookups never wait behind it) that
 * revokes its tokens exactly as a single revocation does (the same
 * conditional UPDATE and per-row NOTIFY, so every replica and gateway drops
 * them) and adds them to the operation's count. The runner holds a lease it
 * renews with every batch; if its replica stops, another replica's
 * `RevocationScheduler` takes the operation over once the lease runs out and
 * finishes it. Exactly one `tokens_bulk_revoked` security event is raised,
 * by whoever marks it finished, naming the selector and the count.
 *
 * Only tokens issued at or before the operation's start are revoked, so the
 * set is fixed when it is asked for.
 */
import { randomUUID } from "node:crypto";
import { deny } from "./access.js";
import { invalidArgument } from "./errors.js";
import type { IntrospectionCache } from "./introspect.js";
import { metaFields } from "./introspect.js";
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE } from "./list.js";
import type { Caller, RequestMeta, TokenRecord } from "./model.js";
import type { BulkRevocation, Clock, EventSink, LifecycleStore, Logger, TokenDeps, TokenSelector } from "./ports.js";
import type { Environment } from "./environment.js";
import { requireLifecycle } from "./rotate.js";
import { keyOfDigest } from "./token-format.js";
import * as rules from "./validation.js";

/** Tokens revoked per transaction. */
export const BULK_BATCH = 1000;
/** How long a runner's claim on an operation lasts without a batch; another replica resumes it after. */
export const BULK_LEASE_MS = 30_000;

/** A `RevokeTokens` request, as the domain sees it (empty strings and undefined: not set). */
export interface RevokeTokensInput {
  readonly selector: {
    readonly subject: string;
    readonly team: string;
    readonly issuedByTokenId: string;
    readonly name: string;
    readonly createdBefore?: Date;
    readonly expireBefore?: Date;
  };
  readonly dryRun: boolean;
  readonly reason: string;
  readonly pageSize: number;
}

/** The outcome of a bulk revocation or its dry run. */
export interface RevokeTokensResult {
  readonly matchedCount: number;
  readonly revokedCount: number;
  /** Dry run only: the first page, newest first. */
  readonly first: readonly TokenRecord[];
  /** Empty for a dry run. */
  readonly operationId: string;
}

/**
 * Revokes every unrevoked token of this environment that matches the
 * selector, or with `dryRun` counts them and shows the first page. Admins
 * may select anything; a non-admin's selection is always its own subject
 * (naming another is refused).
 */
export async function revokeTokens(deps: TokenDeps, caller: Caller, input: RevokeTokensInput, meta: RequestMeta): Promise<RevokeTokensResult> {
  const lifecycle = requireLifecycle(deps);
  const selector = selectorOf(input.selector);
  const reason = rules.optionalText("reason", input.reason, 512);
  const pageSize = rules.pageSize("page_size", input.pageSize, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
  if (!caller.isAdmin) {
    if (selector.subject !== undefined && selector.subject !== caller.subject) deny(deps, caller, meta, "only admins may revoke another subject's tokens");
  }
  const scoped: TokenSelector = caller.isAdmin ? selector : { ...selector, subject: caller.subject };
  const environment = deps.policy.environment;
  if (input.dryRun) {
    const { count, first } = await lifecycle.store.matching(environment, scoped, pageSize);
    return { matchedCount: count, revokedCount: 0, first, operationId: "" };
  }
  const startedAt = deps.clock.now();
  const operation: BulkRevocation = {
    id: randomUUID(),
    environment,
    selector: scoped,
    reason,
    requestedBy: caller.subject,
    callerTokenId: caller.tokenId,
    startedAt,
    revokedCount: 0,
    finishedAt: null,
  };
  await lifecycle.store.createBulkRevocation(operation, new Date(startedAt.getTime() + BULK_LEASE_MS));
  const revoked = await runBulkRevocation({ store: lifecycle.store, cache: deps.cache, events: deps.events, clock: deps.clock, log: deps.log, environment }, operation, meta);
  return { matchedCount: revoked, revokedCount: revoked, first: [], operationId: operation.id };
}

/** What running an operation needs (the RPC path and the scheduler that resumes one). */
export interface BulkRunnerParts {
  readonly store: LifecycleStore;
  readonly cache: Pick<IntrospectionCache, "evict">;
  readonly events: EventSink;
  readonly clock: Clock;
  readonly log: Logger;
  readonly environment: Environment;
}

/**
 * Runs an operation to its end, batch by batch, and returns its total count
 * (including batches run before a takeover). Each batch renews the lease.
 */
export async function runBulkRevocation(parts: BulkRunnerParts, operation: BulkRevocation, meta?: RequestMeta): Promise<number> {
  let revokedHere = 0;
  for (;;) {
    const now = parts.clock.now();
    const batch = await parts.store.bulkRevokeBatch(operation.id, now, BULK_BATCH, new Date(now.getTime() + BULK_LEASE_MS));
    // This replica forgets them at once; the others hear of each through the store's notice.
    for (const record of batch) parts.cache.evict(keyOfDigest(record.digest));
    revokedHere += batch.length;
    if (batch.length === 0) break;
  }
  const finished = await parts.store.finishBulkRevocation(operation.id, parts.clock.now());
  const total = finished?.revokedCount ?? operation.revokedCount + revokedHere;
  if (finished !== undefined) {
    const why = finished.reason === "" ? "" : `: ${finished.reason}`;
    parts.events.record({
      type: "tokens_bulk_revoked",
      severity: total > 0 ? "warning" : "info",
      message: `${total} token${total === 1 ? "" : "s"} revoked in bulk (${describeSelector(finished.selector)})${why}`,
      serviceEnvironment: parts.environment,
      callerSubject: finished.requestedBy,
      ...(finished.callerTokenId !== null ? { callerTokenId: finished.callerTokenId } : {}),
      ...(meta !== undefined ? metaFields(meta) : { method: "bulk revocation resumed" }),
    });
    parts.log.info({ operation_id: finished.id, revoked_count: total, by: finished.requestedBy, resumed: meta === undefined }, "bulk revocation finished");
  }
  return total;
}

/** The selector in words for the security event, e.g. `subject=a@b, team=red`. */
export function describeSelector(selector: TokenSelector): string {
  const parts: string[] = [];
  if (selector.subject !== undefined) parts.push(`subject=${selector.subject}`);
  if (selector.team !== undefined) parts.push(`team=${selector.team}`);
  if (selector.issuedByTokenId !== undefined) parts.push(`issued_by_token_id=${selector.issuedByTokenId}`);
  if (selector.name !== undefined) parts.push(`name=${selector.name}`);
  if (selector.createdBefore !== undefined) parts.push(`created_before=${selector.createdBefore.toISOString()}`);
  if (selector.expireBefore !== undefined) parts.push(`expire_before=${selector.expireBefore.toISOString()}`);
  return parts.join(", ");
}

/** Validates the selector; an empty one is refused, naming the field. */
function selectorOf(input: RevokeTokensInput["selector"]): TokenSelector {
  const subject = rules.optionalText("selector.subject", input.subject, 256);
  const team = rules.optionalLabel("selector.team", input.team);
  const issuedBy = input.issuedByTokenId === "" ? undefined : rules.uuid("selector.issued_by_token_id", input.issuedByTokenId);
  const name = rules.optionalText("selector.name", input.name, 128);
  const createdBefore = input.createdBefore === undefined ? undefined : rules.time("selector.created_before", input.createdBefore);
  const expireBefore = input.expireBefore === undefined ? undefined : rules.time("selector.expire_before", input.expireBefore);
  const selector: TokenSelector = {
    ...(subject !== "" ? { subject } : {}),
    ...(team !== undefined ? { team } : {}),
    ...(issuedBy !== undefined ? { issuedByTokenId: issuedBy } : {}),
    ...(name !== "" ? { name } : {}),
    ...(createdBefore !== undefined ? { createdBefore } : {}),
    ...(expireBefore !== undefined ? { expireBefore } : {}),
  };
  if (Object.keys(selector).length === 0) {
    throw invalidArgument("selector", "set at least one of subject, team, issued_by_token_id, name, created_before, expire_before");
  }
  return selector;
}
