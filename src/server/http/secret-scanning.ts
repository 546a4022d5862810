import { createPublicKey, verify, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import { metaFields } from "../../domain/introspect.js";
import { revokeLeakedTokens, type LeakReport, type LeakVerdict } from "../../domain/leaks.js";
import { ConfigError, type Config } from "../../config.js";
import type { Logger, TokenDeps } from "../../domain/ports.js";
import { MAX_PRESENTED_TOKEN_LENGTH } from "../../domain/token-format.js";
import type { HttpRequest, HttpResponse } from "../http-server.js";
import { RETRY_AFTER, header, httpError, readBodyWithin, requestMeta, sendJson } from "./io.js";

/**
 * GitHub's secret scanning partner programme: GitHub POSTs a JSON array of
 * `{token, type, url, source}` it found in public content, signed with
 * ECDSA P-256 / SHA-256 over the raw body; the signature (base64 DER) is in
 * `Github-Public-Key-Signature` and the signing key's id in
 * `Github-Public-Key-Identifier`, one of the keys GitHub publishes at
 * `https://api.github.com/meta/public_keys/secret_scanning`. The answer is
 * the feedback array `[{token_hash, token_type, label}]`.
 *
 * Everything is checked before anything is revoked: the size (413), the
 * key id (401 when unknown), the signature over the exact bytes received
 * (401), the shape (400) and the count (413). Served only when keys are
 * configured (`GITHUB_SCANNING_KEYS_FILE`).
 */

/** The path GitHub is registered to call. */
export const GITHUB_SECRET_SCANNING_PATH = "/secret-scanning/github";

/** What the endpoint needs. */
export interface GithubSecretScanningOptions {
  /** GitHub's public keys by `key_identifier`. */
  readonly keys: ReadonlyMap<string, KeyObject>;
  readonly maxBodyBytes: number;
  readonly maxTokens: number;
}

/** What GitLab's revocation API needs (`gitlab-revocation.ts`; declared here so the two files do not import each other). */
export interface GitlabRevocationOptions {
  /** The bearer token GitLab sends. */
  readonly token: string;
  readonly maxBodyBytes: number;
  readonly maxTokens: number;
}

/**
 * Reads GitHub's key list, in the format its meta API serves:
 * `{"public_keys": [{"key_identifier": "…", "key": "-----BEGIN PUBLIC KEY-----…", "is_current": true}]}`.
 * Every key must be an EC P-256 public key. Throws naming the problem (never key material).
 */
export function loadGithubKeys(path: string): Map<string, KeyObject> {
  const parsed = JSON.parse(readFileSync(path, "utf8")) as { public_keys?: unknown };
  if (!Array.isArray(parsed.public_keys) || parsed.public_keys.length === 0) throw new Error(`${path}: expected {"public_keys": [{"key_identifier", "key"}, …]}`);
  const keys = new Map<string, KeyObject>();
  parsed.public_keys.forEach((entry: { key_identifier?: unknown; key?: unknown }, i: number) => {
    if (typeof entry.key_identifier !== "string" || entry.key_identifier === "" || typeof entry.key !== "string") throw new Error(`${path}: public_keys[${i}] needs key_identifier and key`);
    const key = createPublicKey(entry.key);
    if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") throw new Error(`${path}: public_keys[${i}] is not an EC P-256 public key`);
    keys.set(entry.key_identifier, key);
  });
  return keys;
}

/** `POST /secret-scanning/github`. */
export async function githubSecretScanningEndpoint(deps: TokenDeps, options: GithubSecretScanningOptions, req: HttpRequest, res: HttpResponse): Promise<void> {
  const route = `POST ${GITHUB_SECRET_SCANNING_PATH}`;
  const meta = requestMeta(req, route);
  try {
    if (!isJson(req)) return sendJson(req, res, 415, { error: "invalid_request", error_description: "send application/json" }, NO_STORE);
    const body = await readBody(req, options.maxBodyBytes);
    if (body === undefined) return refuseTooLarge(req, res, `the body must be at most ${options.maxBodyBytes} bytes`);

    const keyId = header(req, "github-public-key-identifier");
    const signature = header(req, "github-public-key-signature");
    const key = keyId === undefined ? undefined : options.keys.get(keyId);
    if (key === undefined || signature === undefined || !signatureMatches(key, body, signature)) {
      return refuseUnsigned(deps, req, res, meta, key === undefined ? "unknown or missing Github-Public-Key-Identifier" : "bad Github-Public-Key-Signature");
    }
    const reports = parseReports(body, options.maxTokens);
    if (typeof reports === "string") return sendJson(req, res, reports.startsWith("too many") ? 413 : 400, { error: "invalid_request", error_description: reports }, NO_STORE);
    const verdicts = await revokeLeakedTokens(deps, "github", reports, meta);
    sendJson(req, res, 200, verdicts.map(feedback), NO_STORE);
  } catch (error) {
    answerFailure(deps, req, res, route, error);
  }
}

const NO_STORE = { "cache-control": "no-store" } as const;

/** GitHub's feedback format. */
function feedback(v: LeakVerdict): { token_hash: string; token_type: string; label: string } {
  return { token_hash: v.tokenHash, token_type: v.tokenType, label: v.label };
}

/** ECDSA P-256 over SHA-256, DER-encoded signature (Node's default for EC keys), base64. */
function signatureMatches(key: KeyObject, body: Buffer, signature: string): boolean {
  if (signature.length > 256 || !/^[A-Za-z0-9+/]+={0,2}$/.test(signature.trim())) return false;
  try {
    return verify("sha256", body, key, Buffer.from(signature.trim(), "base64"));
  } catch {
    // A malformed DER structure is a bad signature, not a server error.
    return false;
  }
}

/**
 * The report: a JSON array of `{token, type, url, source}`. Returns the
 * reports, or a caller-safe reason for refusing the whole request (nothing
 * of the body is repeated).
 */
export function parseReports(body: Buffer, maxTokens: number, urlKey: "url" | "location" = "url"): LeakReport[] | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch {
    return "the body is not JSON";
  }
  // GitLab may send one finding as an object.
  if (urlKey === "location" && parsed !== null && typeof parsed === "object" && !Array.isArray(parsed)) parsed = [parsed];
  if (!Array.isArray(parsed)) return "the body must be a JSON array of {token, type, url, source}";
  if (parsed.length > maxTokens) return `too many tokens in one report: at most ${maxTokens}`;
  const reports: LeakReport[] = [];
  for (let i = 0; i < parsed.length; i++) {
    const item = parsed[i] as { token?: unknown; type?: unknown; url?: unknown; location?: unknown } | null;
    if (item === null || typeof item !== "object") return `[${i}] must be an object`;
    if (typeof item.token !== "string" || item.token === "" || item.token.length > MAX_PRESENTED_TOKEN_LENGTH) return `[${i}].token must be a string of 1 to ${MAX_PRESENTED_TOKEN_LENGTH} characters`;
    const type = item.type === undefined ? "" : item.type;
    if (typeof type !== "string" || type.length > 128) return `[${i}].type must be a string of at most 128 characters`;
    const url = item[urlKey] ?? "";
    if (typeof url !== "string" || url.length > 4096) return `[${i}].${urlKey} must be a string of at most 4096 characters`;
    reports.push({ token: item.token, type, url });
  }
  return reports;
}

/** Whether the request says its body is JSON. */
export function isJson(req: HttpRequest): boolean {
  return (header(req, "content-type") ?? "").split(";", 1)[0]!.trim().toLowerCase() === "application/json";
}

/**
 * The raw body, at most `limit` bytes; undefined when larger. The signature
 * covers these exact bytes, so nothing is decoded before it is checked.
 */
export const readBody = readBodyWithin;

/** 413, closing an HTTP/1.1 connection whose body was not read to the end. */
export function refuseTooLarge(req: HttpRequest, res: HttpResponse, description: string): void {
  const headers: Record<string, string> = { ...NO_STORE };
  if (res instanceof http.ServerResponse) headers.connection = "close";
  sendJson(req, res, 413, { error: "invalid_request", error_description: description }, headers);
}

/**
 * 401 for an unauthenticated report, counted against the address's budget of
 * failed authentications (past it, 429), with a security event.
 */
export function refuseUnsigned(deps: TokenDeps, req: HttpRequest, res: HttpResponse, meta: ReturnType<typeof requestMeta>, why: string): void {
  const nowMs = deps.clock.now().getTime();
  const wait = deps.limits?.authenticationWait(meta, nowMs) ?? 0;
  if (wait > 0) deps.limits!.refuseAuthentication(meta, wait);
  deps.limits?.authenticationFailed(meta, nowMs);
  deps.events.record({
    type: "authentication_failed",
    severity: "warning",
    message: `secret-scanning report refused: ${why}; nothing revoked`,
    serviceEnvironment: deps.policy.environment,
    ...metaFields(meta),
  });
  sendJson(req, res, 401, { error: "unauthorized", error_description: "the report is not authenticated" }, NO_STORE);
}

/** The answer for a failure: 429 past a limit, 503 in an outage, else 500. */
export function answerFailure(deps: TokenDeps, req: HttpRequest, res: HttpResponse, route: string, error: unknown): void {
  if (res.headersSent || res.writableEnded) return;
  const e = httpError(error, deps.log, route);
  const retry = (error as { retryAfterMs?: unknown }).retryAfterMs;
  const headers = { ...NO_STORE, ...(e.status === 503 ? RETRY_AFTER : {}), ...(e.status === 429 && typeof retry === "number" ? { "retry-after": String(Math.max(1, Math.ceil(retry / 1000))) } : {}) };
  sendJson(req, res, e.status === 429 || e.status === 503 || e.status === 400 ? e.status : 500, { error: e.error, error_description: e.description }, headers);
}

/**
 * The leak endpoints' options from configuration; each absent when not
 * configured. @throws ConfigError naming GITHUB_SCANNING_KEYS_FILE
 * when its file is unreadable or holds no usable key.
 */
export function leakEndpointOptions(
  config: Pick<Config, "githubScanningKeysFile" | "leakReportMaxTokens" | "leakReportMaxBytes" | "gitlabRevocationToken">,
  log: Logger,
): { github?: GithubSecretScanningOptions; gitlab?: GitlabRevocationOptions } {
  const limits = { maxBodyBytes: config.leakReportMaxBytes, maxTokens: config.leakReportMaxTokens };
  const out: { github?: GithubSecretScanningOptions; gitlab?: GitlabRevocationOptions } = {};
  if (config.githubScanningKeysFile !== undefined) {
    let keys: Map<string, KeyObject>;
    try {
      keys = loadGithubKeys(config.githubScanningKeysFile);
    } catch (error) {
      // The message names the file and the entry, never key material.
      const why = error instanceof SyntaxError ? "not JSON" : error instanceof Error && error.message.startsWith(config.githubScanningKeysFile) ? error.message.slice(config.githubScanningKeysFile.length + 2) : (error as Error).message;
      throw new ConfigError([`GITHUB_SCANNING_KEYS_FILE=${config.githubScanningKeysFile}: ${why}`]);
    }
    out.github = { keys, ...limits };
    log.info({ key_ids: keys.size }, `secret scanning: ${GITHUB_SECRET_SCANNING_PATH} served`);
  }
  if (config.gitlabRevocationToken !== undefined) {
    out.gitlab = { token: config.gitlabRevocationToken, ...limits };
    log.info({}, "secret scanning: GitLab token revocation API served at /v1/revocable_token_types and /v1/revoke");
  }
  return out;
}
