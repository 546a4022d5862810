import { createHash, timingSafeEqual } from "node:crypto";
import { revokeLeakedTokens, type LeakReport } from "../../domain/leaks.js";
import type { TokenDeps } from "../../domain/ports.js";
import type { HttpRequest, HttpResponse } from "../http-server.js";
import { header, requestMeta, send, sendJson } from "./io.js";
import { answerFailure, isJson, parseReports, readBody, refuseTooLarge, refuseUnsigned, type GitlabRevocationOptions } from "./secret-scanning.js";

export type { GitlabRevocationOptions } from "./secret-scanning.js";

/**
 * GitLab's Token Revocation API for self-managed instances, the service side
 * a GitLab secret-detection pipeline calls (configured in GitLab as the
 * "token revocation URL" and "token revocation token"):
 *
 * - `GET /v1/revocable_token_types` → `{"types": ["gitleaks_rule_id_cf_api_token"]}`:
 *   the finding types we revoke. GitLab names a finding type after the
 *   secret-detection rule that found it; the rule (a custom gitleaks rule
 *   with id `cf_api_token` and the README's regex) is yours to add.
 * - `POST /v1/revoke` with a JSON array of `{type, token, location}` →
 *   `204`. Findings of other types are ignored.
 *
 * Both need `Authorization: Bearer <GITLAB_REVOCATION_TOKEN>`; otherwise 401
 * and nothing is revoked. Revocation and events are those of every leak
 * report (`domain/leaks.ts`); the call is idempotent.
 */

/** The finding type GitLab sends for our tokens. */
export const GITLAB_TOKEN_TYPE = "gitleaks_rule_id_cf_api_token";


/** Routes `/v1/revocable_token_types` and `/v1/revoke`; false for any other path. */
export function gitlabRevocationRoute(deps: TokenDeps, options: GitlabRevocationOptions, path: string, req: HttpRequest, res: HttpResponse): Promise<void> | false {
  if (path === "/v1/revocable_token_types") {
    if (req.method !== "GET" && req.method !== "HEAD") return Promise.resolve(sendJson(req, res, 405, { error: "method_not_allowed" }, { allow: "GET, HEAD" }));
    return guarded(deps, options, req, res, "GET /v1/revocable_token_types", async () => sendJson(req, res, 200, { types: [GITLAB_TOKEN_TYPE] }, NO_STORE));
  }
  if (path === "/v1/revoke") {
    if (req.method !== "POST") return Promise.resolve(sendJson(req, res, 405, { error: "method_not_allowed" }, { allow: "POST" }));
    return guarded(deps, options, req, res, "POST /v1/revoke", () => revoke(deps, options, req, res));
  }
  return false;
}

const NO_STORE = { "cache-control": "no-store" } as const;

async function guarded(deps: TokenDeps, options: GitlabRevocationOptions, req: HttpRequest, res: HttpResponse, route: string, body: () => Promise<void>): Promise<void> {
  try {
    if (!bearerMatches(header(req, "authorization"), options.token)) return refuseUnsigned(deps, req, res, requestMeta(req, route), "missing or wrong GitLab revocation bearer token");
    await body();
  } catch (error) {
    answerFailure(deps, req, res, route, error);
  }
}

async function revoke(deps: TokenDeps, options: GitlabRevocationOptions, req: HttpRequest, res: HttpResponse): Promise<void> {
  if (!isJson(req)) return sendJson(req, res, 415, { error: "invalid_request", error_description: "send application/json" }, NO_STORE);
  const raw = await readBody(req, options.maxBodyBytes);
  if (raw === undefined) return refuseTooLarge(req, res, `the body must be at most ${options.maxBodyBytes} bytes`);
  const reports = parseReports(raw, options.maxTokens, "location");
  if (typeof reports === "string") return sendJson(req, res, reports.startsWith("too many") ? 413 : 400, { error: "invalid_request", error_description: reports }, NO_STORE);
  const ours: LeakReport[] = reports.filter((r) => r.type === GITLAB_TOKEN_TYPE);
  await revokeLeakedTokens(deps, "gitlab", ours, requestMeta(req, "POST /v1/revoke"));
  send(req, res, 204, "", NO_STORE);
}

/** Constant-time comparison of `Bearer <token>` (as SHA-256 digests, so lengths do not leak). */
function bearerMatches(authorization: string | undefined, expected: string): boolean {
  const match = authorization === undefined ? null : /^Bearer +(\S+)\s*$/i.exec(authorization);
  if (!match) return false;
  const a = createHash("sha256").update(match[1]!).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}
