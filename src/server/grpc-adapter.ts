import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescMethod, DescService, MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createServiceImplSpec, decodeBinaryHeader } from "@connectrpc/connect";
import type { MethodImplSpec } from "@connectrpc/connect";
import { Metadata, status as GrpcStatus } from "@grpc/grpc-js";
import type {
  MethodDefinition,
  ServerDuplexStream,
  ServerReadableStream,
  ServerUnaryCall,
  StatusObject,
  ServerWritableStream,
  ServiceDefinition,
  UntypedHandleCall,
  UntypedServiceImplementation,
  sendUnaryData,
} from "@grpc/grpc-js";
import { performance } from "node:perf_hooks";
import type { CallObserver, CallRecorder } from "./call-observer.js";
import type { ServiceRegistration } from "./context.js";
import { GrpcHandlerContext } from "./grpc-context.js";
import { REQUEST_ID_HEADER, requestIdFrom } from "./request-id.js";

/** Options for {@link grpcServiceDefinition}. */
export interface GrpcAdapterOptions {
  /**
   * Called with any error a handler throws that is not a `ConnectError`, and
   * the procedure (`/tokens.v1.TokenService/IntrospectToken`). The client only
   * sees INTERNAL "internal error"; this is where the detail gets logged.
   */
  readonly onInternalError: (err: unknown, procedure: string) => void;
  /**
   * Aborting this signal aborts every in-flight handler's `ctx.signal`, so
   * long-lived streams (health Watch, reflection) end when the server stops.
   */
  readonly shutdownSignal?: AbortSignal;
  /**
   * Told about every finished call (metrics, the debug request log). Without
   * it the handlers do not even read the clock.
   */
  readonly observer?: CallObserver;
  /** Traces every call (observability/tracing.ts); absent when tracing is off, and then nothing is wrapped. */
  readonly tracing?: GrpcCallTracing;
}

/**
 * What the gRPC server needs from tracing, per method at mount time: a
 * handler wrapper that starts the call's span (from the W3C `traceparent` in
 * its metadata) and runs the call in its context, and a recorder wrapper that
 * ends the span with the call's status code before passing it on.
 */
export interface GrpcCallTracing {
  /** The wrappers of one method; undefined when it is not traced (e.g. health probes). */
  method(procedure: string):
    | {
        handler(handler: UntypedHandleCall): UntypedHandleCall;
        recorder(next: CallRecorder | undefined): CallRecorder;
      }
    | undefined;
}

/**
 * What an implementation may carry to decode some requests itself on this
 * server: bytes → the request its method takes (a reader that extracts only
 * what the handler needs; e.g. ext_authz Check). A decoder that throws means
 * "not a valid request" (INVALID_ARGUMENT), like protobuf-es's `fromBinary`.
 */
export interface GrpcRequestDecoders {
  readonly grpcRequestDecoders?: { readonly [localName: string]: ((bytes: Buffer) => unknown) | undefined };
}

/** What {@link grpcServiceDefinition} returns: the two halves `grpc.Server.addService` wants. */
export interface GrpcServiceMount {
  /** Paths and (de)serializers, keyed by the method's local name. */
  readonly definition: ServiceDefinition;
  /** The handlers, keyed like `definition`. */
  readonly implementation: UntypedServiceImplementation;
}

/** What grpc-js accepts as a call's final status. */
type ServerStatusResponse = Partial<StatusObject>;

/** The part of a grpc-js server call that every kind of call shares (grpc-js does not export its name). */
type ServerSurfaceCall = Pick<
  ServerUnaryCall<unknown, unknown>,
  "metadata" | "cancelled" | "getPeer" | "getDeadline" | "getHost" | "getPath" | "sendMetadata"
> & { once(event: "cancelled", listener: () => void): unknown };

/**
 * What the deserializer returns for bytes that are not a valid message.
 * grpc-js turns a throwing deserializer into INTERNAL, but a malformed request
 * is the caller's fault, so the handler answers INVALID_ARGUMENT instead.
 */
const DECODE_FAILED: unique symbol = Symbol("request could not be decoded");

/** What the client sees for any failure that is not a ConnectError; the detail goes to the log only. */
const INTERNAL_ERROR = new ConnectError("internal error", Code.Internal);

/** Shared so the hot path allocates no reason object when a call completes. */
const CALL_COMPLETED = new ConnectError("the call has completed", Code.Canceled);

/**
 * Mounts a connect-style implementation (the same object `router.service()`
 * takes) on a `@grpc/grpc-js` server, so one implementation serves both
 * servers. Each call gets a real connect `HandlerContext`: request headers
 * from the metadata, a signal that aborts on cancellation, deadline or
 * completion, `timeoutMs`, protocol "grpc" and the caller's address under
 * `peerKey` (see {@link GrpcHandlerContext}). Response headers and trailers set on the context are sent
 * as initial and trailing metadata.
 *
 * A `ConnectError` becomes the gRPC status with the same number (Connect codes
 * are gRPC codes) and its raw message; anything else becomes INTERNAL
 * "internal error" and goes to `options.onInternalError`.
 *
 * Methods missing from `impl` answer UNIMPLEMENTED.
 *
 * Every call gets a request id (the caller's `x-request-id` metadata when it
 * is acceptable, else a new one; see server/request-id.ts), sent back as
 * `x-request-id` initial metadata and offered to the handler under
 * `requestIdKey`. With `options.observer`, each finished call is reported
 * with its status code and start time.
 */
export function grpcServiceDefinition<S extends DescService>(
  service: S,
  impl: ServiceRegistration<S>["impl"],
  options: GrpcAdapterOptions,
): GrpcServiceMount {
  // createServiceImplSpec binds methods to `impl` and fills the gaps with
  // UNIMPLEMENTED, exactly as the connect router does.
  const spec = createServiceImplSpec(service, impl as Parameters<typeof createServiceImplSpec>[1]);
  const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
  const implementation: UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const methodSpec = spec.methods[method.localName];
    if (methodSpec === undefined) continue;
    definition[method.localName] = methodDefinition(method, (impl as GrpcRequestDecoders).grpcRequestDecoders?.[method.localName]);
    implementation[method.localName] = handlerFor(service, methodSpec, options);
  }
  return { definition, implementation };
}

/**
 * Builds the grpc-js method definition for one protobuf method: the path
 * `/${service.typeName}/${method.name}` and protobuf-es (de)serializers
 * (requests through `decode` instead, when given: see {@link GrpcRequestDecoders}). The
 * server half decodes requests and encodes responses; the client half (used by
 * tests and tooling through `makeGenericClientConstructor`) does the reverse.
 */
export function methodDefinition(method: DescMethod, decode?: (bytes: Buffer) => unknown): MethodDefinition<unknown, unknown> {
  const input = method.input;
  const output = method.output;
  const kind = method.methodKind;
  return {
    path: procedureOf(method),
    requestStream: kind === "client_streaming" || kind === "bidi_streaming",
    responseStream: kind === "server_streaming" || kind === "bidi_streaming",
    originalName: method.name,
    // Server side.
    requestDeserialize: decode === undefined ? (bytes: Buffer) => decodeOrMark(input, bytes) : (bytes: Buffer) => decodeWithOrMark(decode, bytes),
    responseSerialize: (value: unknown) => encodeResponse(output, value as MessageShape<DescMessage>),
    // Client side: accept init shapes, like a connect client does.
    requestSerialize: (value: unknown) => asBuffer(toBinary(input, create(input, value as MessageShape<DescMessage>))),
    responseDeserialize: (bytes: Buffer) => fromBinary(output, bytes),
  };
}

/**
 * Encoded bytes of frozen responses. A handler that re-sends the same frozen
 * message (the service's hot introspection answers) pays for encoding once;
 * entries go with the message.
 */
const ENCODED = new WeakMap<object, Buffer>();

function encodeResponse(output: DescMessage, message: MessageShape<DescMessage>): Buffer {
  if (!Object.isFrozen(message)) return asBuffer(toBinary(output, message));
  let bytes = ENCODED.get(message);
  if (bytes === undefined) {
    bytes = asBuffer(toBinary(output, message));
    ENCODED.set(message, bytes);
  }
  return bytes;
}

/** The gRPC path of a method, as both servers name it in logs. */
export function procedureOf(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/** Wraps toBinary's Uint8Array as a Buffer without copying (grpc-js calls `.copy` on it). */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function decodeOrMark(desc: DescMessage, bytes: Buffer): unknown {
  try {
    return fromBinary(desc, bytes);
  } catch {
    return DECODE_FAILED;
  }
}

function decodeWithOrMark(decode: (bytes: Buffer) => unknown, bytes: Buffer): unknown {
  try {
    return decode(bytes);
  } catch {
    return DECODE_FAILED;
  }
}

function handlerFor(service: DescService, spec: MethodImplSpec, options: GrpcAdapterOptions): UntypedHandleCall {
  // One recorder per method, made now: per call, recording is an array index.
  const observed = options.observer?.recorder("grpc", spec.method);
  // With tracing off, nothing is wrapped: the hot path is the same as without it.
  const traced = options.tracing?.method(procedureOf(spec.method));
  const record = traced === undefined ? observed : traced.recorder(observed);
  const handler = plainHandlerFor(service, spec, options, record);
  return traced === undefined ? handler : traced.handler(handler);
}

function plainHandlerFor(service: DescService, spec: MethodImplSpec, options: GrpcAdapterOptions, record: CallRecorder | undefined): UntypedHandleCall {
  switch (spec.kind) {
    case "unary":
      return unaryHandler(service, spec, options, record);
    case "server_streaming":
      return serverStreamingHandler(service, spec, options, record);
    case "client_streaming":
      return clientStreamingHandler(service, spec, options, record);
    case "bidi_streaming":
      return bidiStreamingHandler(service, spec, options, record);
  }
}

/** The call's request id: the caller's `x-request-id` if acceptable, else a new one. */
function requestIdOf(call: { readonly metadata: Metadata }): string {
  return requestIdFrom(call.metadata.get(REQUEST_ID_HEADER)[0]);
}

/**
 * The hot path: per call, one context object (its signal, headers and values
 * are made only if the handler asks), one request id, one async frame (the
 * handler's answer awaited in {@link answerOnce}), and with an observer two
 * clock reads and one recorder call. Not itself async: an async wrapper that
 * returned `answerOnce`'s promise would cost a second frame and two more
 * microtasks per call. Nothing here throws (answerOnce catches everything):
 * grpc-js drops the returned promise, so an escaped rejection would be
 * unhandled.
 */
function unaryHandler(
  service: DescService,
  spec: Extract<MethodImplSpec, { kind: "unary" }>,
  options: GrpcAdapterOptions,
  record: CallRecorder | undefined,
): UntypedHandleCall {
  const { method, impl } = spec;
  return function unary(call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>): Promise<void> {
    const start = record === undefined ? 0 : performance.now();
    const ctx = new GrpcHandlerContext(service, method, call, options.shutdownSignal, requestIdOf(call));
    return answerOnce(call, callback, ctx, options, record, start, impl as (request: unknown, ctx: GrpcHandlerContext) => unknown, call.request);
  };
}

/**
 * Ends a call that has exactly one answer (unary, client streaming): the
 * handler's message for `request` with its headers and trailers, or the
 * mapped error status; a `request` of DECODE_FAILED did not decode. The
 * handler and its request are passed rather than a closure over them: one
 * allocation less per call. Never throws: grpc-js drops the handler's
 * promise, so an escaped rejection would be unhandled.
 */
async function answerOnce(
  call: ServerUnaryCall<unknown, unknown> | ServerReadableStream<unknown, unknown>,
  callback: sendUnaryData<unknown>,
  ctx: GrpcHandlerContext,
  options: GrpcAdapterOptions,
  record: CallRecorder | undefined,
  start: number,
  impl: (request: unknown, ctx: GrpcHandlerContext) => unknown,
  request: unknown,
): Promise<void> {
  let code: number = GrpcStatus.UNKNOWN;
  try {
    if (request === DECODE_FAILED) {
      trySendHeader(call, undefined, ctx.requestId);
      code = GrpcStatus.INVALID_ARGUMENT;
      callback(INVALID_REQUEST);
      return;
    }
    const response = create(ctx.method.output, (await impl(request, ctx)) as MessageShape<DescMessage>);
    const trailers = toMetadata(ctx.responseTrailerIfSet);
    sendHeader(call, ctx.responseHeaderIfSet, ctx.requestId);
    code = GrpcStatus.OK;
    callback(null, response, trailers);
  } catch (err) {
    trySendHeader(call, ctx.responseHeaderIfSet, ctx.requestId);
    const status = errorStatus(err, ctx, ctx.method, options);
    code = status.code ?? GrpcStatus.UNKNOWN;
    callback(status);
  } finally {
    ctx.abort(CALL_COMPLETED);
    record?.(code, start, ctx);
  }
}

function serverStreamingHandler(
  service: DescService,
  spec: Extract<MethodImplSpec, { kind: "server_streaming" }>,
  options: GrpcAdapterOptions,
  record: CallRecorder | undefined,
): UntypedHandleCall {
  const { method, impl } = spec;
  return async function serverStreaming(call: ServerWritableStream<unknown, unknown>) {
    const start = record === undefined ? 0 : performance.now();
    const ctx = new GrpcHandlerContext(service, method, call, options.shutdownSignal, requestIdOf(call));
    const request = call.request;
    if (request === DECODE_FAILED) {
      trySendHeader(call, undefined, ctx.requestId);
      call.emit("error", INVALID_REQUEST);
      ctx.abort(CALL_COMPLETED);
      record?.(GrpcStatus.INVALID_ARGUMENT, start, ctx);
      return;
    }
    await writeAll(call, ctx, () => impl(request as MessageShape<DescMessage>, ctx), options, record, start);
  };
}

function clientStreamingHandler(
  service: DescService,
  spec: Extract<MethodImplSpec, { kind: "client_streaming" }>,
  options: GrpcAdapterOptions,
  record: CallRecorder | undefined,
): UntypedHandleCall {
  const { method, impl } = spec;
  return async function clientStreaming(call: ServerReadableStream<unknown, unknown>, callback: sendUnaryData<unknown>) {
    const start = record === undefined ? 0 : performance.now();
    const ctx = new GrpcHandlerContext(service, method, call, options.shutdownSignal, requestIdOf(call));
    await answerOnce(call, callback, ctx, options, record, start, impl as (request: unknown, ctx: GrpcHandlerContext) => unknown, requests(call));
  };
}

function bidiStreamingHandler(
  service: DescService,
  spec: Extract<MethodImplSpec, { kind: "bidi_streaming" }>,
  options: GrpcAdapterOptions,
  record: CallRecorder | undefined,
): UntypedHandleCall {
  const { method, impl } = spec;
  return async function bidiStreaming(call: ServerDuplexStream<unknown, unknown>) {
    const start = record === undefined ? 0 : performance.now();
    const ctx = new GrpcHandlerContext(service, method, call, options.shutdownSignal, requestIdOf(call));
    await writeAll(call, ctx, () => impl(requests(call), ctx), options, record, start);
  };
}

/** The request messages of a streaming call, failing the call on one that does not decode. */
async function* requests(
  call: ServerReadableStream<unknown, unknown> | ServerDuplexStream<unknown, unknown>,
): AsyncGenerator<MessageShape<DescMessage>> {
  // destroyOnReturn: false, because the default async iterator destroys the
  // whole duplex once the requests end, before any response is written.
  for await (const message of call.iterator({ destroyOnReturn: false }) as AsyncIterable<unknown>) {
    if (message === DECODE_FAILED) {
      throw new ConnectError("request could not be decoded", Code.InvalidArgument);
    }
    yield message as MessageShape<DescMessage>;
  }
}

/**
 * Drives a streaming handler: writes each answer (headers first), honours
 * back-pressure, stops when the call is cancelled, and ends the call with the
 * trailers or with the mapped error status. The handler is invoked inside the
 * try, so one that throws before returning its iterable is mapped too.
 * Reports the final code to `record` (CANCELLED when the client went away).
 */
async function writeAll(
  call: ServerWritableStream<unknown, unknown> | ServerDuplexStream<unknown, unknown>,
  ctx: GrpcHandlerContext,
  invoke: () => AsyncIterable<unknown>,
  options: GrpcAdapterOptions,
  record: CallRecorder | undefined,
  start: number,
): Promise<void> {
  const output = ctx.method.output;
  let headerSent = false;
  let code: number = GrpcStatus.CANCELLED;
  try {
    for await (const response of invoke()) {
      if (ctx.signal.aborted) break;
      if (!headerSent) {
        headerSent = true;
        sendHeader(call, ctx.responseHeaderIfSet, ctx.requestId);
      }
      if (!call.write(create(output, response as MessageShape<DescMessage>))) {
        await drained(call, ctx.signal);
      }
    }
    if (call.cancelled) return; // the client is gone; nobody to tell
    if (!headerSent) sendHeader(call, ctx.responseHeaderIfSet, ctx.requestId);
    if (ctx.signal.aborted) {
      // Past its deadline (grpc-js has already sent DEADLINE_EXCEEDED and
      // ignores this) or the server is shutting down: say why.
      const status = errorStatus(ctx.signal.reason, ctx, ctx.method, options);
      code = status.code ?? GrpcStatus.UNKNOWN;
      call.emit("error", status);
    } else {
      code = GrpcStatus.OK;
      call.end(toMetadata(ctx.responseTrailerIfSet));
    }
  } catch (err) {
    if (call.cancelled) return;
    if (!headerSent) trySendHeader(call, ctx.responseHeaderIfSet, ctx.requestId);
    const status = errorStatus(err, ctx, ctx.method, options);
    code = status.code ?? GrpcStatus.UNKNOWN;
    call.emit("error", status);
  } finally {
    ctx.abort(CALL_COMPLETED);
    record?.(code, start, ctx);
  }
}

/** Resolves when the stream wants more data, or when the call is aborted. */
function drained(call: NodeJS.EventEmitter, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      call.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.on("drain", done);
    signal.addEventListener("abort", done);
  });
}

/** Sends the initial metadata: the response headers the handler set, if any, and the request id. */
function sendHeader(call: ServerSurfaceCall, header: Headers | undefined, requestId: string): void {
  const metadata = toMetadata(header) ?? new Metadata();
  metadata.set(REQUEST_ID_HEADER, requestId);
  call.sendMetadata(metadata);
}

/**
 * On the error path: a header grpc-js refuses must not hide the real error,
 * and errorStatus reports a bad trailer anyway.
 */
function trySendHeader(call: ServerSurfaceCall, header: Headers | undefined, requestId: string): void {
  try {
    sendHeader(call, header, requestId);
  } catch {
    // already failing; the status carries the reason
  }
}

/**
 * Adds headers to grpc-js metadata, creating it only when there is something
 * to add (undefined when empty, so the common case allocates nothing).
 */
function toMetadata(headers: Headers | undefined, into?: Metadata): Metadata | undefined {
  let metadata = into;
  if (headers === undefined) return metadata;
  for (const [key, value] of headers) {
    metadata ??= new Metadata();
    // grpc-js insists on Buffer values for -bin keys and strings otherwise.
    if (key.endsWith("-bin")) {
      metadata.add(key, Buffer.from(decodeBinaryHeader(value)));
    } else {
      metadata.add(key, value);
    }
  }
  return metadata;
}

const INVALID_REQUEST: ServerStatusResponse = {
  code: GrpcStatus.INVALID_ARGUMENT,
  details: "request could not be decoded",
};

/**
 * Maps what a handler threw to a gRPC status. Connect codes have the gRPC
 * numbers, so a ConnectError passes straight through. An abort caused by the
 * call itself (cancel, deadline, shutdown) is reported as such rather than as
 * an internal failure, whatever error the handler's I/O surfaced it as.
 */
function errorStatus(
  err: unknown,
  ctx: GrpcHandlerContext,
  method: DescMethod,
  options: GrpcAdapterOptions,
): ServerStatusResponse {
  let error: ConnectError;
  if (err instanceof ConnectError) {
    error = err;
  } else if (ctx.abortReason() !== undefined) {
    error = ConnectError.from(ctx.abortReason(), Code.Canceled);
  } else {
    report(options, err, method);
    error = INTERNAL_ERROR;
  }
  let trailers: Metadata | undefined;
  try {
    trailers = toMetadata(error.metadata, toMetadata(ctx.responseTrailerIfSet));
  } catch (metadataError) {
    // A header value grpc-js refuses (bad characters, bad base64) is a bug in
    // the handler; report it rather than crash the call.
    report(options, metadataError, method);
  }
  // Connect's Code enum uses the gRPC status numbers, so this is a relabel.
  return { code: error.code as number as GrpcStatus, details: error.rawMessage, metadata: trailers };
}

/** Hands an error to the logger; a logger that throws must not take the call (or the process) down. */
function report(options: GrpcAdapterOptions, err: unknown, method: DescMethod): void {
  try {
    options.onInternalError(err, procedureOf(method));
  } catch {
    // nothing better to do with it
  }
}
