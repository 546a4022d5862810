/**
 * The floor: a bare `@grpc/grpc-js` server with one unary method and a
 * generic handler (bytes in, a fixed reply out, no protobuf decoding, no
 * auth). Loaded exactly like the real service, it shows what grpc-js itself
 * costs per call on this machine; the service's cache-hit path is judged
 * against it.
 *
 * Listens on 127.0.0.1 only, on a free port it prints as
 * `echo listening on 127.0.0.1:<port>`. ECHO_RESPONSE_BYTES sets the size
 * of the reply (the runner passes the size of a real IntrospectToken answer).
 */
import { Server, ServerCredentials, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";

/** The gRPC path h2load calls. */
export const ECHO_PATH = "/bench.v1.Echo/Echo";

const identity = (bytes: Buffer): Buffer => bytes;

function main(): void {
  const size = Number(process.env["ECHO_RESPONSE_BYTES"] ?? "256");
  // A valid protobuf message of `size` bytes: field 1 (bytes), length-prefixed.
  const payload = Buffer.alloc(Math.max(0, size - 3), 0x61);
  const reply = Buffer.concat([Buffer.from([0x0a]), encodeVarint(payload.length), payload]);

  const server = new Server({ "grpc.max_receive_message_length": 65_536, "grpc.max_send_message_length": 65_536 });
  server.addService(
    {
      Echo: {
        path: ECHO_PATH,
        requestStream: false,
        responseStream: false,
        requestSerialize: identity,
        requestDeserialize: identity,
        responseSerialize: identity,
        responseDeserialize: identity,
      },
    },
    {
      Echo: (_call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => callback(null, reply),
    },
  );
  server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, port) => {
    if (error) {
      process.stderr.write(`echo server failed to bind: ${error.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`echo listening on 127.0.0.1:${port}\n`);
  });
  const stop = () => server.tryShutdown(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

function encodeVarint(value: number): Buffer {
  const bytes: number[] = [];
  let rest = value;
  while (rest > 0x7f) {
    bytes.push((rest & 0x7f) | 0x80);
    rest >>>= 7;
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

main();
