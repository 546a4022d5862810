import { randomBytes } from "node:crypto";
import { createContextKey, type HandlerContext } from "@connectrpc/connect";

/**
 * Request ids: each call on either port carries one, taken from the caller's
 * `x-request-id` header (gRPC metadata) when it is a sane value, otherwise
 * made here. Both servers echo it as the `x-request-id` response header, and
 * it appears in the call's debug log line and in any security event the call
 * raises, so one id follows a request from the gateway's log to ours.
 */

/** The header (gRPC metadata key) that carries the request id, both ways. */
export const REQUEST_ID_HEADER = "x-request-id";

/**
 * What a caller's id may look like: 1 to 128 of `[A-Za-z0-9._-]`. Anything
 * else (too long, spaces, quotes, control characters) is replaced rather than
 * logged, so a caller cannot forge log structure or stuff a secret into it.
 */
const ACCEPTED = /^[A-Za-z0-9._-]{1,128}$/;

/** The request id of a call, under this key in its context values (both transports). */
export const requestIdKey = createContextKey<string | undefined>(undefined, { description: "request id" });

/**
 * Generated ids: a random prefix per process (72 bits, so replicas and
 * restarts do not collide) and a counter, e.g. `q3Vx0bT9mK2a.1z4`. A counter
 * rather than `randomUUID()` per call: 0.07 µs instead of 0.5 µs on the hot
 * path, and an id is a correlation handle, not a secret.
 */
const PROCESS_PREFIX = randomBytes(9).toString("base64url");
let sequence = 0;

/** The caller's id when acceptable (a string of the accepted shape), else a new one. */
export function requestIdFrom(header: unknown): string {
  return typeof header === "string" && ACCEPTED.test(header) ? header : `${PROCESS_PREFIX}.${(++sequence).toString(36)}`;
}

/**
 * Where the HTTP port keeps a request's id (see {@link httpRequestId}): a
 * property of the request object rather than a WeakMap entry, which every
 * scavenge would have to visit while the request is young.
 */
const HTTP_REQUEST_ID: unique symbol = Symbol("request id");

/**
 * Gives an HTTP request its id (from its `x-request-id` header when
 * acceptable) and sets the `x-request-id` response header, which Node merges
 * into whatever headers the handler writes later. Returns the id.
 */
export function assignHttpRequestId(
  req: { readonly headers: Readonly<Record<string, unknown>> },
  res: { setHeader(name: string, value: string): unknown },
): string {
  const id = requestIdFrom(req.headers[REQUEST_ID_HEADER]);
  (req as { [HTTP_REQUEST_ID]?: string })[HTTP_REQUEST_ID] = id;
  res.setHeader(REQUEST_ID_HEADER, id);
  return id;
}

/**
 * The id the HTTP server gave a request, for plain HTTP handlers that log or
 * raise security events (RPC handlers read `requestIdKey` from their context).
 */
export function httpRequestId(req: object): string | undefined {
  return (req as { [HTTP_REQUEST_ID]?: string })[HTTP_REQUEST_ID];
}

/**
 * The request id of an RPC, whichever server took it: the grpc-js context
 * carries it as a field (no context values need building), the Connect one
 * under {@link requestIdKey}.
 */
export function contextRequestId(ctx: HandlerContext): string | undefined {
  const direct = (ctx as Partial<{ readonly requestId: string }>).requestId;
  return typeof direct === "string" ? direct : ctx.values.get(requestIdKey);
}
