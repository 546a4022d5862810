import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescMethod, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { MethodDefinition, ServiceDefinition } from "@grpc/grpc-js";

/**
 * The grpc-js method definition of one protobuf method: the path
 * `/${service.typeName}/${method.name}` and protobuf-es (de)serializers.
 * Requests are accepted as init shapes (plain objects), as a Connect client
 * accepts them. Both halves are filled in, so the same definition also
 * serves a stand-in server in tests.
 */
export function grpcMethod(method: DescMethod): MethodDefinition<object, object> {
  const input: DescMessage = method.input;
  const output: DescMessage = method.output;
  const kind = method.methodKind;
  const encode = (schema: DescMessage) => (value: object) =>
    Buffer.from(toBinary(schema, create(schema, value as MessageInitShape<DescMessage>) as MessageShape<DescMessage>));
  const decode = (schema: DescMessage) => (bytes: Buffer) => fromBinary(schema, bytes) as object;
  return {
    path: `/${method.parent.typeName}/${method.name}`,
    requestStream: kind === "client_streaming" || kind === "bidi_streaming",
    responseStream: kind === "server_streaming" || kind === "bidi_streaming",
    originalName: method.name,
    requestSerialize: encode(input),
    requestDeserialize: decode(input),
    responseSerialize: encode(output),
    responseDeserialize: decode(output),
  };
}

/** grpc-js definitions of every method of a service, keyed by their lowerCamel local names. */
export function grpcService(service: DescService): ServiceDefinition {
  const definition: Record<string, MethodDefinition<object, object>> = {};
  for (const method of service.methods) definition[method.localName] = grpcMethod(method);
  return definition;
}
