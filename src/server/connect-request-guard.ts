import { fromBinary, fromJsonString } from "@bufbuild/protobuf";
import type { DescField, DescMessage, DescMethod, DescOneof } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Compression, UniversalServerRequest } from "@connectrpc/connect/protocol";
import { EnvelopeCheck, declaresCompression } from "./envelope-check.js";

/**
 * What the HTTP port checks in a request body before connect-node reads it.
 * connect-node leaves these to its protocol handlers, which answer a body
 * that never ends never (even past `Connect-Timeout-Ms`), a flag byte of 2
 * OK, a truncated envelope INVALID_ARGUMENT, garbage protobuf INTERNAL, and
 * wrong JSON with protobuf-es's message, which quotes the value sent
 * (`…teams from JSON: expected Array, got "cfprd-…"`).
 */
export interface RequestGuardOptions {
  /** Largest request message (connect's `readMaxBytes`): larger bodies are left for connect to refuse. */
  readonly maxMessageBytes: number;
  /**
   * How long the whole body may take to arrive; undefined: only the call's
   * deadline bounds it. Not applied to methods whose requests are streams
   * (reflection), which may legitimately stay open.
   */
  readonly requestBodyTimeoutMs: number | undefined;
  /** Longest deadline a caller may ask for (connect's `maxTimeoutMs`). */
  readonly maxTimeoutMs: number;
  /** Told when a body took too long, so the transport can drop the connection once the answer is out. */
  readonly onSlowBody?: () => void;
  /** The compressions the server accepts (connect's `acceptCompression`), to decode compressed messages too. */
  readonly compressions?: readonly Compression[];
}

/** The message every undecodable request gets on both ports (see grpc-adapter.ts). */
const UNDECODABLE = "request could not be decoded";

/**
 * Returns `req` with its body checked on the way in:
 *
 * - Enveloped protocols (gRPC, gRPC-Web, Connect streaming): the framing
 *   rules of {@link EnvelopeCheck}, answered INTERNAL as the gRPC
 *   specification prescribes.
 * - Every protocol: each message (decompressed if need be) is decoded here first, so one
 *   that does not decode is answered INVALID_ARGUMENT (the caller's fault,
 *   as on the gRPC port) with a message that names the field and the
 *   expected type but never the value. The decode is repeated by connect;
 *   on this port (several hundred µs per call, see MEASURED.md) the few µs
 *   of a small message are the price of an answer that leaks nothing.
 * - The body must be complete within `requestBodyTimeoutMs` and within the
 *   call's own deadline (`grpc-timeout` or `Connect-Timeout-Ms`, capped at
 *   `maxTimeoutMs`), else DEADLINE_EXCEEDED.
 */
export function guardRequest(req: UniversalServerRequest, method: DescMethod, options: RequestGuardOptions): UniversalServerRequest {
  const input = method.input;
  const streamingRequest = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
  const body = req.body;
  if (req.method !== "POST" || body === null || typeof body !== "object" || !(Symbol.asyncIterator in body)) return req;
  const contentType = (req.header.get("content-type") ?? "").toLowerCase();
  const kind = bodyKind(contentType);
  if (kind === undefined) return req; // connect answers 415
  const json = contentType.includes("json");
  const max = options.maxMessageBytes;
  // Messages waiting for the decode check: whole, and whether compressed.
  const pending: [Uint8Array, boolean][] = [];
  let check: EnvelopeCheck | undefined;
  let whole: WholeBody | undefined;
  let compression: Compression | undefined;
  if (kind === "unary") {
    // Connect unary: the body is the message, compressed as Content-Encoding says.
    const encoding = req.header.get("content-encoding");
    compression = declaresCompression(encoding) ? options.compressions?.find((c) => c.name === encoding) : undefined;
    // An encoding the server does not know is connect's to refuse (UNIMPLEMENTED).
    if (!declaresCompression(encoding) || compression !== undefined) whole = new WholeBody(max);
  } else {
    const encoding = req.header.get(kind === "grpc" ? "grpc-encoding" : "connect-content-encoding");
    compression = declaresCompression(encoding) ? options.compressions?.find((c) => c.name === encoding) : undefined;
    check = new EnvelopeCheck(declaresCompression(encoding), (message, compressed) => pending.push([message, compressed]), max);
  }
  const decodePending = async (): Promise<void> => {
    for (const [message, compressed] of pending.splice(0)) {
      if (!compressed) decodeOrRefuse(input, message, json);
      // Unknown encodings are left to the protocol handler (UNIMPLEMENTED).
      else if (compression !== undefined) decodeOrRefuse(input, await decompressOrRefuse(compression, message, max), json);
    }
  };
  const limitMs = bodyTimeLimit(req.header, kind, streamingRequest ? undefined : options.requestBodyTimeoutMs, options.maxTimeoutMs);
  const deadline = limitMs === undefined ? Infinity : Date.now() + limitMs;
  const source = body as AsyncIterable<Uint8Array>;
  const guarded: AsyncIterable<Uint8Array> = {
    [Symbol.asyncIterator]() {
      const it = source[Symbol.asyncIterator]();
      return {
        async next() {
          const result = await withinDeadline(it.next(), deadline, options.onSlowBody);
          if (result.done === true) {
            const problem = check?.end();
            if (problem !== undefined) throw new ConnectError(problem, Code.Internal);
            const bytes = whole?.bytes();
            if (bytes !== undefined) pending.push([bytes, kind === "unary" && compression !== undefined]);
            await decodePending();
            return result;
          }
          const problem = check?.write(result.value);
          if (problem !== undefined) throw new ConnectError(problem, Code.Internal);
          whole?.add(result.value);
          await decodePending();
          return result;
        },
        return(value?: unknown) {
          return it.return?.(value) ?? Promise.resolve({ done: true as const, value: undefined });
        },
      };
    },
  };
  return { ...req, body: guarded };
}

/**
 * The decode check for a Connect GET request (methods marked free of side
 * effects), whose message travels in the query: `message`, `encoding`
 * (json or proto), `base64=1`, `compression` (Connect protocol, "Unary-Get
 * Request"). Resolves to the error to answer with, or undefined to let
 * connect serve it (including every malformed query connect refuses itself).
 */
export async function checkGetRequest(url: string, method: DescMethod, options: Pick<RequestGuardOptions, "maxMessageBytes" | "compressions">): Promise<ConnectError | undefined> {
  let query: URLSearchParams;
  try {
    query = new URL(url, "http://localhost").searchParams;
  } catch {
    return undefined;
  }
  const message = query.get("message");
  const encoding = query.get("encoding");
  if (message === null || (encoding !== "json" && encoding !== "proto")) return undefined;
  let bytes: Uint8Array;
  if (query.get("base64") === "1") {
    // Connect allows either base64 alphabet, padded or not (RFC 4648 §4, §5).
    bytes = Buffer.from(message.replace(/-/g, "+").replace(/_/g, "/"), "base64");
  } else {
    bytes = Buffer.from(message, "utf8");
  }
  const name = query.get("compression");
  try {
    if (declaresCompression(name)) {
      const compression = options.compressions?.find((c) => c.name === name);
      if (compression === undefined) return undefined; // connect answers UNIMPLEMENTED
      bytes = await decompressOrRefuse(compression, bytes, options.maxMessageBytes);
    }
    decodeOrRefuse(method.input, bytes, encoding === "json");
  } catch (err) {
    return ConnectError.from(err);
  }
  return undefined;
}

type BodyKind = "unary" | "grpc" | "connect-stream";

/** Which framing a content type implies; undefined for types connect will refuse. */
function bodyKind(contentType: string): BodyKind | undefined {
  if (contentType.startsWith("application/grpc-web-text")) return undefined;
  if (contentType.startsWith("application/grpc")) return "grpc"; // gRPC and gRPC-Web: same envelopes
  if (contentType.startsWith("application/connect+")) return "connect-stream";
  if (contentType.startsWith("application/proto") || contentType.startsWith("application/json")) return "unary";
  return undefined;
}

/**
 * The time the body may take: the configured limit, or the call's deadline
 * when that is sooner. Header syntax follows PROTOCOL-HTTP2.md (TimeoutValue:
 * at most 8 digits, then a unit) and the Connect protocol (Connect-Timeout-Ms:
 * at most 10 digits); a malformed one is left for connect to refuse.
 */
function bodyTimeLimit(header: Headers, kind: BodyKind, bodyTimeoutMs: number | undefined, maxTimeoutMs: number): number | undefined {
  let deadlineMs: number | undefined;
  if (kind === "grpc") {
    const match = /^(\d{1,8})([HMSmun])$/.exec(header.get("grpc-timeout") ?? "");
    if (match) deadlineMs = Number(match[1]) * GRPC_TIMEOUT_UNITS[match[2]!]!;
  } else {
    const raw = header.get("connect-timeout-ms");
    if (raw !== null && /^\d{1,10}$/.test(raw)) deadlineMs = Number(raw);
  }
  if (deadlineMs !== undefined) deadlineMs = Math.min(deadlineMs, maxTimeoutMs);
  if (bodyTimeoutMs === undefined) return deadlineMs;
  return deadlineMs === undefined ? bodyTimeoutMs : Math.min(deadlineMs, bodyTimeoutMs);
}

const GRPC_TIMEOUT_UNITS: Readonly<Record<string, number>> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000_001 };

/** Awaits one read of the body, failing with DEADLINE_EXCEEDED once the body's time is up. */
async function withinDeadline<T>(read: Promise<T>, deadline: number, onSlow: (() => void) | undefined): Promise<T> {
  if (deadline === Infinity) return read;
  const left = deadline - Date.now();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onSlow?.();
      reject(new ConnectError("the request body did not arrive in time", Code.DeadlineExceeded));
    }, Math.max(0, left));
  });
  try {
    return await Promise.race([read, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A Connect unary body, kept whole for the decode check unless it outgrows the message limit. */
class WholeBody {
  #parts: Uint8Array[] | undefined = [];
  #size = 0;
  constructor(private readonly max: number) {}
  add(chunk: Uint8Array): void {
    if (this.#parts === undefined) return;
    this.#size += chunk.length;
    if (this.#size > this.max) this.#parts = undefined; // connect refuses it with RESOURCE_EXHAUSTED
    else this.#parts.push(chunk);
  }
  bytes(): Uint8Array | undefined {
    const parts = this.#parts;
    if (parts === undefined) return undefined;
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }
}

const TEXT = new TextDecoder();

/** Decompresses a message for the decode check, with the errors {@link internalOnBadCompression} gives. */
async function decompressOrRefuse(compression: Compression, bytes: Uint8Array, max: number): Promise<Uint8Array> {
  return internalOnBadCompression(compression).decompress(bytes, max);
}

/** Decodes a request as connect will, refusing one that does not decode with INVALID_ARGUMENT. */
function decodeOrRefuse(input: DescMessage, bytes: Uint8Array, json: boolean): void {
  try {
    // The options connect-node decodes with (getJsonOptions): unknown keys are ignored.
    if (json) fromJsonString(input, TEXT.decode(bytes), { ignoreUnknownFields: true });
    else fromBinary(input, bytes);
  } catch (err) {
    throw new ConnectError(json ? jsonProblem(input, err) : UNDECODABLE, Code.InvalidArgument);
  }
}

/**
 * A JSON decoding error without the value sent: protobuf-es's messages quote
 * it (`expected Array, got "cfprd-…"`), and a key it does not know is the
 * caller's text too. Keeps the field's name and the expected type.
 */
function jsonProblem(input: DescMessage, err: unknown): string {
  const cause = err instanceof Error && err.cause instanceof Error ? err.cause : err;
  const field = fieldOf(cause);
  if (field !== undefined) {
    const expected = /^expected (\w+)/.exec((cause as Error).message)?.[1];
    return `${UNDECODABLE}: invalid JSON for field ${field.parent.typeName}.${field.name}${expected ? `: expected ${expected}` : ""}`;
  }
  const message = err instanceof Error ? err.message : "";
  if (message.includes("is unknown")) return `${UNDECODABLE}: a JSON key is not a field of ${input.typeName}`;
  if (cause instanceof SyntaxError) return `${UNDECODABLE}: the body is not valid JSON`;
  return `${UNDECODABLE}: not a valid ${input.typeName} in JSON`;
}

/** The field a protobuf-es FieldError names (`field()` is its documented accessor). */
function fieldOf(err: unknown): DescField | DescOneof | undefined {
  if (!(err instanceof Error) || !("field" in err) || typeof err.field !== "function") return undefined;
  const field: unknown = (err.field as () => unknown)();
  return typeof field === "object" && field !== null && "parent" in field && "name" in field ? (field as DescField | DescOneof) : undefined;
}

/**
 * Wraps a compression so a body that does not decompress answers INTERNAL,
 * as gRPC's doc/statuscodes.md prescribes ("Could not decompress, but
 * compression algorithm supported"); connect-node answers INVALID_ARGUMENT.
 */
export function internalOnBadCompression(compression: Compression): Compression {
  return {
    name: compression.name,
    compress: (bytes) => compression.compress(bytes),
    decompress: (bytes, readMaxBytes) =>
      compression.decompress(bytes, readMaxBytes).catch((err: unknown) => {
        const error = ConnectError.from(err);
        throw error.code === Code.InvalidArgument ? new ConnectError("could not decompress the message", Code.Internal) : error;
      }),
  };
}
