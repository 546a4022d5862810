import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";
import type { TokenService, WatchRevocationsResponseSchema } from "../../gen/tokens/v1/token_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { watchRevocations } from "../domain/watch.js";
import { authenticate, requireScope } from "../domain/access.js";
import { invalidArgument } from "../domain/errors.js";
import { introspectToken } from "../domain/introspect.js";
import { issueToken } from "../domain/issue.js";
import { listLegacyJwtUsage, listSecurityEvents, listTokens } from "../domain/list.js";
import { SCOPES, type Caller, type RequestMeta, type ServiceScope } from "../domain/model.js";
import type { TokenDeps } from "../domain/ports.js";
import { revokeToken } from "../domain/revoke.js";
import { MAX_PRESENTED_TOKEN_LENGTH } from "../domain/token-format.js";
import { callerCredential, requestMeta } from "./auth.js";
import { toConnectError } from "./errors.js";
import { dateFromPb, deprecationHeaders, introspectAnswer, jsonWebKey, watchResponse, securityEvent, severityFromPb, tokenInfo, withRevocationMark } from "./mapping.js";

type Impl = ServiceImpl<typeof TokenService>;

/**
 * The one implementation of `tokens.v1.TokenService`; both the gRPC and the
 * Connect server mount it. Each method authenticates the caller, maps the
 * request to a domain call and maps the result back. Nothing else lives here.
 */
export class TokenServiceHandler implements Impl {
  constructor(private readonly deps: TokenDeps) {}

  /** Authenticates the caller and requires a scope; returns the caller and the request facts. */
  private async caller(ctx: HandlerContext, scope: ServiceScope | undefined): Promise<{ caller: Caller; meta: RequestMeta }> {
    const meta = requestMeta(ctx);
    const caller = await authenticate(this.deps, callerCredential(ctx), meta);
    if (scope) requireScope(this.deps, caller, scope, meta);
    return { caller, meta };
  }

  /** Runs a handler body, turning any failure into a caller-safe status. */
  private async run<T>(ctx: HandlerContext, body: () => Promise<T>): Promise<T> {
    try {
      return await body();
    } catch (error) {
      throw toConnectError(error, this.deps.log, `/${ctx.service.typeName}/${ctx.method.name}`);
    }
  }

  issueToken: Impl["issueToken"] = (req, ctx) =>
    this.run(ctx, async () => {
      const { caller, meta } = await this.caller(ctx, SCOPES.create);
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
          ...(req.expiry.case === "ttl" ? { ttlMs: durationMs("ttl", req.expiry.value) } : {}),
          ...(req.expiry.case === "expireTime" ? { expiresAt: dateFromPb(req.expiry.value)! } : {}),
        },
        meta,
      );
      return { token: issued.token, info: tokenInfo(issued.record, this.deps.clock.now()) };
    });

  introspectToken: Impl["introspectToken"] = (req, ctx) =>
    this.run(ctx, async () => {
      // Refuse oversized and empty values before authenticating: no work for junk.
      if (req.token === "") throw invalidArgument("token", "is required");
      if (req.token.length > MAX_PRESENTED_TOKEN_LENGTH) throw invalidArgument("token", `must be at most ${MAX_PRESENTED_TOKEN_LENGTH} characters`);
      if (req.tokenTypeHint.length > 64) throw invalidArgument("token_type_hint", "must be at most 64 characters");
      const { meta } = await this.caller(ctx, SCOPES.introspect);
      // Before the lookup: the answer reflects at least every revocation up to this mark.
      const mark = this.deps.revocations.mark();
      const result = await introspectToken(this.deps, req.token, meta, { backendJwt: req.includeBackendJwt });
      if (result.active && result.deprecation) {
        for (const [name, value] of deprecationHeaders(result.deprecation)) ctx.responseHeader.set(name, value);
      }
      return withRevocationMark(introspectAnswer(result, this.deps.policy), mark);
    });

  revokeToken: Impl["revokeToken"] = (req, ctx) =>
    this.run(ctx, async () => {
      if (req.target.case === undefined) throw invalidArgument("target", "set one of token, token_id or legacy_jti");
      const { caller, meta } = await this.caller(ctx, SCOPES.revoke);
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

  listTokens: Impl["listTokens"] = (req, ctx) =>
    this.run(ctx, async () => {
      const { caller, meta } = await this.caller(ctx, SCOPES.read);
      const page = await listTokens(this.deps, caller, req, meta);
      const now = this.deps.clock.now();
      return { tokens: page.items.map((record) => tokenInfo(record, now)), nextPageToken: page.nextPageToken };
    });

  listSecurityEvents: Impl["listSecurityEvents"] = (req, ctx) =>
    this.run(ctx, async () => {
      const { caller, meta } = await this.caller(ctx, undefined);
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

  watchRevocations: Impl["watchRevocations"] = (req, ctx) => this.watch(req.heartbeatInterval, ctx, req.resumeAfterPosition);

  private async *watch(interval: Duration | undefined, ctx: HandlerContext, resumeAfter?: bigint): AsyncGenerator<MessageInitShape<typeof WatchRevocationsResponseSchema>> {
    try {
      const heartbeatMs = interval === undefined ? 1000 : durationMs("heartbeat_interval", interval);
      if (heartbeatMs < 100 || heartbeatMs > 60_000) throw invalidArgument("heartbeat_interval", "must be between 100ms and 60s");
      if (resumeAfter !== undefined && resumeAfter > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidArgument("resume_after_position", "is beyond any position this service hands out");
      await this.caller(ctx, SCOPES.introspect);
      for await (const event of watchRevocations(this.deps.revocations, heartbeatMs, ctx.signal, undefined, resumeAfter === undefined ? undefined : Number(resumeAfter))) {
        yield watchResponse(event);
      }
    } catch (error) {
      throw toConnectError(error, this.deps.log, `/${ctx.service.typeName}/${ctx.method.name}`);
    }
  }

  getJwks: Impl["getJwks"] = (_req, ctx) =>
    this.run(ctx, async () => {
      await this.caller(ctx, undefined);
      const jwks = this.deps.backendJwt.jwks();
      return { keys: jwks.keys.map(jsonWebKey), jwksJson: JSON.stringify(jwks) };
    });

  listLegacyJwtUsage: Impl["listLegacyJwtUsage"] = (req, ctx) =>
    this.run(ctx, async () => {
      const { caller, meta } = await this.caller(ctx, undefined);
      const page = await listLegacyJwtUsage(this.deps, caller, req, meta);
      return {
        usage: page.items.map((u) => ({ subject: u.subject, introspectionCount: BigInt(u.count), firstSeenTime: timestampFromDate(u.firstSeen), lastSeenTime: timestampFromDate(u.lastSeen) })),
        nextPageToken: page.nextPageToken,
      };
    });
}

/** A protobuf Duration → milliseconds, refusing negative or mixed-sign values. */
function durationMs(field: string, value: Duration): number {
  const ms = Number(value.seconds) * 1000 + Math.trunc(value.nanos / 1_000_000);
  if (value.seconds < 0n || value.nanos < 0 || ms <= 0) throw invalidArgument(field, "must be positive");
  return ms;
}
