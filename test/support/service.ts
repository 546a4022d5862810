import { Writable } from "node:stream";
import type { DescService } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { loadConfig, type Config } from "../../src/config.js";
import { createLogger } from "../../src/logger.js";
import { startService, type RunningService } from "../../src/main.js";
import { methodDefinition } from "../../src/server/grpc-adapter.js";

/** Log lines a service under test wrote, parsed. */
export class LogCapture extends Writable {
  readonly lines: Record<string, unknown>[] = [];
  readonly raw: string[] = [];
  override _write(chunk: Buffer, _encoding: string, done: () => void): void {
    for (const line of chunk.toString("utf8").split("\n")) {
      if (line === "") continue;
      this.raw.push(line);
      this.lines.push(JSON.parse(line) as Record<string, unknown>);
    }
    done();
  }
}

/** A service started in-process on 127.0.0.1 with free ports, and what it printed. */
export interface ServiceUnderTest {
  readonly service: RunningService;
  readonly config: Config;
  readonly logs: LogCapture;
  /** The token the first start printed, if it printed one. */
  readonly bootstrapToken: string | undefined;
}

/**
 * A fixed key-encryption key for test services in staging and production
 * (which refuse to start without one). Services sharing a database must share
 * their KEK, so every test that needs one uses this.
 */
export const TEST_KEK = Buffer.alloc(32, 7).toString("base64");

/** Starts the whole service as `npm start` would, with test overrides. */
export async function startTestService(env: Record<string, string>, options: { readonly revocationNoticeDelayMs?: number } = {}): Promise<ServiceUnderTest> {
  // Every test client is 127.0.0.1 and many tests send bad credentials on
  // purpose: the per-address budget of failed authentications is off unless a
  // test (of the limit itself) sets it.
  const config = loadConfig({ LISTEN_HOST: "127.0.0.1", GRPC_PORT: "0", HTTP_PORT: "0", LOG_LEVEL: "debug", SHUTDOWN_GRACE: "1s", RATE_LIMIT_FAILED_AUTH: "off", ...env });
  const logs = new LogCapture();
  let bootstrapToken: string | undefined;
  const service = await startService(config, {
    ...options,
    log: createLogger(config.logLevel, logs),
    showBootstrapToken: (token) => {
      bootstrapToken = token;
    },
  });
  return { service, config, logs, bootstrapToken };
}

/** A real @grpc/grpc-js client for a protobuf-es service, with promise-returning unary calls (cleartext unless given credentials). */
export function grpcClient(service: DescService, address: string, credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure()) {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) definition[method.localName] = methodDefinition(method);
  const Client = grpc.makeGenericClientConstructor(definition, service.typeName);
  const client = new Client(address, credentials);
  return {
    client,
    /** Calls a unary method; rejects with the grpc ServiceError (code, details). */
    unary<Res>(method: string, request: object, metadata: Record<string, string> = {}): Promise<Res> {
      const md = new grpc.Metadata();
      for (const [k, v] of Object.entries(metadata)) md.set(k, v);
      return new Promise((resolve, reject) => {
        const fn = (client as unknown as Record<string, grpc.requestCallback<Res> & ((...a: unknown[]) => void)>)[method]!;
        fn.call(client, request, md, (err: grpc.ServiceError | null, res?: Res) => (err ? reject(err) : resolve(res!)));
      });
    },
    close: () => client.close(),
  };
}
