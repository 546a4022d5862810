import type { HandlerContext } from "@connectrpc/connect";
import type { RequestMeta } from "../domain/model.js";
import { peerKey } from "../server/context.js";

/**
 * The request facts security events carry, read the same way on both
 * transports. The Authorization header is deliberately not part of it: it is
 * read once, by `callerCredential`, and never logged.
 */
export function requestMeta(ctx: HandlerContext): RequestMeta {
  const peer = ctx.values.get(peerKey);
  const userAgent = ctx.requestHeader.get("user-agent") ?? undefined;
  return {
    method: `/${ctx.service.typeName}/${ctx.method.name}`,
    ...(peer ? { peer } : {}),
    ...(userAgent ? { userAgent: userAgent.slice(0, 256) } : {}),
  };
}

/** The raw `Authorization` header (RFC 6750 §2.1), if any. */
export function callerCredential(ctx: HandlerContext): string | undefined {
  return ctx.requestHeader.get("authorization") ?? undefined;
}
