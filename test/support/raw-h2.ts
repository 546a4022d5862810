/**
 * Hand-made HTTP/2 requests for transport tests: frames no well-behaved
 * client would send (bad compressed flags, truncated envelopes, bodies that
 * never end), and what came back, read as gRPC or gRPC-Web.
 */
import * as http2 from "node:http2";

/** What one raw HTTP/2 call got back. */
export interface RawAnswer {
  /** HTTP status. */
  readonly status: number;
  /** The response headers (and the trailers, when trailers came). */
  readonly headers: Readonly<Record<string, string>>;
  /** grpc-status from the trailers, the trailers-only headers, or a gRPC-Web trailer frame; undefined when none came. */
  readonly grpcStatus: number | undefined;
  /** grpc-message, percent-decoded. */
  readonly grpcMessage: string;
  /** The response body. */
  readonly body: Buffer;
  /** How the stream ended: normally, reset by the server (with its code), or by the client-side time limit. */
  readonly ended: "end" | "reset" | "timeout";
  /** The RST_STREAM code when `ended` is "reset". */
  readonly rstCode?: number;
}

/** Options of {@link rawCall}. */
export interface RawCallOptions {
  /** Extra request headers. */
  readonly headers?: Record<string, string>;
  /** The request body, sent in one DATA frame. */
  readonly body?: Uint8Array;
  /** When false the request stream is left open after the body (a body that never ends). Default true. */
  readonly endStream?: boolean;
  /** Give up (and report "timeout") after this long. Default 10 s. */
  readonly giveUpMs?: number;
  /** Reuse this session instead of opening one. */
  readonly session?: http2.ClientHttp2Session;
}

/** A gRPC length-prefixed message: flag byte, 4-byte big-endian length, then the bytes (PROTOCOL-HTTP2.md). */
export function envelope(flag: number, message: Uint8Array, declaredLength = message.length): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(flag, 0);
  head.writeUInt32BE(declaredLength, 1);
  return Buffer.concat([head, message]);
}

/**
 * POSTs `path` on `http://127.0.0.1:port` over cleartext HTTP/2 and collects
 * the answer. Never rejects for a protocol outcome (a reset or no answer is
 * reported in `ended`); rejects only when the connection cannot be made.
 */
export function rawCall(port: number, path: string, options: RawCallOptions = {}): Promise<RawAnswer> {
  const own = options.session === undefined;
  const session = options.session ?? http2.connect(`http://127.0.0.1:${port}`);
  return new Promise<RawAnswer>((resolve, reject) => {
    session.once("error", reject);
    const req = session.request({ ":method": "POST", ":path": path, ...options.headers }, { endStream: false });
    const chunks: Buffer[] = [];
    const headers: Record<string, string> = {};
    let status = 0;
    let settled = false;
    const finish = (ended: RawAnswer["ended"], rstCode?: number) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.off("error", reject);
      const body = Buffer.concat(chunks);
      const { grpcStatus, grpcMessage } = statusOf(headers, body);
      if (ended !== "end" && !req.closed) req.close(http2.constants.NGHTTP2_CANCEL);
      if (own) session.close();
      resolve({ status, headers, grpcStatus, grpcMessage, body, ended, ...(rstCode === undefined ? {} : { rstCode }) });
    };
    const timer = setTimeout(() => finish("timeout"), options.giveUpMs ?? 10_000);
    const take = (h: http2.IncomingHttpHeaders) => {
      for (const [k, v] of Object.entries(h)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(", ") : String(v);
    };
    req.on("response", (h) => {
      status = Number(h[":status"]);
      take(h);
    });
    req.on("trailers", take);
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => finish("end"));
    req.on("error", () => {
      /* reported through "close" */
    });
    req.on("close", () => finish(req.rstCode === http2.constants.NGHTTP2_NO_ERROR ? "end" : "reset", req.rstCode));
    if (options.body !== undefined && options.body.length > 0) req.write(options.body);
    if (options.endStream !== false) req.end();
  });
}

/** grpc-status and grpc-message from headers/trailers, or from a gRPC-Web trailer frame (flag 0x80) in the body. */
function statusOf(headers: Record<string, string>, body: Buffer): { grpcStatus: number | undefined; grpcMessage: string } {
  let fields: Record<string, string> = headers;
  if (headers["grpc-status"] === undefined) {
    // gRPC-Web: the trailers are the last envelope, flagged 0x80, as HTTP/1 header lines.
    let offset = 0;
    while (offset + 5 <= body.length) {
      const flag = body.readUInt8(offset);
      const length = body.readUInt32BE(offset + 1);
      const payload = body.subarray(offset + 5, offset + 5 + length);
      if ((flag & 0x80) !== 0) {
        fields = {};
        for (const line of payload.toString("latin1").split("\r\n")) {
          const colon = line.indexOf(":");
          if (colon > 0) fields[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
      }
      offset += 5 + length;
    }
  }
  const raw = fields["grpc-status"];
  let message = fields["grpc-message"] ?? "";
  try {
    message = decodeURIComponent(message);
  } catch {
    // keep it raw
  }
  return { grpcStatus: raw === undefined ? undefined : Number(raw), grpcMessage: message };
}
