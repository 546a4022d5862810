/**
 * A small gRPC load generator on plain `node:http2`, for what h2load cannot
 * do: a different request body on every call (cache misses: each token is
 * introspected once), and reading each call's `grpc-status` trailer and
 * `active` flag (gRPC errors arrive as trailers on an HTTP 200, which h2load
 * counts as success).
 *
 * It writes prepared frames straight onto HTTP/2 streams, without the
 * grpc-js client (which saturates near 2,000 calls/s on one core), so it
 * keeps up with the service's miss path. Every run is bounded by a call
 * count and a time limit and stops by itself.
 *
 * Usage (from the runner): node dist/bench/h2-load.js '<json H2LoadInput>'
 * prints one line of JSON (H2LoadResult).
 */
import { readFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { IntrospectTokenRequestSchema } from "../gen/tokens/v1/token_service_pb.js";

/** What to run. */
export interface H2LoadInput {
  /** `127.0.0.1:<grpc port>`. */
  readonly address: string;
  /** The caller's own token (sent as `authorization: Bearer …`). */
  readonly callerToken: string;
  /** JSON file holding an array of tokens to introspect. */
  readonly tokensFile: string;
  /** First index in that array, and how many calls at most (call i sends token (first + i) mod length). */
  readonly first: number;
  readonly maxCalls: number;
  /** Stop starting calls after this many seconds. */
  readonly maxSeconds: number;
  /** Calls in flight. */
  readonly concurrency: number;
  /** HTTP/2 connections they are spread over. */
  readonly connections: number;
}

/** What happened. */
export interface H2LoadResult {
  readonly calls: number;
  readonly seconds: number;
  readonly rate: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Count per grpc-status ("transport" for calls that failed below gRPC). */
  readonly statuses: Record<string, number>;
  readonly active: number;
  readonly inactive: number;
  /** This process's CPU time over the run, as a share of one core: near 100 means the loader, not the server, set the pace. */
  readonly loaderCpuPercent: number;
}

const PATH = "/tokens.v1.TokenService/IntrospectToken";

function frame(message: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt8(0, 0);
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

function connect(address: string): Promise<http2.ClientHttp2Session> {
  const colon = address.lastIndexOf(":");
  return new Promise((done, fail) => {
    // No Nagle: a request is written as HEADERS then DATA, and with Nagle the
    // DATA frame would wait for the server's (delayed) ACK of the HEADERS.
    const session = http2.connect(`http://${address}`, {
      createConnection: () => net.connect({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)), noDelay: true }),
    });
    session.once("connect", () => done(session));
    session.once("error", fail);
  });
}

async function main(): Promise<void> {
  const input = JSON.parse(process.argv[2] ?? "{}") as H2LoadInput;
  const tokens = JSON.parse(readFileSync(input.tokensFile, "utf8")) as string[];
  // Calls wrap around the token list; a miss run asks for at most its length.
  const total = input.maxCalls;
  // Bodies are prepared before the clock starts.
  const bodies: Buffer[] = new Array<Buffer>(total);
  for (let i = 0; i < total; i++) {
    const token = tokens[(input.first + i) % tokens.length]!;
    bodies[i] = frame(toBinary(IntrospectTokenRequestSchema, create(IntrospectTokenRequestSchema, { token })));
  }
  const sessions = await Promise.all(Array.from({ length: Math.max(1, input.connections) }, () => connect(input.address)));
  const headers = {
    ":method": "POST",
    ":path": PATH,
    "content-type": "application/grpc",
    te: "trailers",
    authorization: `Bearer ${input.callerToken}`,
  };
  const latencies = new Float64Array(total);
  const statuses: Record<string, number> = {};
  let active = 0;
  let inactive = 0;
  let next = 0;
  let done = 0;
  const cpuAtStart = process.cpuUsage();
  const started = performance.now();
  const stopAt = started + input.maxSeconds * 1000;

  const call = (index: number): Promise<void> =>
    new Promise((finish) => {
      const session = sessions[index % sessions.length]!;
      const t0 = performance.now();
      const stream = session.request(headers);
      let status: string | undefined;
      let first: Buffer | undefined;
      stream.on("response", (h) => {
        // Trailers-only answers (errors) carry grpc-status in the headers.
        const s = h["grpc-status"];
        if (typeof s === "string") status = s;
      });
      stream.on("trailers", (t) => {
        const s = t["grpc-status"];
        if (typeof s === "string") status = s;
      });
      stream.on("data", (chunk: Buffer) => {
        first ??= chunk;
      });
      const end = (transportFailed: boolean) => {
        latencies[done++] = performance.now() - t0;
        const key = transportFailed ? "transport" : (status ?? "missing");
        statuses[key] = (statuses[key] ?? 0) + 1;
        // IntrospectTokenResponse field 1 (bool active) is written first when true: 0x08 0x01.
        if (status === "0" && first !== undefined) {
          if (first.length > 6 && first[5] === 0x08 && first[6] === 0x01) active++;
          else inactive++;
        }
        finish();
      };
      let failed = false;
      stream.on("error", () => {
        failed = true;
      });
      stream.on("close", () => end(failed || stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR));
      stream.end(bodies[index]);
    });

  const worker = async () => {
    while (next < total && performance.now() < stopAt) await call(next++);
  };
  await Promise.all(Array.from({ length: input.concurrency }, worker));
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuAtStart);
  const loaderCpuPercent = Math.round((cpu.user + cpu.system) / 10_000 / seconds);
  for (const session of sessions) session.close();
  const sorted = latencies.subarray(0, done).sort();
  const q = (p: number) => (sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!);
  const result: H2LoadResult = { calls: done, seconds, rate: done / seconds, p50Ms: q(0.5), p99Ms: q(0.99), statuses, active, inactive, loaderCpuPercent };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`h2-load failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
