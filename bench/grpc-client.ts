/**
 * A real @grpc/grpc-js client of TokenService, with the service's own
 * (de)serializers: used to verify answers before and after load, to issue
 * and revoke, and for the revocation timing (not for throughput: one
 * grpc-js client process saturates near 2,000 calls/s).
 */
import * as grpc from "@grpc/grpc-js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  TokenService,
  type IntrospectTokenResponse,
  type IssueTokenRequestSchema,
  type IssueTokenResponse,
  type RevokeTokenRequestSchema,
  type RevokeTokenResponse,
} from "../gen/tokens/v1/token_service_pb.js";
import { Authorization, type CheckRequestSchema, type CheckResponse } from "../gen/envoy/service/auth/v3/external_auth_pb.js";
import { methodDefinition } from "../src/server/grpc-adapter.js";

/** Promise-returning unary calls on one channel, authenticated as `callerToken`. */
export interface TokenClient {
  introspect(token: string): Promise<IntrospectTokenResponse>;
  issue(request: MessageInitShape<typeof IssueTokenRequestSchema>): Promise<IssueTokenResponse>;
  revoke(request: MessageInitShape<typeof RevokeTokenRequestSchema>): Promise<RevokeTokenResponse>;
  close(): void;
}

/** Opens a client to `127.0.0.1:<port>`. */
export function tokenClient(address: string, callerToken: string): TokenClient {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of TokenService.methods) definition[method.localName] = methodDefinition(method);
  const Client = grpc.makeGenericClientConstructor(definition, TokenService.typeName);
  const client = new Client(address, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${callerToken}`);
  const unary = <Res>(method: string, request: unknown): Promise<Res> =>
    new Promise((done, fail) => {
      // The generic client's methods are added at run time, by name.
      const fn = (client as unknown as Record<string, (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: grpc.requestCallback<Res>) => void>)[method]!;
      fn.call(client, request, metadata, { deadline: Date.now() + 10_000 }, (error, response) => (error ? fail(error) : done(response!)));
    });
  return {
    introspect: (token) => unary("introspectToken", { token }),
    issue: (request) => unary("issueToken", request),
    revoke: (request) => unary("revokeToken", request),
    close: () => client.close(),
  };
}

/** Envoy's side of ext_authz: one Check, sending the shared secret as Envoy's `initial_metadata` would. */
export async function checkOnce(address: string, secret: string, request: MessageInitShape<typeof CheckRequestSchema>): Promise<CheckResponse> {
  const definition = { check: methodDefinition(Authorization.method.check) };
  const Client = grpc.makeGenericClientConstructor(definition, Authorization.typeName);
  const client = new Client(address, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set("x-ext-authz-secret", secret);
  try {
    return await new Promise<CheckResponse>((done, fail) => {
      const fn = (client as unknown as Record<string, (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: grpc.requestCallback<CheckResponse>) => void>)["check"]!;
      fn.call(client, request, metadata, { deadline: Date.now() + 10_000 }, (error, response) => (error ? fail(error) : done(response!)));
    });
  } finally {
    client.close();
  }
}
