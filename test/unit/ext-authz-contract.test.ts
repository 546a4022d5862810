import type { DescMessage } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { HeaderMapSchema, HeaderValueOptionSchema, HeaderValueOption_HeaderAppendAction, HeaderValueSchema } from "../../gen/envoy/config/core/v3/base_pb.js";
import { AttributeContextSchema, AttributeContext_HttpRequestSchema, AttributeContext_RequestSchema } from "../../gen/envoy/service/auth/v3/attribute_context_pb.js";
import { Authorization, CheckRequestSchema, CheckResponseSchema, DeniedHttpResponseSchema, OkHttpResponseSchema } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { HttpStatusSchema, StatusCode } from "../../gen/envoy/type/v3/http_status_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";

/**
 * Our subset of Envoy's ext_authz messages is wire compatible only if every
 * name and number is Envoy's. Pinned here against Envoy's published
 * contract (envoy/service/auth/v3/external_auth.proto and
 * attribute_context.proto, envoy/config/core/v3/base.proto,
 * envoy/type/v3/http_status.proto, google/rpc/status.proto), so a renumbering
 * fails a test rather than an Envoy in production.
 */
const fields = (desc: DescMessage) => Object.fromEntries(desc.fields.map((f) => [f.name, f.number]));

describe("the ext_authz contract subset", () => {
  it("keeps Envoy's package, service, method and message names", () => {
    expect(Authorization.typeName).toBe("envoy.service.auth.v3.Authorization");
    expect(Authorization.methods.map((m) => [m.name, m.input.typeName, m.output.typeName, m.methodKind])).toEqual([
      ["Check", "envoy.service.auth.v3.CheckRequest", "envoy.service.auth.v3.CheckResponse", "unary"],
    ]);
    expect(AttributeContext_HttpRequestSchema.typeName).toBe("envoy.service.auth.v3.AttributeContext.HttpRequest");
    expect(HeaderValueOptionSchema.typeName).toBe("envoy.config.core.v3.HeaderValueOption");
    expect(HttpStatusSchema.typeName).toBe("envoy.type.v3.HttpStatus");
    expect(StatusSchema.typeName).toBe("google.rpc.Status");
  });

  it("keeps Envoy's field numbers", () => {
    expect(fields(CheckRequestSchema)).toEqual({ attributes: 1 });
    expect(fields(CheckResponseSchema)).toEqual({ status: 1, denied_response: 2, ok_response: 3, dynamic_metadata: 4 });
    expect(fields(DeniedHttpResponseSchema)).toEqual({ status: 1, headers: 2, body: 3 });
    expect(fields(OkHttpResponseSchema)).toEqual({ headers: 2, headers_to_remove: 5, response_headers_to_add: 6 });
    expect(fields(AttributeContextSchema)).toEqual({ request: 4, context_extensions: 10 });
    expect(fields(AttributeContext_RequestSchema)).toEqual({ http: 2 });
    expect(fields(AttributeContext_HttpRequestSchema)).toEqual({ id: 1, method: 2, headers: 3, path: 4, host: 5, header_map: 13 });
    expect(fields(HeaderValueSchema)).toEqual({ key: 1, value: 2, raw_value: 3 });
    expect(fields(HeaderValueOptionSchema)).toEqual({ header: 1, append_action: 3 });
    expect(fields(HeaderMapSchema)).toEqual({ headers: 1 });
    expect(fields(HttpStatusSchema)).toEqual({ code: 1 });
    expect(fields(StatusSchema)).toEqual({ code: 1, message: 2 });
  });

  it("keeps Envoy's enum numbers and the oneof", () => {
    expect(HeaderValueOption_HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD).toBe(2);
    expect([StatusCode.OK, StatusCode.Unauthorized, StatusCode.Forbidden, StatusCode.InternalServerError, StatusCode.ServiceUnavailable]).toEqual([200, 401, 403, 500, 503]);
    expect(CheckResponseSchema.oneofs.map((o) => [o.name, o.fields.map((f) => f.name)])).toEqual([["http_response", ["denied_response", "ok_response"]]]);
    expect(CheckResponseSchema.field.dynamicMetadata.message?.typeName).toBe("google.protobuf.Struct");
  });
});
