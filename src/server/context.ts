import type { DescService } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { createContextKey } from "@connectrpc/connect";

/**
 * The caller's network address (an IP address, without the port), set by both
 * transports so the one service implementation can read it with
 * `ctx.values.get(peerKey)` whichever server took the call. `undefined` when
 * the transport could not tell (e.g. the socket had already closed).
 *
 * The port is left out on purpose: it changes with every connection, so it is
 * noise in security events and rate-limit keys.
 */
export const peerKey = createContextKey<string | undefined>(undefined, {
  description: "peer address",
});

/**
 * A service descriptor and its connect-style implementation: the unit both
 * servers mount. `createReflectionServices` and `createHealthService` return
 * these, `startGrpcServer` and `routeServices` take lists of them.
 *
 * With a concrete `S` (e.g. `ServiceRegistration<typeof TokenService>`) the
 * compiler checks every method of `impl`. The default, erased form exists
 * because `ServiceImpl<DescService>` collapses to `never` methods, so a list
 * mixing services could not be typed otherwise; write
 * `{ service, impl } satisfies ServiceRegistration<typeof X>` to keep the check.
 */
export interface ServiceRegistration<S extends DescService = DescService> {
  /** The generated service descriptor, e.g. `TokenService`. */
  readonly service: S;
  /** The implementation; a missing method answers UNIMPLEMENTED. */
  readonly impl: DescService extends S ? object : Partial<ServiceImpl<S>>;
}

/**
 * Reads one request header. A context that can answer without building a
 * full `Headers` (the grpc-js one) does so; any other reads `requestHeader`.
 */
export function requestHeaderValue(ctx: HandlerContext, name: string): string | undefined {
  const fast = (ctx as Partial<{ header(name: string): string | undefined }>).header;
  return typeof fast === "function" ? fast.call(ctx, name) : (ctx.requestHeader.get(name) ?? undefined);
}
