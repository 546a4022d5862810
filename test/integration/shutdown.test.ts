import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { status as GrpcStatus } from "@grpc/grpc-js";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InactiveReason, TokenService, type IntrospectTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService } from "../support/service.js";
import { startTcpProxy } from "../support/tcp-proxy.js";

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Whether a promise has settled yet, without waiting for it. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  const marker = Symbol("pending");
  return (await Promise.race([promise.then(() => true, () => true), Promise.resolve(marker)])) !== marker;
}

/**
 * Graceful shutdown of the whole service: stop accepting, let in-flight calls
 * finish within SHUTDOWN_GRACE, flush batched writes, close the store.
 */
describe("graceful shutdown", () => {
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    await db?.drop();
  });

  it("finishes calls in flight on both ports, refuses new ones, then flushes last-used times", async () => {
    // The store sits behind a proxy the test can freeze, so calls can be held in flight at will.
    const proxy = await startTcpProxy(Number(new URL(db.url).port || 5432), new URL(db.url).hostname);
    const url = new URL(db.url);
    url.port = String(proxy.port);
    const sut = await startTestService({ DATABASE_URL: url.toString(), LAST_USED_FLUSH_INTERVAL: "1h", SHUTDOWN_GRACE: "10s" });
    const admin = sut.bootstrapToken!;
    const as = { authorization: `Bearer ${admin}` };
    const grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    const connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));
    try {
      // Warm up: the caller's token is cached, both connections are open.
      await grpc.unary("introspectToken", { token: admin }, as);
      await connect.introspectToken({ token: admin }, { headers: as });

      proxy.freeze();
      // Tokens nobody has seen: answering needs the (frozen) store.
      const viaGrpc = grpc.unary<IntrospectTokenResponse>("introspectToken", { token: mintToken("development").token }, as);
      const viaConnect = connect.introspectToken({ token: mintToken("development").token }, { headers: as });
      await sleep(200);
      const stopping = sut.service.stop();
      await sleep(200);
      expect(await settled(viaGrpc), "gRPC call still in flight").toBe(false);
      expect(await settled(viaConnect), "Connect call still in flight").toBe(false);
      expect(await settled(stopping), "stop waits for them").toBe(false);

      // No new connections while draining.
      const late = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
      await expect(late.unary("introspectToken", { token: admin }, as)).rejects.toMatchObject({ code: GrpcStatus.UNAVAILABLE });
      late.close();

      proxy.restore();
      expect(await viaGrpc).toMatchObject({ active: false, reason: InactiveReason.UNKNOWN });
      expect(await viaConnect).toMatchObject({ active: false, reason: InactiveReason.UNKNOWN });
      await stopping;
      expect(sut.logs.lines.at(-1)).toMatchObject({ msg: "token service stopped" });
    } finally {
      grpc.close();
      await sut.service.stop();
      await proxy.close();
    }

    // The batched last-used time of the caller's token was written on the way out.
    const check = new pg.Client({ connectionString: db.url });
    await check.connect();
    const { rows } = await check.query<{ n: string }>("select count(*) as n from token_last_used");
    await check.end();
    expect(Number(rows[0]!.n)).toBe(1);
  });
});

describe("the server process", () => {
  beforeAll(async () => {
    await run("npm", ["run", "build", "--silent"]);
  }, 120_000);

  it.each(["SIGTERM", "SIGINT"] as const)("shuts down cleanly on %s and exits 0", async (signal) => {
    const child = spawn("node", ["dist/src/main.js"], {
      env: { PATH: process.env["PATH"] ?? "", DATA_DIR: "memory://", GRPC_PORT: "0", HTTP_PORT: "0", LOG_LEVEL: "info" },
      stdio: ["ignore", "ignore", "pipe"], // stdout carries the first-start token: not read here
    });
    let logs = "";
    const exited = new Promise<string>((resolve) => child.once("exit", (code, killedBy) => resolve(`exit code ${code ?? "none"}${killedBy ? `, killed by ${killedBy}` : ""}`)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start:\n${logs}`)), 20_000);
      child.stderr.on("data", (chunk: Buffer) => {
        logs += chunk.toString("utf8");
        if (logs.includes('"msg":"token service listening"')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    // Once it has answered a request, main() has installed its signal handlers
    // (they follow startService() in the same turn; the log line came just before).
    const http = /"http":"127\.0\.0\.1:(\d+)"/.exec(logs)![1]!;
    await fetch(`http://127.0.0.1:${http}/healthz`).then((res) => res.arrayBuffer());
    child.kill(signal);
    expect(await exited, logs).toBe("exit code 0");
    const messages = logs.split("\n").filter((l) => l.startsWith("{")).map((l) => (JSON.parse(l) as { msg: string; signal?: string }));
    expect(messages).toContainEqual(expect.objectContaining({ msg: "shutting down", signal }));
    expect(messages.at(-1)).toMatchObject({ msg: "token service stopped" });
  });
});
