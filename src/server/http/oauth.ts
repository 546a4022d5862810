import { requireScope } from "../../domain/access.js";
import { authenticateClient, authenticateClientSecretPost, clientAuthScheme, type AuthenticatedClient } from "../../domain/client-auth.js";
import { TokenError, invalidArgument } from "../../domain/errors.js";
import { introspectToken } from "../../domain/introspect.js";
import { SCOPES, type RequestMeta, type ServiceScope } from "../../domain/model.js";
import type { TokenDeps } from "../../domain/ports.js";
import { RateLimitedError, retryAfterSeconds } from "../../domain/rate-limit.js";
import { revokeToken } from "../../domain/revoke.js";
import { MAX_PRESENTED_TOKEN_LENGTH } from "../../domain/token-format.js";
import { deprecationHeaders } from "../../rpc/mapping.js";
import type { HttpRequest, HttpResponse } from "../http-server.js";
import { introspectionJson } from "./introspection-json.js";
import { RETRY_AFTER, header, httpError, readForm, refuseForm, requestMeta, send, sendJson, type Headers } from "./io.js";

/** What the RFC 7662 and RFC 7009 endpoints need. */
export interface OAuthEndpointsDeps {
  readonly deps: TokenDeps;
  /** `iss` of RFC 9701 signed introspection answers: the OAuth issuer the metadata names, when there is one. */
  readonly issuer: (req: HttpRequest) => string;
  /** Signs an RFC 9701 answer with the backend JWT keys (`typ` set by the signer). */
  readonly signIntrospection: (payload: Record<string, unknown>) => Promise<string>;
}

/** The media type of an RFC 9701 answer (RFC 9701 §4, §5). */
export const INTROSPECTION_JWT_TYPE = "application/token-introspection+jwt";

/** RFC 6749 §5.1 asks that answers carrying credentials are not stored; the same holds for claims. */
const NO_STORE = Object.freeze({ "cache-control": "no-store", pragma: "no-cache" } as const);

/** {@link NO_STORE} with the JSON media type: the headers of an ordinary introspection answer. */
const JSON_NO_STORE = Object.freeze({ "content-type": "application/json", ...NO_STORE });

/** Client credential parameters, each allowed at most once (RFC 6749 §3.2). */
const CLIENT_PARAMETERS = Object.freeze(["client_id", "client_secret"]);

/** Token parameters, each allowed at most once (RFC 6749 §3.2). */
const TOKEN_PARAMETERS = Object.freeze(["token", "token_type_hint"]);

/** The challenge realm of the OAuth endpoints (RFC 7235 §2.2). */
const REALM = "token-introspection";

/**
 * `POST /oauth2/introspect` (RFC 7662 §2): form `token` and optional
 * `token_type_hint` (accepted, ignored: the token's shape tells its kind).
 * The client authenticates with HTTP Basic, the `client_id` and
 * `client_secret` form parameters, or a Bearer token (see
 * `clientOf`) and needs `tokens.introspect`. The answer is RFC 7662
 * §2.2 JSON, or with `Accept: application/token-introspection+jwt` the same
 * answer in a signed JWT (RFC 9701).
 */
export async function introspectEndpoint(o: OAuthEndpointsDeps, req: HttpRequest, res: HttpResponse): Promise<void> {
  const route = "POST /oauth2/introspect";
  const authorization = header(req, "authorization");
  try {
    const request = await authorizedTokenRequest(o, req, res, route, authorization, SCOPES.introspect);
    if (request === undefined) return;
    const { token, meta, clientId } = request;
    const result = await introspectToken(o.deps, token, meta, { lookupOwner: clientId });
    const answer = introspectionJson(result, o.deps.policy);
    const deprecated = result.active && result.deprecation !== undefined;
    const headers: Headers = deprecated ? { ...NO_STORE, ...Object.fromEntries(deprecationHeaders(result.deprecation!)) } : NO_STORE;
    if (!acceptsIntrospectionJwt(header(req, "accept"))) {
      // The common answer's headers are one constant: no per-call header objects to merge.
      return deprecated ? sendJson(req, res, 200, answer.text, headers) : send(req, res, 200, answer.text, JSON_NO_STORE);
    }
    // RFC 9701 §5: iss, aud (the client that asked), iat and the answer itself.
    // No top-level sub or exp, so it cannot pass for an access token (§8.1).
    const jwt = await o.signIntrospection({
      iss: o.issuer(req),
      aud: clientId,
      iat: Math.floor(o.deps.clock.now().getTime() / 1000),
      token_introspection: answer.json,
    });
    send(req, res, 200, jwt, { "content-type": INTROSPECTION_JWT_TYPE, ...headers });
  } catch (error) {
    refuse(o, req, res, route, authorization, error);
  }
}

/**
 * `POST /oauth2/revoke` (RFC 7009 §2): form `token` and optional
 * `token_type_hint` (ignored). Same client authentication; needs
 * `tokens.revoke`. Holding a token is authority over it (RFC 7009 §2.1), so
 * any such client may revoke any token by value. `200` with an empty body
 * for every outcome, unknown and invalid tokens included (§2.2); committed
 * before it answers.
 */
export async function revokeEndpoint(o: OAuthEndpointsDeps, req: HttpRequest, res: HttpResponse): Promise<void> {
  const route = "POST /oauth2/revoke";
  const authorization = header(req, "authorization");
  try {
    const request = await authorizedTokenRequest(o, req, res, route, authorization, SCOPES.revoke);
    if (request === undefined) return;
    const { token, meta, caller } = request;
    await revokeToken(o.deps, caller, { token, reason: "" }, meta);
    send(req, res, 200, "", NO_STORE);
  } catch (error) {
    refuse(o, req, res, route, authorization, error);
  }
}

/**
 * What both endpoints do first: read the form (answering a bad one itself,
 * then undefined), take its `token`, authenticate the client and require the
 * scope. Authentication and scope failures throw, for `refuse` to answer.
 */
async function authorizedTokenRequest(
  o: OAuthEndpointsDeps,
  req: HttpRequest,
  res: HttpResponse,
  route: string,
  authorization: string | undefined,
  scope: ServiceScope,
) {
  const form = await readForm(req);
  if (!form.ok) {
    refuseForm(req, res, form);
    return undefined;
  }
  const token = tokenParameter(form.fields, form.repeated);
  const meta = requestMeta(req, route);
  const { caller, clientId } = await clientOf(o, form.fields, form.repeated, authorization, meta);
  o.deps.limits?.admit(caller, scope === SCOPES.revoke ? "revoke" : "introspect", meta, o.deps.clock.now().getTime());
  requireScope(o.deps, caller, scope, meta);
  return { token, meta, caller, clientId };
}

/**
 * Authenticates the client by exactly one method (RFC 6749 §2.3: "MUST NOT
 * use more than one authentication method in each request"):
 *
 * - `client_secret_post` (RFC 6749 §2.3.1): `client_id` and `client_secret`
 *   form parameters, with no `Authorization` header; both at most once;
 * - otherwise the `Authorization` header: `client_secret_basic` or Bearer.
 *   A `client_id` parameter beside it (RFC 6749 §3.2.1 lets a client name
 *   itself) must name the client the header authenticated.
 *
 * A secret sent both ways is `invalid_request` (RFC 6749 §5.2: "utilizes
 * more than one mechanism"). No message repeats a value the client sent.
 */
async function clientOf(
  o: OAuthEndpointsDeps,
  fields: ReadonlyMap<string, string>,
  repeated: ReadonlySet<string>,
  authorization: string | undefined,
  meta: RequestMeta,
): Promise<AuthenticatedClient> {
  for (const name of CLIENT_PARAMETERS) {
    if (repeated.has(name)) throw invalidArgument(name, "must be sent at most once");
  }
  const clientId = fields.get("client_id");
  const clientSecret = fields.get("client_secret");
  if (clientSecret !== undefined) {
    if (authorization !== undefined && authorization !== "") {
      throw invalidArgument("client_secret", "use one client authentication method per request: the Authorization header or client_id with client_secret, not both (RFC 6749 §2.3)");
    }
    if (clientId === undefined) throw new TokenError("unauthenticated", "client_secret needs client_id, the id of the token sent as client_secret");
    return authenticateClientSecretPost(o.deps, clientId, clientSecret, meta);
  }
  const client = await authenticateClient(o.deps, authorization, meta);
  if (clientId !== undefined && clientId.toLowerCase() !== client.clientId) {
    throw new TokenError("unauthenticated", "client credentials refused: client_id does not name the client the Authorization header authenticated");
  }
  return client;
}

/** The `token` parameter: present once, non-empty, not oversized (RFC 6749 §3.2: no repeated parameters). */
function tokenParameter(fields: ReadonlyMap<string, string>, repeated: ReadonlySet<string>): string {
  for (const name of TOKEN_PARAMETERS) {
    if (repeated.has(name)) throw invalidArgument(name, "must be sent at most once");
  }
  const token = fields.get("token") ?? "";
  if (token === "") throw invalidArgument("token", "is required");
  if (token.length > MAX_PRESENTED_TOKEN_LENGTH) throw invalidArgument("token", `must be at most ${MAX_PRESENTED_TOKEN_LENGTH} characters`);
  if ((fields.get("token_type_hint") ?? "").length > 64) throw invalidArgument("token_type_hint", "must be at most 64 characters");
  return token;
}

/**
 * Whether the client asked for an RFC 9701 JWT answer: the media type is
 * listed in `Accept` without `q=0` (RFC 9110 §12.5.1). Anything else gets JSON.
 */
export function acceptsIntrospectionJwt(accept: string | undefined): boolean {
  if (accept === undefined || !accept.toLowerCase().includes(INTROSPECTION_JWT_TYPE)) return false;
  return accept.split(",").some((range) => {
    const [type, ...params] = range.split(";").map((part) => part.trim().toLowerCase());
    if (type !== INTROSPECTION_JWT_TYPE) return false;
    const q = params.find((p) => p.startsWith("q="));
    return q === undefined || Number(q.slice(2)) > 0;
  });
}

/**
 * Answers a failure as RFC 6749 §5.2 JSON. A refused client gets 401 with a
 * challenge in the scheme it tried (RFC 6749 §5.2: "matching the
 * authentication scheme used by the client"); Basic when it sent none.
 */
function refuse(o: OAuthEndpointsDeps, req: HttpRequest, res: HttpResponse, route: string, authorization: string | undefined, error: unknown): void {
  if (res.headersSent || res.writableEnded) return;
  const e = httpError(error, o.deps.log, route);
  const headers: Headers = { ...NO_STORE };
  if (e.status === 401) {
    headers["www-authenticate"] = clientAuthScheme(authorization) === "bearer" ? `Bearer realm="${REALM}", error="invalid_token"` : `Basic realm="${REALM}"`;
  } else if (e.status === 403) {
    // RFC 6750 §3.1: name the scope that was missing.
    const scope = route.endsWith("revoke") ? SCOPES.revoke : SCOPES.introspect;
    if (clientAuthScheme(authorization) === "bearer") headers["www-authenticate"] = `Bearer realm="${REALM}", error="insufficient_scope", scope="${scope}"`;
  } else if (e.status === 503) {
    Object.assign(headers, RETRY_AFTER);
  } else if (error instanceof RateLimitedError) {
    // RFC 6585 §4: 429 may say how long to wait.
    headers["retry-after"] = String(retryAfterSeconds(error.retryAfterMs));
  }
  sendJson(req, res, e.status, { error: e.error, error_description: e.description }, headers);
}
