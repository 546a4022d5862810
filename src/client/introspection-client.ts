import { hash } from "node:crypto";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import {
  InactiveReason,
  TokenKind,
  TokenService,
  type IntrospectTokenResponse,
  type WatchRevocationsResponse,
} from "../../gen/tokens/v1/token_service_pb.js";
import { TokenCache } from "../domain/token-cache.js";
import { methodDefinition } from "../server/grpc-adapter.js";

/** How a gateway's client reaches the service and caches its answers. */
export interface IntrospectionClientOptions {
  /** `host:port` of the service's gRPC port. */
  readonly address: string;
  /** The gateway's own token (needs `tokens.introspect`). */
  readonly callerToken: string;
  /** Channel credentials; insecure by default (use TLS across hosts). */
  readonly credentials?: grpc.ChannelCredentials;
  /** Longest an answer is served without the revocation stream confirming it. Default 2 s. */
  readonly stalenessMs?: number;
  /** How long an inactive answer is reused. Default 2 s. */
  readonly negativeTtlMs?: number;
  /** Most cached answers. Default 100,000. */
  readonly maxEntries?: number;
  /** Heartbeat interval asked of the server. Default 500 ms. */
  readonly heartbeatMs?: number;
  /** Deadline of one IntrospectToken call. Default 2 s. */
  readonly deadlineMs?: number;
}

type Callback<T> = (error: grpc.ServiceError | null, value?: T) => void;
interface RawClient extends grpc.Client {
  introspectToken(request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: Callback<IntrospectTokenResponse>): grpc.ClientUnaryCall;
  watchRevocations(request: object, metadata: grpc.Metadata): grpc.ClientReadableStream<WatchRevocationsResponse>;
}

/**
 * A gateway's client of the token service: `introspect(token)` over gRPC
 * with a local cache that the service keeps honest.
 *
 * The client watches `WatchRevocations`: a revoked token's digest evicts it
 * here within milliseconds, a `reset` drops everything, and each heartbeat
 * says how far back the stream is complete. An answer is reused only while
 * `now - max(fetchedAt, confirmed) <= stalenessMs`, so when the stream stalls
 * or breaks, cached answers age out within the bound and calls go to the
 * service until the stream is back. A repeat introspection is one SHA-256 and
 * one Map lookup; only tokens not seen recently cost a network hop.
 *
 * Answers returned from the cache are shared objects: treat them as read-only.
 */
export class IntrospectionClient {
  private readonly client: RawClient;
  private readonly metadata: grpc.Metadata;
  private readonly cache: TokenCache<IntrospectTokenResponse>;
  private readonly deadlineMs: number;
  private readonly heartbeatMs: number;
  private stream: grpc.ClientReadableStream<WatchRevocationsResponse> | undefined;
  /** When the current stream last delivered an event (or was opened). */
  private lastEventAt = 0;
  /** When any event last arrived; 0 before the first. */
  private lastHeardAt = 0;
  private watchdog: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private backoffMs = 100;
  private closed = false;
  private readonly firstHeartbeat: Promise<void>;
  private heard: (() => void) | undefined;

  constructor(options: IntrospectionClientOptions) {
    const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
    for (const method of TokenService.methods) definition[method.localName] = methodDefinition(method);
    const Client = grpc.makeGenericClientConstructor(definition, TokenService.typeName);
    this.client = new Client(options.address, options.credentials ?? grpc.credentials.createInsecure()) as unknown as RawClient;
    this.metadata = new grpc.Metadata();
    this.metadata.set("authorization", `Bearer ${options.callerToken}`);
    this.deadlineMs = options.deadlineMs ?? 2000;
    this.heartbeatMs = options.heartbeatMs ?? 500;
    this.cache = new TokenCache<IntrospectTokenResponse>({
      maxEntries: options.maxEntries ?? 100_000,
      maxBytes: (options.maxEntries ?? 100_000) * 2048,
      stalenessMs: options.stalenessMs ?? 2000,
      negativeTtlMs: options.negativeTtlMs ?? 2000,
      isNegative: (answer) => !answer.active,
      sizeOf: () => 2048,
    });
    this.firstHeartbeat = new Promise((resolve) => (this.heard = resolve));
    this.watch();
    this.watchdog = setInterval(() => this.checkStream(), this.heartbeatMs);
    this.watchdog.unref();
  }

  /** Resolves once the revocation stream has delivered its first heartbeat (the cache is trusted from then on). */
  ready(): Promise<void> {
    return this.firstHeartbeat;
  }

  /**
   * What a token stands for: from the cache when a fresh answer is there,
   * otherwise from the service (and then cached).
   */
  introspect(token: string, clientAddress?: string): Promise<IntrospectTokenResponse> {
    const key = hash("sha256", token, "base64");
    const now = Date.now();
    const hit = this.cache.get(key, now);
    if (hit !== undefined && (!hit.record.active || hit.record.exp === 0n || Number(hit.record.exp) * 1000 > now)) {
      return Promise.resolve(hit.record);
    }
    const fence = this.cache.fence();
    return new Promise((resolve, reject) => {
      this.client.introspectToken({ token, clientAddress: clientAddress ?? "" }, this.metadata, { deadline: now + this.deadlineMs }, (error, answer) => {
        if (error || !answer) {
          reject(error ?? new Error("no answer"));
          return;
        }
        // Legacy JWT revocations are not streamed: never cache their answers.
        // Nor answers that depend on the use (a token bound to networks or
        // to a rate limit of its own): a cached one would skip the check.
        if (answer.tokenKind !== TokenKind.LEGACY_JWT && !usageBound(answer)) this.cache.put(key, answer, fence, now);
        resolve(answer);
      });
    });
  }

  /** Cache counters, and whether the revocation stream is live (heard from within three heartbeats). */
  stats() {
    return { ...this.cache.stats(), streaming: this.stream !== undefined && Date.now() - this.lastHeardAt <= 3 * this.heartbeatMs };
  }

  /** Stops watching and closes the connection. */
  close(): void {
    this.closed = true;
    if (this.watchdog) clearInterval(this.watchdog);
    if (this.retry) clearTimeout(this.retry);
    this.stream?.cancel();
    this.stream = undefined;
    this.client.close();
  }

  private watch(): void {
    if (this.closed) return;
    const stream = this.client.watchRevocations({ heartbeatInterval: durationFromMs(this.heartbeatMs) }, this.metadata);
    this.stream = stream;
    this.lastEventAt = Date.now();
    stream.on("data", (response: WatchRevocationsResponse) => {
      this.lastEventAt = Date.now();
      this.lastHeardAt = this.lastEventAt;
      this.backoffMs = 100;
      const event = response.event;
      switch (event.case) {
        case "revocation":
          this.cache.evict(Buffer.from(event.value.tokenDigest).toString("base64"));
          break;
        case "heartbeat": {
          const ageMs = event.value.confirmedAge ? Number(event.value.confirmedAge.seconds) * 1000 + event.value.confirmedAge.nanos / 1e6 : Number.POSITIVE_INFINITY;
          // The server proves completeness up to `ageMs` before it sent this; measured on our clock, conservatively.
          this.cache.confirmUntil(this.lastEventAt - ageMs);
          this.heard?.();
          break;
        }
        case "reset":
          this.cache.clear();
          break;
      }
    });
    const restart = () => {
      if (this.stream !== stream) return;
      this.stream = undefined;
      this.cache.clear();
      if (this.closed) return;
      this.retry = setTimeout(() => this.watch(), this.backoffMs);
      this.retry.unref();
      this.backoffMs = Math.min(this.backoffMs * 2, 5000);
    };
    stream.on("error", restart);
    stream.on("end", restart);
  }

  /** A stream that has gone quiet is as good as broken: cancel it and start over. */
  private checkStream(): void {
    const stream = this.stream;
    if (stream !== undefined && Date.now() - this.lastEventAt > 3 * this.heartbeatMs) {
      stream.cancel();
    }
  }
}

/** Whether an answer depends on who uses the token, how often, or from where: never cached. */
function usageBound(answer: IntrospectTokenResponse): boolean {
  return (
    answer.allowedNetworks.length > 0 ||
    answer.rateLimit !== undefined ||
    answer.reason === InactiveReason.NETWORK_NOT_ALLOWED ||
    answer.reason === InactiveReason.TOKEN_RATE_LIMITED
  );
}
