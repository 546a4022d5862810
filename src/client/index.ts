/**
 * The gateway client of the token service: `introspect(token)` over gRPC
 * with a local cache that the service's revocation stream keeps honest.
 *
 * This directory stands alone: it depends on the generated code (`gen/`),
 * `@grpc/grpc-js` and `@bufbuild/protobuf` only, never on the service's own
 * code (`test/unit/client-imports.test.ts` checks it), so it can be
 * published as its own package. See the README's "Gateway client" section.
 *
 * @example
 * ```ts
 * import { IntrospectionClient } from "./src/client/index.js";
 * const tokens = new IntrospectionClient({ address: "tokens:50051", callerToken: process.env.GATEWAY_TOKEN! });
 * await tokens.ready();
 * const answer = await tokens.introspect(bearer);
 * ```
 *
 * @packageDocumentation
 */
export { IntrospectionClient, type IntrospectionClientOptions } from "./introspection-client.js";
export { IntrospectionError, ServiceBusyError, retryDelayMs } from "./errors.js";
export { AnswerCache, type AnswerCacheOptions } from "./answer-cache.js";
export { grpcMethod, grpcService } from "./grpc-methods.js";
/** The answer type and its enums, re-exported so a gateway needs no second import path. */
export { InactiveReason, TokenKind, type IntrospectTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
