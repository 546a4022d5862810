import { toBinary } from "@bufbuild/protobuf";
import type { DescEnum, DescExtension, DescFile, DescMessage } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import type { ServiceImpl } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import type { ServiceRegistration } from "./context.js";

/**
 * gRPC server reflection (v1 and the older v1alpha that many tools still try
 * first), served from protobuf-es file descriptors so both servers can mount
 * it. Tools such as `buf curl`, grpcurl and Postman use it to discover the API.
 *
 * `files` are the files whose services are listed; their transitive
 * dependencies (google/protobuf/timestamp.proto and the like) are served too,
 * under their real names, so a client can rebuild every type. The reflection
 * files themselves are always included.
 *
 * Unknown files, symbols and extensions are answered with an `error_response`
 * carrying NOT_FOUND on the open stream, as the protocol asks, not by ending
 * the stream.
 */
export function createReflectionServices(
  files: readonly DescFile[],
): [ServiceRegistration<typeof v1.ServerReflection>, ServiceRegistration<typeof v1alpha.ServerReflection>] {
  const index = new ReflectionIndex([
    ...files,
    v1.file_grpc_reflection_v1_reflection,
    v1alpha.file_grpc_reflection_v1alpha_reflection,
  ]);
  const v1Impl: ServiceImpl<typeof v1.ServerReflection> = {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        yield { validHost: request.host, originalRequest: request, messageResponse: index.answer(request.messageRequest) };
      }
    },
  };
  const v1alphaImpl: ServiceImpl<typeof v1alpha.ServerReflection> = {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        yield { validHost: request.host, originalRequest: request, messageResponse: index.answer(request.messageRequest) };
      }
    },
  };
  return [
    { service: v1.ServerReflection, impl: v1Impl },
    { service: v1alpha.ServerReflection, impl: v1alphaImpl },
  ];
}

/** A reflection request, in the shape v1 and v1alpha share. */
type Question =
  | { case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices"; value: string }
  | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
  | { case: undefined; value?: undefined };

/** A reflection response, in the shape v1 and v1alpha share. */
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

/** Everything reflection can be asked about, indexed once at start-up. */
class ReflectionIndex {
  private readonly services: { name: string }[] = [];
  /** Every file by its real name ("google/protobuf/timestamp.proto"). */
  private readonly files = new Map<string, DescFile>();
  /** Fully-qualified symbol → the file that declares it. */
  private readonly symbols = new Map<string, DescFile>();
  /** Message type → its known extensions by field number. */
  private readonly extensions = new Map<string, Map<number, DescFile>>();
  /** Serialized file plus its transitive dependencies, built on first use. */
  private readonly closures = new Map<DescFile, Uint8Array[]>();

  constructor(roots: readonly DescFile[]) {
    for (const file of roots) {
      if (this.files.has(file.proto.name)) continue;
      for (const service of file.services) this.services.push({ name: service.typeName });
      this.addFile(file);
    }
  }

  answer(question: Question): Answer {
    switch (question.case) {
      case "listServices":
        return { case: "listServicesResponse", value: { service: this.services } };
      case "fileByFilename":
        return this.fileAnswer(this.files.get(question.value), `file "${question.value}"`);
      case "fileContainingSymbol":
        return this.fileAnswer(this.symbols.get(question.value), `symbol "${question.value}"`);
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = question.value;
        const file = this.extensions.get(containingType)?.get(extensionNumber);
        return this.fileAnswer(file, `extension ${extensionNumber} of "${containingType}"`);
      }
      case "allExtensionNumbersOfType": {
        const numbers = this.extensions.get(question.value);
        if (numbers === undefined) return notFound(`message type "${question.value}"`);
        return {
          case: "allExtensionNumbersResponse",
          value: { baseTypeName: question.value, extensionNumber: [...numbers.keys()] },
        };
      }
      case undefined:
        return {
          case: "errorResponse",
          value: { errorCode: Code.InvalidArgument, errorMessage: "the request names no question" },
        };
    }
  }

  private fileAnswer(file: DescFile | undefined, what: string): Answer {
    if (file === undefined) return notFound(what);
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto: this.closure(file) } };
  }

  /** The file first, then every file it depends on, each once. */
  private closure(file: DescFile): Uint8Array[] {
    let bytes = this.closures.get(file);
    if (bytes === undefined) {
      const seen = new Set<DescFile>();
      const visit = (f: DescFile) => {
        if (seen.has(f)) return;
        seen.add(f);
        f.dependencies.forEach(visit);
      };
      visit(file);
      bytes = [...seen].map((f) => toBinary(FileDescriptorProtoSchema, f.proto));
      this.closures.set(file, bytes);
    }
    return bytes;
  }

  private addFile(file: DescFile): void {
    if (this.files.has(file.proto.name)) return;
    this.files.set(file.proto.name, file);
    for (const dependency of file.dependencies) this.addFile(dependency);
    const pkg = file.proto.package;
    for (const service of file.services) {
      this.symbols.set(service.typeName, file);
      for (const method of service.methods) this.symbols.set(`${service.typeName}.${method.name}`, file);
    }
    for (const message of file.messages) this.addMessage(file, message);
    for (const e of file.enums) this.addEnum(file, e, pkg);
    for (const extension of file.extensions) this.addExtension(file, extension);
  }

  private addMessage(file: DescFile, message: DescMessage): void {
    this.symbols.set(message.typeName, file);
    // Known message types answer all_extension_numbers_of_type, even with none.
    if (!this.extensions.has(message.typeName)) this.extensions.set(message.typeName, new Map());
    // Fields and oneofs resolve to their message's file, as in protoc's pool.
    for (const member of message.members) this.symbols.set(`${message.typeName}.${member.name}`, file);
    // protobuf-es leaves map entry types (TokenInfo.MetadataEntry) out of
    // nestedMessages, but they are real nested types to protoc and its tools.
    for (const nested of message.proto.nestedType) this.symbols.set(`${message.typeName}.${nested.name}`, file);
    for (const nested of message.nestedMessages) this.addMessage(file, nested);
    for (const e of message.nestedEnums) this.addEnum(file, e, message.typeName);
    for (const extension of message.nestedExtensions) this.addExtension(file, extension);
  }

  /** Enum values are scoped beside their enum, not inside it (protobuf's C++ scoping). */
  private addEnum(file: DescFile, e: DescEnum, scope: string): void {
    this.symbols.set(e.typeName, file);
    for (const value of e.values) this.symbols.set(scope === "" ? value.name : `${scope}.${value.name}`, file);
  }

  private addExtension(file: DescFile, extension: DescExtension): void {
    this.symbols.set(extension.typeName, file);
    let numbers = this.extensions.get(extension.extendee.typeName);
    if (numbers === undefined) this.extensions.set(extension.extendee.typeName, (numbers = new Map()));
    numbers.set(extension.number, file);
  }
}

function notFound(what: string): Answer {
  return { case: "errorResponse", value: { errorCode: Code.NotFound, errorMessage: `${what} not found` } };
}
