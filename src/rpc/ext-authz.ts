import { create, isMessage, type JsonObject } from "@bufbuild/protobuf";
import { Code, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { HeaderValueOptionSchema, HeaderValueOption_HeaderAppendAction, type HeaderValueOption } from "../../gen/envoy/config/core/v3/base_pb.js";
import { CheckRequestSchema, CheckResponseSchema, type Authorization, type CheckRequest, type CheckResponse } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { StatusCode } from "../../gen/envoy/type/v3/http_status_pb.js";
import { EXT_AUTHZ_FIX, extAuthzProtected, type Config } from "../config.js";
import { introspectToken, metaFields, type IntrospectResult, type IntrospectedClaims } from "../domain/introspect.js";
import type { RequestMeta } from "../domain/model.js";
import type { Logger, TokenDeps } from "../domain/ports.js";
import { requestHeaderValue } from "../server/context.js";
import { requestMeta } from "./auth.js";
import { toConnectError } from "./errors.js";
import { checkFactsOf, checkRequestDecoder, type CheckFacts } from "./ext-authz-wire.js";
import { bearerChallenge, bearerToken, claimHeaders, headerSafe, secretMatcher } from "./gateway-auth.js";
import { deprecationHeaders } from "./mapping.js";
import { HotAnswers } from "./hot-answers.js";

/**
 * Envoy's external authorization over gRPC: `envoy.service.auth.v3.Authorization/Check`,
 * what Envoy's `envoy.filters.http.ext_authz` filter calls (and with it
 * Istio's `envoyExtAuthzGrpc` provider and Envoy Gateway's `extAuth.grpc`).
 * The same decision as forward auth (`server/http/forward-auth.ts`), in
 * Envoy's message shapes:
 *
 * - active token: `OK` with `ok_response` setting the `X-Auth-*` headers on
 *   the upstream request (overwriting any a client sent), optionally
 *   `X-Auth-Backend-Jwt` and removing the credential header, the legacy-JWT
 *   deprecation headers added to the client's answer, and the claims as
 *   `dynamic_metadata` (Envoy stores them under `envoy.filters.http.ext_authz`);
 * - no, malformed or inactive credential: `denied_response` 401 with an
 *   RFC 6750 §3 `WWW-Authenticate` challenge;
 * - caller without `EXT_AUTHZ_SECRET`: `denied_response` 403;
 * - store outage: `denied_response` **503** with `Retry-After`, never a 401.
 *
 * Every outcome is a `CheckResponse`, never a gRPC error, on purpose. Envoy
 * treats a failed Check call (any gRPC error status, a timeout) as an
 * *error*, and on an error it lets the request through when the filter has
 * `failure_mode_allow: true`, or answers `status_on_error` (403 by default)
 * otherwise; a `CheckResponse` with a non-OK status is a *denial*, answered
 * with `denied_response.status` whatever `failure_mode_allow` says (Envoy
 * `source/extensions/filters/common/ext_authz/ext_authz_grpc_impl.cc`,
 * `onSuccess` → `CheckStatus::Denied`, `onFailure` → `CheckStatus::Error`;
 * the filter's `failure_mode_allow` and `status_on_error` documentation). So
 * an outage answered as a denial is a 503 that no fail-open setting turns
 * into an unauthenticated request upstream, and no refusal becomes a 401
 * the client would take as "your token is bad". (Newer Envoys also have
 * `CheckResponse.error_response`, which is treated as an error and so
 * honours `failure_mode_allow`: deliberately not used.)
 *
 * That is also why a malformed request is not INVALID_ARGUMENT here: a
 * CheckRequest without HTTP attributes (Envoy's network filter) or without a
 * usable credential is a 401 denial. Only bytes that are not a CheckRequest
 * at all get a gRPC error (the adapter's INVALID_ARGUMENT): Envoy never sends those.
 */
export class ExtAuthzHandler implements ServiceImpl<typeof Authorization> {
  private readonly answers: FixedAnswers;
  /** Whether a call carries the secret; undefined when none is configured. */
  private readonly fromEnvoy: ((presented: string | undefined) => boolean) | undefined;
  /** Allowed answers of hot tokens (see {@link allowed}). */
  private readonly hot = new HotAnswers<IntrospectedClaims, CheckResponse>(MAX_HOT_ANSWERS);
  /** Denials per inactive result: the common ones are shared frozen objects, so this allocates nothing per call. */
  private readonly denials = new WeakMap<IntrospectResult, CheckResponse>();
  /**
   * The gRPC server decodes Check's requests with this (see `grpcServiceDefinition`):
   * the few facts Check reads, straight from the wire, instead of the whole
   * message with its map of headers (`ext-authz-wire.ts`).
   */
  readonly grpcRequestDecoders: { readonly check: (bytes: Uint8Array) => CheckFacts | CheckRequest };

  constructor(
    private readonly deps: TokenDeps,
    private readonly options: ExtAuthzOptions,
  ) {
    this.answers = fixedAnswers();
    this.fromEnvoy = options.secret === undefined ? undefined : secretMatcher(options.secret);
    this.grpcRequestDecoders = { check: checkRequestDecoder(options.header) };
  }

  /** A CheckRequest from the Connect router or `fromBinary`, or its facts from the gRPC server's wire reader. */
  check = async (req: CheckRequest | CheckFacts, ctx: HandlerContext): Promise<CheckResponse> => {
    const facts = isMessage(req, CheckRequestSchema) ? checkFactsOf(req, this.options.header) : req;
    const meta = new CheckMeta(ctx, facts);
    try {
      if (this.fromEnvoy !== undefined && !this.fromEnvoy(requestHeaderValue(ctx, EXT_AUTHZ_SECRET_METADATA))) {
        this.deps.events.record({
          type: "authentication_failed",
          severity: "warning",
          message: `ext_authz Check refused: missing or wrong ${EXT_AUTHZ_SECRET_METADATA} metadata; only the configured Envoy may call it`,
          serviceEnvironment: this.deps.policy.environment,
          ...metaFields(meta),
        });
        return this.answers.forbidden;
      }
      const credential = facts.credential;
      // RFC 6750 §3.1: no error code when the request carried no credentials.
      if (credential === undefined || credential === "") return this.answers.noCredentials;
      const token = bearerToken(credential);
      if (token === undefined) return this.answers.notBearer;

      const result = await introspectToken(this.deps, token, meta, { backendJwt: this.options.backendJwt });
      return result.active ? this.allowed(result) : this.denied(result);
    } catch (error) {
      return failure(toConnectError(error, this.deps.log, CHECK_METHOD));
    }
  };

  /**
   * The allowed answer. For a token seen again (answered from the cache,
   * with nothing per call in it) the message built the first time is re-sent,
   * frozen, so the gRPC adapter also reuses its encoded bytes: a hit costs
   * the lookup and no building or encoding. Bounded to a hot set, oldest
   * out first, and weakly keyed, like `introspectAnswer` (see HotAnswers).
   */
  private allowed(result: Extract<IntrospectResult, { active: true }>): CheckResponse {
    const reusable = result.fromCache === true && result.backendJwt === undefined && result.deprecation === undefined;
    if (reusable) {
      const known = this.hot.get(result.claims);
      if (known !== undefined) return known;
    }
    const headers = Object.entries(claimHeaders(result.claims)).map(([key, value]) => overwrite(key, value));
    if (result.backendJwt !== undefined) headers.push(overwrite("x-auth-backend-jwt", headerSafe(result.backendJwt)));
    const answer = create(CheckResponseSchema, {
      status: { code: 0 },
      httpResponse: {
        case: "okResponse",
        value: {
          headers,
          headersToRemove: this.options.removeHeader ? [this.options.header] : [],
          // For the client, as forward auth hands them to the proxy to pass on.
          responseHeadersToAdd: result.deprecation ? deprecationHeaders(result.deprecation).map(([key, value]) => overwrite(key, value)) : [],
        },
      },
      dynamicMetadata: claimsMetadata(result.claims),
    });
    if (reusable) {
      this.hot.set(result.claims, Object.freeze(answer));
    }
    return answer;
  }

  /** 401 `invalid_token` with the inactive reason's message. */
  private denied(result: Extract<IntrospectResult, { active: false }>): CheckResponse {
    let answer = this.denials.get(result);
    if (answer === undefined) {
      answer = Object.freeze(denial(StatusCode.Unauthorized, Code.Unauthenticated, "invalid_token", result.message, { "www-authenticate": bearerChallenge("invalid_token", result.message) }));
      this.denials.set(result, answer);
    }
    return answer;
  }
}

/** How Check behaves, from configuration. */
export interface ExtAuthzOptions {
  /** When set, every call must carry the `x-ext-authz-secret` metadata with this value. */
  readonly secret: string | undefined;
  /** The lower-case request header holding the `Bearer` credential. */
  readonly header: string;
  /** Whether an active opaque token's answer carries `X-Auth-Backend-Jwt`. */
  readonly backendJwt: boolean;
  /** Whether Envoy is told to remove the credential header before the upstream. */
  readonly removeHeader: boolean;
}

/** The configuration {@link extAuthzOptions} reads. */
export type ExtAuthzConfig = Pick<
  Config,
  "environment" | "extAuthzEnabled" | "extAuthzSecret" | "extAuthzHeader" | "extAuthzBackendJwt" | "extAuthzRemoveHeader" | "tlsCertFile" | "tlsClientCaFile" | "tlsPorts"
>;

/**
 * Whether Check is served, decided once at start-up and said in the log, by
 * forward auth's rule (`forwardAuthOptions`): Check answers anyone who
 * reaches it about any token, so it must know the caller is Envoy, which
 * sends `EXT_AUTHZ_SECRET` as gRPC metadata (`grpc_service.initial_metadata`)
 * or connects with a client certificate (mutual TLS on the gRPC port).
 * Unprotected: served in development with a warning; in staging and
 * production not mounted at all (UNIMPLEMENTED), with an error naming the fix.
 * (Set explicitly without protection there, `loadConfig` already refused.)
 *
 * Returns the options, or `undefined` when Check is not served.
 */
export function extAuthzOptions(config: ExtAuthzConfig, log: Logger): ExtAuthzOptions | undefined {
  if (!config.extAuthzEnabled) return undefined;
  const options = { secret: config.extAuthzSecret, header: config.extAuthzHeader, backendJwt: config.extAuthzBackendJwt, removeHeader: config.extAuthzRemoveHeader };
  if (extAuthzProtected(config)) return options;
  if (config.environment === "development") {
    log.warn({ ext_authz: "open" }, `ext_authz: Authorization/Check is served without EXT_AUTHZ_SECRET or mutual TLS, so anyone who can reach the gRPC port may ask it about any token (tolerated in development only; in staging and production it is not served): ${EXT_AUTHZ_FIX}`);
    return options;
  }
  log.error({ ext_authz: "not_served" }, `ext_authz: Authorization/Check is NOT served: in ${config.environment} it needs EXT_AUTHZ_SECRET or mutual TLS on the gRPC port: ${EXT_AUTHZ_FIX}`);
  return undefined;
}

/** The gRPC metadata Envoy proves itself with, when `EXT_AUTHZ_SECRET` is set. */
export const EXT_AUTHZ_SECRET_METADATA = "x-ext-authz-secret";

/** The method, as security events and logs name it. */
export const CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check";

const MAX_HOT_ANSWERS = 10_000;

/** A request id Envoy sends (`x-request-id` of the original request) is kept when it has the shape ours have. */
const REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/**
 * The request facts for security events: the call's peer (Envoy), the end
 * user's `user-agent` and the original request's id from the CheckRequest,
 * so an event can be found in Envoy's access log. Read only when an event
 * needs them (a class, not a literal with getters: cheaper to make per call).
 */
class CheckMeta implements RequestMeta {
  readonly method = CHECK_METHOD;
  constructor(
    private readonly ctx: HandlerContext,
    private readonly facts: CheckFacts,
  ) {}

  get peer(): string | undefined {
    return requestMeta(this.ctx).peer;
  }

  get userAgent(): string | undefined {
    return this.facts.userAgent?.slice(0, 256) ?? requestMeta(this.ctx).userAgent;
  }

  get requestId(): string | undefined {
    return this.facts.http && REQUEST_ID.test(this.facts.id) ? this.facts.id : requestMeta(this.ctx).requestId;
  }
}

/**
 * A header that replaces any of the same name on the request. A client must
 * not smuggle its own `X-Auth-Subject` past the gateway: Envoy's default
 * action appends. (Envoys older than `append_action` read the deprecated
 * `append`, which defaults to false, replace, in ext_authz answers.)
 */
function overwrite(key: string, value: string): HeaderValueOption {
  return create(HeaderValueOptionSchema, { header: { key, value }, appendAction: HeaderValueOption_HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD });
}

/**
 * The claims as `dynamic_metadata`, RFC 7662 §2.2 member names where there is
 * one (for RBAC and access-log rules: `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:sub)%`).
 */
function claimsMetadata(claims: IntrospectedClaims): JsonObject {
  const expiresAt = claims.expiresAt;
  return {
    sub: claims.subject,
    scope: claims.scopes.join(" "),
    teams: [...claims.teams],
    namespaces: [...claims.namespaces],
    is_admin: claims.isAdmin,
    jti: claims.id,
    token_kind: claims.kind,
    environment: claims.environment,
    ...(expiresAt ? { exp: Math.floor(expiresAt.getTime() / 1000) } : {}),
  };
}

/** A refusal: gRPC code in `status`, the HTTP answer Envoy sends the client in `denied_response`. */
function denial(status: StatusCode, code: Code, error: string, description: string, extra: Readonly<Record<string, string>> = {}): CheckResponse {
  const headers = Object.entries({ "content-type": "application/json", "cache-control": "no-store", ...extra }).map(([key, value]) => overwrite(key, value));
  return create(CheckResponseSchema, {
    status: { code: code as number, message: description },
    httpResponse: { case: "deniedResponse", value: { status: { code: status }, headers, body: JSON.stringify({ error, error_description: description }) } },
  });
}

/** The answers that do not depend on the token. */
interface FixedAnswers {
  readonly forbidden: CheckResponse;
  readonly noCredentials: CheckResponse;
  readonly notBearer: CheckResponse;
}

function fixedAnswers(): FixedAnswers {
  const notBearer = "The Authorization header must be `Bearer <token>`.";
  return {
    forbidden: Object.freeze(denial(StatusCode.Forbidden, Code.PermissionDenied, "forbidden", "this authorizer answers only the configured Envoy")),
    noCredentials: Object.freeze(denial(StatusCode.Unauthorized, Code.Unauthenticated, "invalid_request", "send Authorization: Bearer <token>", { "www-authenticate": "Bearer" })),
    notBearer: Object.freeze(denial(StatusCode.Unauthorized, Code.Unauthenticated, "invalid_request", notBearer, { "www-authenticate": bearerChallenge("invalid_request", notBearer) })),
  };
}

/**
 * A failure as a denial Envoy passes on whatever `failure_mode_allow` says:
 * an outage (store unavailable, its deadline passed) is 503 with
 * `Retry-After` (RFC 9110 §10.2.3), anything else 500. The message is the
 * caller-safe one `toConnectError` kept (it has logged the detail).
 */
function failure(error: { readonly code: Code; readonly rawMessage: string }): CheckResponse {
  const outage = error.code === Code.Unavailable || error.code === Code.DeadlineExceeded;
  return outage
    ? denial(StatusCode.ServiceUnavailable, Code.Unavailable, "temporarily_unavailable", error.rawMessage, { "retry-after": "1" })
    : denial(StatusCode.InternalServerError, Code.Internal, "server_error", "internal error");
}
