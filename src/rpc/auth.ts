import type { HandlerContext } from "@connectrpc/connect";
import type { RequestMeta } from "../domain/model.js";
import { peerKey, requestHeaderValue } from "../server/context.js";
import { contextRequestId } from "../server/request-id.js";

/**
 * The request facts security events carry, read the same way on both
 * transports. The Authorization header is deliberately not part of it: it is
 * read once, by `callerCredential`, and never logged.
 */
export function requestMeta(ctx: HandlerContext): RequestMeta {
  return new LazyRequestMeta(ctx);
}

/**
 * Request facts read only when a security event needs them: on the hot path
 * (an active token, an authorised caller) nobody does, so the peer address
 * and user agent are never parsed.
 */
class LazyRequestMeta implements RequestMeta {
  constructor(private readonly ctx: HandlerContext) {}

  get method(): string {
    return `/${this.ctx.service.typeName}/${this.ctx.method.name}`;
  }

  get peer(): string | undefined {
    return this.ctx.values.get(peerKey);
  }

  get userAgent(): string | undefined {
    return requestHeaderValue(this.ctx, "user-agent")?.slice(0, 256);
  }

  get requestId(): string | undefined {
    return contextRequestId(this.ctx);
  }
}

/** The raw `Authorization` header (RFC 6750 §2.1), if any. */
export function callerCredential(ctx: HandlerContext): string | undefined {
  return requestHeaderValue(ctx, "authorization");
}
