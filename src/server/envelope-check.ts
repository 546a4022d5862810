/**
 * Checks the framing of a gRPC request body (the Length-Prefixed-Message
 * stream of grpc/grpc doc/PROTOCOL-HTTP2.md, which gRPC-Web and Connect
 * streaming reuse) as it arrives, before a library decodes it. Both servers
 * use it: @grpc/grpc-js treats any flag byte but 1 as "not compressed",
 * passes a compressed message through untouched when no grpc-encoding was
 * declared, and answers a body that ends mid-frame as if it had no message;
 * connect-node answers a flag byte of 2 OK and a truncated frame
 * INVALID_ARGUMENT. The specification's codes:
 *
 * - PROTOCOL-HTTP2.md: "Compressed-Flag → 0 / 1", and "If the
 *   Message-Encoding header is omitted then the Compressed-Flag must be 0".
 *   grpc/grpc doc/compression.md, test case 6: a Compressed-Flag set without
 *   a grpc-encoding other than identity "MUST fail with INTERNAL status".
 * - A flag byte other than 0 or 1, or a body that ends inside a frame, is a
 *   corrupt message stream: a protocol error, which PROTOCOL-HTTP2.md's
 *   RST_STREAM table maps to INTERNAL (grpc-go answers both INTERNAL too).
 */

/** What {@link EnvelopeCheck} found wrong; `undefined` means nothing yet. */
export type EnvelopeProblem = string | undefined;

/** Why a frame is refused, shared by both servers so clients see the same text. */
export const FRAME_PROBLEMS = Object.freeze({
  badFlag: "invalid message framing: the Compressed-Flag must be 0 or 1",
  compressedWithoutEncoding: "invalid message framing: the Compressed-Flag is set but no grpc-encoding was declared",
  truncated: "invalid message framing: the request ended inside a message",
});

/**
 * An incremental parser of 5-byte envelope headers: feed it every chunk of the
 * body in order, then call {@link end}. It copies nothing unless asked to
 * collect whole messages (`onMessage`), which the HTTP port uses to decode
 * requests itself.
 */
export class EnvelopeCheck {
  /** Bytes of the current 5-byte header seen so far (0: at a frame boundary, or inside a message). */
  #headerPos = 0;
  #flag = 0;
  #length = 0;
  /** Message bytes still to come in the current frame. */
  #remaining = 0;
  #parts: Buffer[] | undefined;

  /**
   * @param compressionDeclared whether the request declared a message encoding other than identity
   * @param onMessage given each complete message and whether it is compressed (only when set)
   * @param collectMaxBytes messages declared longer than this are not collected (the server refuses them anyway)
   */
  constructor(
    private readonly compressionDeclared: boolean,
    private readonly onMessage?: (message: Buffer, compressed: boolean) => void,
    private readonly collectMaxBytes = Infinity,
  ) {}

  /** Reads one chunk; returns the first problem found in it, if any. */
  write(chunk: Uint8Array): EnvelopeProblem {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.#remaining > 0) {
        const take = Math.min(this.#remaining, n - i);
        if (this.#parts !== undefined) this.#parts.push(Buffer.from(chunk.buffer, chunk.byteOffset + i, take));
        this.#remaining -= take;
        i += take;
        if (this.#remaining === 0) this.#messageDone();
        continue;
      }
      const byte = chunk[i]!;
      i++;
      if (this.#headerPos === 0) {
        if (byte > 1) return FRAME_PROBLEMS.badFlag;
        if (byte === 1 && !this.compressionDeclared) return FRAME_PROBLEMS.compressedWithoutEncoding;
        this.#flag = byte;
        this.#length = 0;
        this.#headerPos = 1;
        continue;
      }
      // Message-Length: 4 bytes, big endian. Multiplication keeps it unsigned.
      this.#length = this.#length * 256 + byte;
      this.#headerPos++;
      if (this.#headerPos === 5) {
        this.#headerPos = 0;
        this.#remaining = this.#length;
        this.#parts = this.onMessage !== undefined && this.#length <= this.collectMaxBytes ? [] : undefined;
        if (this.#remaining === 0) this.#messageDone();
      }
    }
    return undefined;
  }

  /** The body has ended: a problem if it ended inside a frame. */
  end(): EnvelopeProblem {
    return this.#headerPos !== 0 || this.#remaining > 0 ? FRAME_PROBLEMS.truncated : undefined;
  }

  #messageDone(): void {
    const parts = this.#parts;
    if (parts === undefined) return;
    this.#parts = undefined;
    this.onMessage!(parts.length === 1 ? parts[0]! : Buffer.concat(parts), this.#flag === 1);
  }
}

/** Whether a grpc-encoding / connect-content-encoding value declares real compression. */
export function declaresCompression(encoding: string | undefined | null): boolean {
  return encoding !== undefined && encoding !== null && encoding !== "" && encoding !== "identity";
}
