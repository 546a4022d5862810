import { deny, requireAdmin } from "./access.js";
import type { Caller, RequestMeta, SecurityEventRow, Severity, TokenRecord } from "./model.js";
import type { LegacyUsage, TokenDeps } from "./ports.js";
import * as rules from "./validation.js";

/** Rows per page when the request sets none. */
export const DEFAULT_PAGE_SIZE = 50;
/** Most rows per page. */
export const MAX_PAGE_SIZE = 500;

/** A page of results and the token for the next one ("" on the last page). */
export interface Page<T> {
  readonly items: T[];
  readonly nextPageToken: string;
}

/** `ListTokens` filters. */
export interface ListTokensInput {
  readonly subject: string;
  readonly team: string;
  readonly includeRevoked: boolean;
  readonly includeExpired: boolean;
  readonly pageSize: number;
  readonly pageToken: string;
  /** Only tokens issued directly by this token id; empty or absent means any. */
  readonly issuedByTokenId?: string;
}

/**
 * Lists token metadata newest first, by keyset (never offset) pagination so
 * pages stay stable while tokens are issued. A non-admin sees only its own
 * subject's tokens; asking for another subject is denied, not silently narrowed.
 * Only the service's own environment is listed: environments may share a store.
 */
export async function listTokens(deps: TokenDeps, caller: Caller, input: ListTokensInput, meta: RequestMeta): Promise<Page<TokenRecord>> {
  const requested = rules.optionalText("subject", input.subject, 256);
  const team = rules.optionalLabel("team", input.team);
  const issuedBy = input.issuedByTokenId === undefined || input.issuedByTokenId === "" ? undefined : rules.uuid("issued_by_token_id", input.issuedByTokenId);
  const limit = rules.pageSize("page_size", input.pageSize, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
  let subject: string | undefined = requested === "" ? undefined : requested;
  if (!caller.isAdmin) {
    if (subject !== undefined && subject !== caller.subject) deny(deps, caller, meta, "only admins may list another subject's tokens");
    subject = caller.subject;
  }
  // The list's name is bound too, so a token of one list is refused by another.
  // The issuer joins the filters only when given, so page tokens made without it keep their binding.
  const filters = { l: "tokens", subject, team, r: input.includeRevoked, e: input.includeExpired, ...(issuedBy !== undefined ? { ib: issuedBy } : {}) };
  const cursor = deps.pageTokens.decode("page_token", input.pageToken, filters);
  const rows = await deps.store.list({
    environment: deps.policy.environment,
    ...(issuedBy !== undefined ? { issuedByTokenId: issuedBy } : {}),
    ...(subject !== undefined ? { subject } : {}),
    ...(team !== undefined ? { team } : {}),
    includeRevoked: input.includeRevoked,
    includeExpired: input.includeExpired,
    now: deps.clock.now(),
    limit: limit + 1,
    ...(cursor ? { after: { createdAt: cursor.at, id: cursor.id } } : {}),
  });
  return pageOf(rows, limit, (row) => deps.pageTokens.encode({ at: row.createdAt, id: row.id }, filters));
}

/** `ListSecurityEvents` filters. */
export interface ListSecurityEventsInput {
  readonly type: string;
  readonly minSeverity?: Severity;
  readonly since?: Date;
  readonly pageSize: number;
  readonly pageToken: string;
}

/** Lists security events newest first. Admins only. */
export async function listSecurityEvents(deps: TokenDeps, caller: Caller, input: ListSecurityEventsInput, meta: RequestMeta): Promise<Page<SecurityEventRow>> {
  requireAdmin(deps, caller, meta, "list security events");
  const type = rules.optionalText("type", input.type, 64);
  const limit = rules.pageSize("page_size", input.pageSize, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
  const since = input.since === undefined ? undefined : rules.time("since", input.since);
  const filters = { l: "security_events", type, s: input.minSeverity, t: since?.getTime() };
  const cursor = deps.pageTokens.decode("page_token", input.pageToken, filters);
  // Read our own writes: events still folding in memory are stored first.
  await deps.events.flush();
  const rows = await deps.securityEvents.list({
    ...(type !== "" ? { type } : {}),
    ...(input.minSeverity ? { minSeverity: input.minSeverity } : {}),
    ...(since ? { since } : {}),
    limit: limit + 1,
    ...(cursor ? { after: { firstSeen: cursor.at, id: cursor.id } } : {}),
  });
  return pageOf(rows, limit, (row) => deps.pageTokens.encode({ at: row.firstSeen, id: row.id }, filters));
}

/** Lists who still sends legacy JWTs, most recently seen first. Admins only. */
export async function listLegacyJwtUsage(deps: TokenDeps, caller: Caller, input: { readonly pageSize: number; readonly pageToken: string }, meta: RequestMeta): Promise<Page<LegacyUsage>> {
  requireAdmin(deps, caller, meta, "list legacy JWT usage");
  const limit = rules.pageSize("page_size", input.pageSize, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
  const filters = { l: "legacy_jwt_usage" };
  const cursor = deps.pageTokens.decode("page_token", input.pageToken, filters, (subject) => subject.length > 0 && subject.length <= 256);
  const rows = await deps.legacy.store.listUsage({ limit: limit + 1, ...(cursor ? { after: { lastSeen: cursor.at, subject: cursor.id } } : {}) });
  return pageOf(rows, limit, (row) => deps.pageTokens.encode({ at: row.lastSeen, id: row.subject }, filters));
}

/** Cuts `limit + 1` rows into a page, with a next-page token when there was one more. */
function pageOf<T>(rows: T[], limit: number, tokenFor: (last: T) => string): Page<T> {
  if (rows.length <= limit) return { items: rows, nextPageToken: "" };
  const items = rows.slice(0, limit);
  return { items, nextPageToken: tokenFor(items[items.length - 1]!) };
}
