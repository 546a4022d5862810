import * as http from "node:http";
import type { TokenErrorCode } from "../../domain/errors.js";
import { TokenError } from "../../domain/errors.js";
import type { RequestMeta } from "../../domain/model.js";
import type { Logger } from "../../domain/ports.js";
import type { HttpRequest, HttpResponse } from "../http-server.js";
import { httpRequestId } from "../request-id.js";

/**
 * Request and response plumbing for the plain HTTP endpoints: one header, the
 * form body, JSON answers, the error table. Nothing here knows a use case.
 */

/** Largest form body accepted by the OAuth endpoints; larger ones get 413. */
export const MAX_FORM_BYTES = 16 * 1024;

/** Response headers, as `writeHead` takes them. */
export type Headers = Record<string, string | number | readonly string[]>;

/** One request header; the first value when a client repeated it. */
export function header(req: HttpRequest, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * The request facts security events carry, read only when an event needs
 * them. Never the Authorization header or any other credential.
 */
export function requestMeta(req: HttpRequest, method: string): RequestMeta {
  return new HttpRequestMeta(req, method);
}

/**
 * {@link requestMeta}'s object: a class rather than a literal with getters,
 * which would make three closures per request on the OAuth endpoints' hot path.
 */
class HttpRequestMeta implements RequestMeta {
  constructor(
    private readonly req: HttpRequest,
    readonly method: string,
  ) {}

  get peer(): string | undefined {
    return this.req.socket?.remoteAddress;
  }

  get userAgent(): string | undefined {
    return header(this.req, "user-agent")?.slice(0, 256);
  }

  get requestId(): string | undefined {
    return httpRequestId(this.req);
  }
}

/** Writes a complete answer; no body on HEAD (RFC 9110 §9.3.2). */
export function send(req: HttpRequest, res: HttpResponse, status: number, body: string | Buffer, headers: Headers = {}): void {
  const length = typeof body === "string" ? Buffer.byteLength(body) : body.length;
  res.writeHead(status, { "content-length": length, ...headers });
  if (req.method === "HEAD") res.end();
  else res.end(body);
}

/** Writes a JSON answer. */
export function sendJson(req: HttpRequest, res: HttpResponse, status: number, body: unknown, headers: Headers = {}): void {
  send(req, res, status, typeof body === "string" ? body : JSON.stringify(body), { "content-type": "application/json", ...headers });
}

/** 405 with the methods the path allows (RFC 9110 §15.5.6: `Allow` is required). */
export function methodNotAllowed(req: HttpRequest, res: HttpResponse, allow: string): void {
  sendJson(req, res, 405, { error: "method_not_allowed", error_description: `use ${allow}` }, { allow });
}

/** A parsed form body, or the answer that refused it. */
export type FormResult =
  | { readonly ok: true; readonly fields: ReadonlyMap<string, string>; readonly repeated: ReadonlySet<string> }
  | { readonly ok: false; readonly status: 413 | 415; readonly description: string };

/**
 * Reads an `application/x-www-form-urlencoded` body (RFC 7662 §2.1, RFC 7009
 * §2.1), at most `limit` bytes. A declared length over the limit is refused
 * before reading; a body that grows past it is refused as soon as it does.
 */
export async function readForm(req: HttpRequest, limit = MAX_FORM_BYTES): Promise<FormResult> {
  const type = (header(req, "content-type") ?? "").split(";", 1)[0]!.trim().toLowerCase();
  if (type !== "application/x-www-form-urlencoded") {
    return { ok: false, status: 415, description: "send the parameters as application/x-www-form-urlencoded" };
  }
  const body = await readBodyWithin(req, limit);
  if (body === undefined) return { ok: false, status: 413, description: `the request body must be at most ${limit} bytes` };
  return { ok: true, ...parseForm(body.toString("utf8")) };
}

/**
 * An application/x-www-form-urlencoded body's fields, as `URLSearchParams`
 * reads them: each name's first value, and the names that came more than once.
 */
export function parseForm(text: string): { fields: Map<string, string>; repeated: Set<string> } {
  const fields = new Map<string, string>();
  const repeated = new Set<string>();
  if (needsDecoding(text)) {
    for (const [name, value] of new URLSearchParams(text)) addField(fields, repeated, name, value);
  } else {
    splitPlainForm(text, fields, repeated);
  }
  return { fields, repeated };
}

function addField(fields: Map<string, string>, repeated: Set<string>, name: string, value: string): void {
  if (fields.has(name)) repeated.add(name);
  else fields.set(name, value);
}

/** Whether a form body holds `%` or `+`, the only characters the urlencoded parser decodes. */
function needsDecoding(text: string): boolean {
  return text.includes("%") || text.includes("+");
}

/**
 * The WHATWG application/x-www-form-urlencoded parser (what `URLSearchParams`
 * runs, after dropping one leading `?` as its constructor does) for a body
 * with nothing to decode: split on `&`, skip empty sequences, split each on
 * its first `=` (a name alone has an empty value).
 * Without `%` and `+` its decoding step is the identity, so this gives the
 * same fields without the `URLSearchParams` object and its iterator: the
 * common RFC 7662 request, `token=<opaque token>`.
 */
function splitPlainForm(text: string, fields: Map<string, string>, repeated: Set<string>): void {
  let start = text.startsWith("?") ? 1 : 0;
  while (start <= text.length) {
    let end = text.indexOf("&", start);
    if (end < 0) end = text.length;
    if (end > start) {
      const eq = text.indexOf("=", start);
      if (eq < 0 || eq > end) addField(fields, repeated, text.slice(start, end), "");
      else addField(fields, repeated, text.slice(start, eq), text.slice(eq + 1, end));
    }
    start = end + 1;
  }
}

/**
 * Answers a refused form. A body refused for its size is not read further, so
 * an HTTP/1.1 connection is closed after the answer rather than reused.
 */
export function refuseForm(req: HttpRequest, res: HttpResponse, refusal: Extract<FormResult, { ok: false }>): void {
  const headers: Headers = { "cache-control": "no-store" };
  if (refusal.status === 413 && res instanceof http.ServerResponse) headers.connection = "close";
  sendJson(req, res, refusal.status, { error: "invalid_request", error_description: refusal.description }, headers);
}

/**
 * The single table from domain error codes to HTTP statuses and OAuth error
 * codes (RFC 6749 §5.2, RFC 6750 §3.1, RFC 7009 §2.2.1) for the plain HTTP
 * endpoints; `rpc/errors.ts` is its counterpart for gRPC and Connect.
 */
export const HTTP_ERROR: Readonly<Record<TokenErrorCode, { readonly status: number; readonly error: string }>> = Object.freeze({
  invalid_argument: { status: 400, error: "invalid_request" },
  unauthenticated: { status: 401, error: "invalid_client" },
  // RFC 6750 §3.1: a valid credential without the privilege is 403.
  permission_denied: { status: 403, error: "insufficient_scope" },
  not_found: { status: 404, error: "invalid_request" },
  resource_exhausted: { status: 429, error: "temporarily_unavailable" },
  // Raised only by revocation of a legacy JWT without `jti`: RFC 7009 §2.2.1.
  failed_precondition: { status: 400, error: "unsupported_token_type" },
  unavailable: { status: 503, error: "temporarily_unavailable" },
  deadline_exceeded: { status: 503, error: "temporarily_unavailable" },
  internal: { status: 500, error: "server_error" },
});

/** An error as the HTTP endpoints answer it. */
export interface HttpError {
  readonly status: number;
  readonly code: TokenErrorCode;
  readonly error: string;
  /** Caller-safe: a `TokenError` message, or `internal error`. */
  readonly description: string;
}

/**
 * Turns anything a handler threw into an answer a caller may see, logging
 * the detail of outages and unexpected failures (never a credential: domain
 * messages hold none, and the request is not logged).
 */
export function httpError(error: unknown, log: Logger, route: string): HttpError {
  if (error instanceof TokenError) {
    const mapped = HTTP_ERROR[error.code];
    if (mapped.status >= 500) log.error({ err: error.cause ?? error, method: route, code: error.code }, error.message);
    return { ...mapped, code: error.code, description: error.message };
  }
  log.error({ err: error, method: route }, "unexpected failure in handler");
  return { status: 500, code: "internal", error: "server_error", description: "internal error" };
}

/** `Retry-After` for an outage (RFC 9110 §10.2.3): the store is usually back within seconds. */
export const RETRY_AFTER = { "retry-after": "1" } as const;

/**
 * Reads a request body of at most `limit` bytes: undefined when it is larger
 * (a declared length over the limit is refused before reading, and the rest
 * of a longer body is discarded so the client reads the refusal). A client
 * that leaves mid-body is an `invalid_argument`, not a server failure.
 */
export function readBodyWithin(req: HttpRequest, limit: number): Promise<Buffer | undefined> {
  const declared = Number(header(req, "content-length") ?? "0");
  if (declared > limit) return Promise.resolve(undefined);
  // Listeners rather than an async iterator: leaving an iterator early would
  // destroy the request, and with it the connection the 413 must go out on.
  return new Promise<Buffer | undefined>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) return void chunks.push(chunk);
      done();
      // Discard the rest, so the client reads the 413 rather than a reset.
      req.resume();
      resolve(undefined);
    };
    const onEnd = () => {
      done();
      resolve(Buffer.concat(chunks));
    };
    const onError = (error: Error) => {
      done();
      reject(error);
    };
    // A client that leaves mid-body is its own doing: a 400 nobody reads, not a logged failure.
    const onClose = () => onError(new TokenError("invalid_argument", "the request body was incomplete"));
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("close", onClose);
  });
}
