import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";
import type { TokenService, WatchRevocationsResponseSchema } from "../../gen/tokens/v1/token_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { StreamQuota, watchRevocations } from "../domain/watch.js";
import { authenticate, requireScope } from "../domain/access.js";
import { authenticateCaller } from "../domain/client-auth.js";
import type { MethodClass } from "../domain/rate-limit.js";
import { invalidArgument } from "../domain/errors.js";
import { introspectToken } from "../domain/introspect.js";
import { issueToken } from "../domain/issue.js";
import { listLegacyJwtUsage, listSecurityEvents, listTokens } from "../domain/list.js";
import { SCOPES, type Caller, type RequestMeta, type ServiceScope } from "../domain/model.js";
import type { TokenDeps } from "../domain/ports.js";
import { revokeToken } from "../domain/revoke.js";
import { rotateToken } from "../domain/rotate.js";
import { revokeTokens } from "../domain/bulk-revoke.js";
import { durationWithin } from "../domain/validation.js";
import { MAX_PRESENTED_TOKEN_LENGTH } from "../domain/token-format.js";
import { callerCredential, requestMeta } from "./auth.js";
import { toConnectError } from "./errors.js";
import { dateFromPb, deprecationHeaders, durationMsFromPb, introspectAnswer, jsonWebKey, rateLimitFromPb, watchResponse, securityEvent, severityFromPb, tokenInfo, withRevocationMark } from "./mapping.js";
import { isClientAddress } from "../domain/usage-binding.js";

type Impl = ServiceImpl<typeof TokenService>;

/** Limits of the streams, from configuration. */
export interface TokenServiceOptions {
  /** Most WatchRevocations streams one caller may hold open on this replica. Default 32. */
  readonly maxStreamsPerCaller?: number;
  /**
   * Shortest heartbeat interval served. The proto documents 100 ms to 60 s as
   * valid, so an ask within that range but below this floor is raised to it
   * (and the interval served is sent in the `x-heartbeat-interval-ms` header),
   * not refused. Default 500 ms.
   */
  readonly minHeartbeatMs?: number;
  /** How often a stream re-checks its caller's credential. Default 1 s. */
  readonly streamRecheckMs?: number;
}

/** The documented range of `heartbeat_interval` (see the proto). */
const HEARTBEAT_RANGE_MS = { min: 100, max: 60_000 } as const;

/**
 * The one implementation of `tokens.v1.TokenService`; both the gRPC and the
 * Connect server mount it. Each method authenticates the caller, maps the
 * request to a domain call and maps the result back. Nothing else lives here.
 */
export class TokenServiceHandler implements Impl {
  private readonly streams: StreamQuota;
  private readonly minHeartbeatMs: number;
  private readonly streamRecheckMs: number;

  constructor(
    private readonly deps: TokenDeps,
    options: TokenServiceOptions = {},
  ) {
    this.streams = new StreamQuota(options.maxStreamsPerCaller ?? 32);
    this.minHeartbeatMs = Math.min(HEARTBEAT_RANGE_MS.max, Math.max(HEARTBEAT_RANGE_MS.min, options.minHeartbeatMs ?? 500));
    this.streamRecheckMs = options.streamRecheckMs ?? 1000;
  }

  /**
   * Authenticates the caller (under its address's budget of failures), admits
   * the call under the caller's rate limit for its class, and requires a
   * scope; returns the caller and the request facts.
   */
  private async caller(ctx: HandlerContext, scope: ServiceScope | undefined, methodClass: MethodClass): Promise<{ caller: Caller; meta: RequestMeta }> {
    const meta = requestMeta(ctx);
    const caller = await authenticateCaller(this.deps, callerCredential(ctx), meta);
    this.admit(caller, meta, scope, methodClass);
    return { caller, meta };
  }

  /** What every RPC checks of an authenticated caller, in this order: its rate limit, then its scope. */
  private admit(caller: Caller, meta: RequestMeta, scope: ServiceScope | undefined, methodClass: MethodClass): void {
    this.deps.limits?.admit(caller, methodClass, meta, this.deps.clock.now().getTime());
    if (scope) requireScope(this.deps, caller, scope, meta);
  }

  /** Any failure of a handler as a caller-safe status. */
  private failed(error: unknown, ctx: HandlerContext): never {
    throw toConnectError(error, this.deps.log, `/${ctx.service.typeName}/${ctx.method.name}`);
  }

  /** Runs a handler body, turning any failure into a caller-safe status. */
  private async run<T>(ctx: HandlerContext, body: () => Promise<T>): Promise<T> {
    try {
      return await body();
    } catch (error) {
      this.failed(error, ctx);
    }
  }

  issueToken: Impl["issueToken"] = (req, ctx) =>
    this.run(ctx, async () => {
      const { caller, meta } = await this.caller(ctx, SCOPES.create, "issue");
      const issued = await issueToken(
        this.deps,
        caller,
        {
          name: req.name,
          scopes: req.scopes,
          teams: req.teams,
          namespaces: req.namespaces,
          metadata: req.metadata,
          subject: req.subject,
          fullName: req.fullName,
          isAdmin: req.isAdmin,
          allowedNetworks: req.allowedNetworks,
          rateLimit: rateLimitFromPb(req.rateLimit),
          ...(req.expiry.case === "ttl" ? { ttlMs: durationMsFromPb(req.expiry.value) } : {}),
          ...(req.expiry.case === "expireTime" ? { expiresAt: dateFromPb(req.expiry.value)! } : {}),
        },
        meta,
      );
      return { token: issued.token, info: tokenInfo(issued.record, this.deps.clock.now()) };
    });

  /**
   * The hot path. The same steps as {@link caller} and {@link run} (sharing
   * their parts, `admit` and `failed`) in one async function: on a cache hit
   * their closures and the two extra awaited frames were a good part of what
   * this edge allocated per call.
   */
  introspectToken: Impl["introspectToken"] = async (req, ctx) => {
    try {
      // Refuse oversized and empty values before authenticating: no work for junk.
      if (req.token === "") throw invalidArgument("token", "is required");
      if (req.token.length > MAX_PRESENTED_TOKEN_LENGTH) throw invalidArgument("token", `must be at most ${MAX_PRESENTED_TOKEN_LENGTH} characters`);
      if (req.tokenTypeHint.length > 64) throw invalidArgument("token_type_hint", "must be at most 64 characters");
      const deps = this.deps;
      const meta = requestMeta(ctx);
      const caller = await authenticateCaller(deps, callerCredential(ctx), meta);
      this.admit(caller, meta, SCOPES.introspect, "introspect");
      // Before the lookup: the answer reflects at least every revocation up to this mark.
      const mark = deps.revocations.mark();
      if (req.clientAddress !== "" && !isClientAddress(req.clientAddress)) throw invalidArgument("client_address", "must be an IPv4 or IPv6 address (no port, no brackets), at most 64 characters");
      const clientAddress = req.clientAddress === "" ? undefined : req.clientAddress;
      const result = await introspectToken(deps, req.token, meta, { backendJwt: req.includeBackendJwt, lookupOwner: caller.tokenId, clientAddress });
      if (result.active && result.deprecation) {
        for (const [name, value] of deprecationHeaders(result.deprecation)) ctx.responseHeader.set(name, value);
      }
      return withRevocationMark(introspectAnswer(result, deps.policy), mark);
    } catch (error) {
      this.failed(error, ctx);
    }
  };

  revokeToken: Impl["revokeToken"] = (req, ctx) =>
    this.run(ctx, async () => {
      if (req.target.case === undefined) throw invalidArgument("target", "set one of token, token_id or legacy_jti");
      const { caller, meta } = await this.caller(ctx, SCOPES.revoke, "revoke");
      const target = req.target;
      const input =
        target.case === "token"
          ? { token: target.value, reason: req.reason, cascade: req.cascade }
          : target.case === "tokenId"
            ? { tokenId: target.value, reason: req.reason, cascade: req.cascade }
            : { legacyJti: target.value, reason: req.reason, cascade: req.cascade };
      const result = await revokeToken(this.deps, caller, input, meta);
      return {
        ...(result.record ? { info: tokenInfo(result.record, this.deps.clock.now()) } : {}),
        alreadyRevoked: result.alreadyRevoked,
        revokedCount: result.revokedCount,
      };
    });

  rotateToken: Impl["rotateToken"] = (req, ctx) =>
    this.run(ctx, async () => {
      if (req.target.case === undefined) throw invalidArgument("target", "set one of token or token_id");
      // A rotation issues a token: it is limited as an issue.
      const { caller, meta } = await this.caller(ctx, SCOPES.create, "issue");
      const options = {
        revokeOnSuccessorUse: req.revokeOnSuccessorUse,
        reason: req.reason,
        ...(req.gracePeriod !== undefined ? { graceMs: durationMsFromPb(req.gracePeriod) } : {}),
        ...(req.ttl !== undefined ? { ttlMs: durationMsFromPb(req.ttl) } : {}),
      };
      const target = req.target.case === "token" ? { token: req.target.value } : { tokenId: req.target.value };
      const result = await rotateToken(this.deps, caller, { ...target, ...options }, meta);
      const now = this.deps.clock.now();
      return { token: result.token, info: tokenInfo(result.successor, now), predecessor: tokenInfo(result.predecessor, now) };
    });

  revokeTokens: Impl["revokeTokens"] = (req, ctx) =>
    this.run(ctx, async () => {
      if (req.selector === undefined) throw invalidArgument("selector", "is required");
      const { caller, meta } = await this.caller(ctx, SCOPES.revoke, "revoke");
      const sel = req.selector;
      const createdBefore = dateFromPb(sel.createdBefore);
      const expireBefore = dateFromPb(sel.expireBefore);
      const result = await revokeTokens(
        this.deps,
        caller,
        {
          selector: {
            subject: sel.subject,
            team: sel.team,
            issuedByTokenId: sel.issuedByTokenId,
            name: sel.name,
            ...(createdBefore !== undefined ? { createdBefore } : {}),
            ...(expireBefore !== undefined ? { expireBefore } : {}),
          },
          dryRun: req.dryRun,
          reason: req.reason,
          pageSize: req.pageSize,
        },
        meta,
      );
      const now = this.deps.clock.now();
      return {
        matchedCount: BigInt(result.matchedCount),
        revokedCount: BigInt(result.revokedCount),
        tokens: result.first.map((record) => tokenInfo(record, now)),
        operationId: result.operationId,
      };
    });

  listTokens: Impl["listTokens"] = (req, ctx) =>
    this.run(ctx, async () => {
      const { caller, meta } = await this.caller(ctx, SCOPES.read, "list");
      const page = await listTokens(this.deps, caller, req, meta);
      const now = this.deps.clock.now();
      return { tokens: page.items.map((record) => tokenInfo(record, now)), nextPageToken: page.nextPageToken };
    });

  listSecurityEvents: Impl["listSecurityEvents"] = (req, ctx) =>
    this.run(ctx, async () => {
      const { caller, meta } = await this.caller(ctx, undefined, "list");
      const minSeverity = severityFromPb(req.minSeverity);
      const since = dateFromPb(req.since);
      const page = await listSecurityEvents(
        this.deps,
        caller,
        { type: req.type, pageSize: req.pageSize, pageToken: req.pageToken, ...(minSeverity ? { minSeverity } : {}), ...(since ? { since } : {}) },
        meta,
      );
      return { events: page.items.map(securityEvent), nextPageToken: page.nextPageToken };
    });

  watchRevocations: Impl["watchRevocations"] = (req, ctx) => this.watch(req.heartbeatInterval, ctx, req.resumeAfterPosition > 0n ? req.resumeAfterPosition : undefined);

  private async *watch(interval: Duration | undefined, ctx: HandlerContext, resumeAfter?: bigint): AsyncGenerator<MessageInitShape<typeof WatchRevocationsResponseSchema>> {
    try {
      const asked = interval === undefined ? 1000 : durationWithin("heartbeat_interval", durationMsFromPb(interval), HEARTBEAT_RANGE_MS.min, HEARTBEAT_RANGE_MS.max);
      const heartbeatMs = Math.max(asked, this.minHeartbeatMs);
      if (resumeAfter !== undefined && resumeAfter > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidArgument("resume_after_position", "is beyond any position this service hands out");
      const credential = callerCredential(ctx);
      const { caller, meta } = await this.caller(ctx, SCOPES.introspect, "list");
      const release = this.streams.acquire(caller.tokenId);
      // Also on abort: a transport may leave a generator suspended at a yield
      // when its client goes away, and the slot must not wait for it.
      ctx.signal.addEventListener("abort", release, { once: true });
      try {
        ctx.responseHeader.set("x-heartbeat-interval-ms", String(heartbeatMs));
        // The stream lives as long as its caller may: a revocation notice naming
        // the caller's token ends it at once; the re-check catches expiry, and a
        // revocation missed while the channel was down once the cached answer
        // has aged out (the staleness bound).
        const owner = {
          tokenId: caller.tokenId,
          recheckMs: this.streamRecheckMs,
          recheck: async () => {
            await authenticate(this.deps, credential, meta);
          },
        };
        for await (const event of watchRevocations(this.deps.revocations, heartbeatMs, ctx.signal, Date.now, owner, resumeAfter === undefined ? undefined : Number(resumeAfter))) {
          yield watchResponse(event);
        }
      } finally {
        ctx.signal.removeEventListener("abort", release);
        release();
      }
    } catch (error) {
      throw toConnectError(error, this.deps.log, `/${ctx.service.typeName}/${ctx.method.name}`);
    }
  }

  getJwks: Impl["getJwks"] = (_req, ctx) =>
    this.run(ctx, async () => {
      await this.caller(ctx, undefined, "list");
      const jwks = this.deps.backendJwt.jwks();
      return { keys: jwks.keys.map(jsonWebKey), jwksJson: JSON.stringify(jwks) };
    });

  listLegacyJwtUsage: Impl["listLegacyJwtUsage"] = (req, ctx) =>
    this.run(ctx, async () => {
      const { caller, meta } = await this.caller(ctx, undefined, "list");
      const page = await listLegacyJwtUsage(this.deps, caller, req, meta);
      return {
        usage: page.items.map((u) => ({ subject: u.subject, introspectionCount: BigInt(u.count), firstSeenTime: timestampFromDate(u.firstSeen), lastSeenTime: timestampFromDate(u.lastSeen) })),
        nextPageToken: page.nextPageToken,
      };
    });
}
