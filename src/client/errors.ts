import { status, type Metadata, type ServiceError } from "@grpc/grpc-js";

/**
 * The service could not answer an introspection (unreachable, deadline
 * passed, refused the caller, …). `code` is the gRPC status code. A gateway
 * treats this as "cannot tell" (503), never as "inactive".
 */
export class IntrospectionError extends Error {
  override readonly name: string = "IntrospectionError";
  constructor(
    message: string,
    /** The gRPC status code (`@grpc/grpc-js` `status`). */
    readonly code: status,
    /** The grpc-js error, when there was one. */
    override readonly cause?: ServiceError,
  ) {
    super(message);
  }
}

/**
 * The service refused with `RESOURCE_EXHAUSTED` and asked the client to come
 * back later (`grpc-retry-pushback-ms`, gRFC A6, or `retry-after`, RFC 9110
 * §10.2.3). The client sends nothing more to the service until
 * `retryAfterMs` has passed; calls it cannot answer from its cache meanwhile
 * fail with this error at once (`local` is then true). A gateway passes it on
 * as 503 with `Retry-After` (or 429 if it prefers to blame the caller).
 */
export class ServiceBusyError extends IntrospectionError {
  override readonly name: string = "ServiceBusyError";
  constructor(
    /** How long to wait before asking again, in milliseconds. */
    readonly retryAfterMs: number,
    /** True when the call was refused by the client itself, without reaching the service. */
    readonly local: boolean,
    cause?: ServiceError,
  ) {
    super(`the token service is busy (RESOURCE_EXHAUSTED); retry after ${Math.ceil(retryAfterMs)} ms${local ? " (not sent: backing off)" : ""}`, status.RESOURCE_EXHAUSTED, cause);
  }
}

/**
 * The pause a refusal asks for, in milliseconds: `grpc-retry-pushback-ms`
 * (a non-negative integer of milliseconds, gRFC A6) when present, else
 * `retry-after` (delay-seconds or an HTTP-date, RFC 9110 §10.2.3), else
 * undefined. Values that are neither are ignored.
 */
export function retryDelayMs(metadata: Metadata | undefined, nowMs: number = Date.now()): number | undefined {
  if (metadata === undefined) return undefined;
  const pushback = String(metadata.get("grpc-retry-pushback-ms")[0] ?? "").trim();
  if (/^\d{1,10}$/.test(pushback)) return Number(pushback);
  const retryAfter = String(metadata.get("retry-after")[0] ?? "").trim();
  if (/^\d{1,10}$/.test(retryAfter)) return Number(retryAfter) * 1000;
  if (retryAfter !== "") {
    const at = Date.parse(retryAfter);
    if (Number.isFinite(at)) return Math.max(0, at - nowMs);
  }
  return undefined;
}
