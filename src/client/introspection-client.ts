import { hash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import {
  InactiveReason,
  IntrospectTokenResponseSchema,
  TokenKind,
  TokenService,
  type IntrospectTokenResponse,
  type WatchRevocationsResponse,
} from "../../gen/tokens/v1/token_service_pb.js";
import { AnswerCache } from "./answer-cache.js";
import { IntrospectionError, ServiceBusyError, retryDelayMs } from "./errors.js";
import { grpcService } from "./grpc-methods.js";

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
  /**
   * Most revocations remembered from the stream, to check answers from
   * replicas that lag behind it. Default 100,000. An answer from a replica
   * further behind than this memory reaches is passed on but not cached.
   */
  readonly maxRememberedRevocations?: number;
  /**
   * Longest pause honoured when the service answers `RESOURCE_EXHAUSTED`
   * with `grpc-retry-pushback-ms` or `retry-after`. Default 60 s. Without
   * either, the client pauses 1 s.
   */
  readonly maxPushbackMs?: number;
}

/** What the client says about a token it has seen revoked on its stream, whatever a lagging replica answers. */
const REVOKED_ANSWER: IntrospectTokenResponse = Object.freeze(
  create(IntrospectTokenResponseSchema, { active: false, reason: InactiveReason.REVOKED, message: "The token has been revoked.", tokenKind: TokenKind.OPAQUE }),
) as IntrospectTokenResponse;

/** The same for a legacy JWT whose jti the stream has brought. */
const REVOKED_LEGACY_ANSWER: IntrospectTokenResponse = Object.freeze(
  create(IntrospectTokenResponseSchema, { active: false, reason: InactiveReason.REVOKED, message: "The token has been revoked.", tokenKind: TokenKind.LEGACY_JWT }),
) as IntrospectTokenResponse;

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
 * Behind a load balancer the unary calls and the stream may reach different
 * replicas, and one may lag behind another. Every answer carries the
 * revocation log position its replica had applied; the stream carries the
 * positions of revocations. The client remembers the revocations it heard
 * (`maxRememberedRevocations`), and for an answer from a replica at
 * position P:
 * - a token heard revoked is answered revoked, whatever the replica said
 *   (revocation is never undone), and not cached;
 * - otherwise the answer is checked against every revocation heard after P,
 *   so the stream's later heartbeats may keep confirming it; if P is older
 *   than the memory reaches, it cannot be checked and is not cached;
 * - its age counts from when its replica last confirmed its own channel
 *   (`revocation_confirmed_at`), not from when it arrived.
 * After a break the stream resumes from the last position it saw, so the
 * revocations missed evict just those tokens instead of the whole cache.
 *
 * Legacy JWT answers are cached too (until their `exp`, never on or after
 * the sunset date they carry, nor before their `nbf`). The service knows a
 * legacy JWT only by its `jti`: its revocations arrive as a `Revocation` with
 * no digest and the jti in `token_id`, and the client keeps an index
 * jti → digests of the answers it holds to evict them all. A legacy JWT
 * without `jti` cannot be revoked one by one, here or anywhere.
 *
 * Answers returned from the cache are shared objects: treat them as read-only.
 */
export class IntrospectionClient {
  private readonly client: RawClient;
  private readonly metadata: grpc.Metadata;
  private readonly cache: AnswerCache<IntrospectTokenResponse>;
  private readonly maxPushbackMs: number;
  /** No call is sent to the service before this time (ms since the epoch): it asked us to back off. */
  private busyUntil = 0;
  /** How many calls were refused locally while backing off. */
  private refusedWhileBusy = 0;
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
  /** Highest revocation log position the stream has brought; undefined before the first heartbeat. */
  private position: number | undefined;
  /**
   * Revocations heard on the stream: digest key → position, oldest first.
   * Complete for every position above `knownAfter`.
   */
  private readonly revoked = new Map<string, number>();
  private readonly maxRemembered: number;
  /** Legacy jtis heard revoked on the stream → position, oldest first; complete above `knownAfter` like `revoked`. */
  private readonly revokedJtis = new Map<string, number>();
  /**
   * jti → digest keys of the legacy answers cached for it, oldest first, so a
   * streamed jti revocation finds them. At most `maxEntries` jtis: beyond it
   * the oldest jti's answers are evicted with it (never left unfindable).
   */
  private readonly legacyKeys = new Map<string, string[]>();
  private readonly maxLegacyJtis: number;
  /**
   * Revocations at or below this position may have been missed (before the
   * stream started or reset, or forgotten from `revoked`). Infinity until a
   * heartbeat gives the stream a position.
   */
  private knownAfter = Number.POSITIVE_INFINITY;

  constructor(options: IntrospectionClientOptions) {
    const Client = grpc.makeGenericClientConstructor(grpcService(TokenService), TokenService.typeName);
    this.client = new Client(options.address, options.credentials ?? grpc.credentials.createInsecure()) as unknown as RawClient;
    this.metadata = new grpc.Metadata();
    this.metadata.set("authorization", `Bearer ${options.callerToken}`);
    this.deadlineMs = options.deadlineMs ?? 2000;
    this.heartbeatMs = options.heartbeatMs ?? 500;
    this.maxRemembered = options.maxRememberedRevocations ?? 100_000;
    this.maxPushbackMs = options.maxPushbackMs ?? 60_000;
    this.maxLegacyJtis = options.maxEntries ?? 100_000;
    this.cache = new AnswerCache<IntrospectTokenResponse>({
      maxEntries: options.maxEntries ?? 100_000,
      stalenessMs: options.stalenessMs ?? 2000,
      negativeTtlMs: options.negativeTtlMs ?? 2000,
      isNegative: (answer) => !answer.active,
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
   *
   * Rejects with an {@link IntrospectionError} (its `code` is the gRPC status)
   * when the service cannot answer: treat that as "unavailable", never as
   * "inactive". When the service refused with `RESOURCE_EXHAUSTED`, the
   * error is a {@link ServiceBusyError}, and until its `retryAfterMs` has
   * passed every call that would reach the service is refused the same way
   * at once, without sending it (cached answers are still served).
   */
  introspect(token: string, clientAddress?: string): Promise<IntrospectTokenResponse> {
    const key = hash("sha256", token, "base64");
    const now = Date.now();
    const hit = this.cache.get(key, now);
    if (hit !== undefined && (!hit.active || ((hit.exp === 0n || Number(hit.exp) * 1000 > now) && (hit.tokenKind !== TokenKind.LEGACY_JWT || legacyServable(hit, now))))) {
      return Promise.resolve(hit);
    }
    if (now < this.busyUntil) {
      this.refusedWhileBusy++;
      return Promise.reject(new ServiceBusyError(this.busyUntil - now, true));
    }
    const fence = this.cache.fence();
    return new Promise((resolve, reject) => {
      this.client.introspectToken({ token, clientAddress: clientAddress ?? "" }, this.metadata, { deadline: now + this.deadlineMs }, (error, answer) => {
        if (error || !answer) {
          reject(this.failure(error));
          return;
        }
        resolve(this.accept(key, answer, fence, now));
      });
    });
  }

  /**
   * Checks a replica's answer against what the stream has told us, caches it
   * when it can be trusted for longer, and returns what to answer.
   */
  private accept(key: string, answer: IntrospectTokenResponse, fence: number, sentAt: number): IntrospectTokenResponse {
    // Revocation is never undone: a replica saying active has not heard of it yet.
    if (answer.active && this.revoked.has(key)) return REVOKED_ANSWER;
    const legacy = answer.tokenKind === TokenKind.LEGACY_JWT;
    // A legacy JWT is revoked by jti: the stream names the jti (no digest).
    if (legacy && answer.active && answer.jti !== "" && this.revokedJtis.has(answer.jti)) return REVOKED_LEGACY_ANSWER;
    // Answers that depend on the use (a token bound to networks or to a
    // rate limit of its own) are never cached: a cached one would skip the check.
    if (usageBound(answer)) return answer;
    // (A server that predates positions says 0 everywhere, the stream too: all answers pass.)
    const replicaPosition = Number(answer.revocationPosition);
    if (answer.active && replicaPosition < this.knownAfter) {
      // Revocations between the replica's position and ours cannot all be checked: pass it on, keep nothing.
      return answer;
    }
    // The answer is as old as its replica's last proof, not as new as its arrival.
    const confirmedAt = answer.revocationConfirmedAt === undefined ? sentAt : Math.min(sentAt, timestampMs(answer.revocationConfirmedAt));
    // Legacy answers are kept only when the jti can be found again (active, with a jti) or
    // cannot be revoked at all (no jti); inactive ones (expired, sunset, refused) are kept briefly like any.
    if (legacy && answer.active && answer.jti !== "") {
      if (fence !== this.cache.fence()) return answer;
      this.cache.put(key, answer, fence, confirmedAt);
      this.indexJti(answer.jti, key);
      return answer;
    }
    this.cache.put(key, answer, fence, confirmedAt);
    return answer;
  }

  /** Turns a failed call into the error a caller sees, and starts backing off when the service asked for it. */
  private failure(error: grpc.ServiceError | null): IntrospectionError {
    if (error === null) return new IntrospectionError("the token service sent no answer", grpc.status.INTERNAL);
    if (error.code === grpc.status.RESOURCE_EXHAUSTED) {
      const waitMs = Math.min(retryDelayMs(error.metadata) ?? 1000, this.maxPushbackMs);
      this.busyUntil = Math.max(this.busyUntil, Date.now() + waitMs);
      return new ServiceBusyError(waitMs, false, error);
    }
    return new IntrospectionError(`the token service did not answer: ${error.details || grpc.status[error.code]}`, error.code, error);
  }

  /**
   * Cache counters, whether the revocation stream is live (heard from within
   * three heartbeats), its position, and back-off state (`busyForMs` left of a
   * pause the service asked for, `refusedWhileBusy` calls not sent because of it).
   */
  stats() {
    const now = Date.now();
    return {
      ...this.cache.stats(),
      busyForMs: Math.max(0, this.busyUntil - now),
      refusedWhileBusy: this.refusedWhileBusy,
      streaming: this.stream !== undefined && now - this.lastHeardAt <= 3 * this.heartbeatMs,
      position: this.position,
      rememberedRevocations: this.revoked.size,
    };
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
    // Resume where the last stream left off: the service sends what we missed (or a reset if it cannot).
    const stream = this.client.watchRevocations(
      { heartbeatInterval: durationFromMs(this.heartbeatMs), ...(this.position !== undefined && this.position > 0 ? { resumeAfterPosition: BigInt(this.position) } : {}) },
      this.metadata,
    );
    this.stream = stream;
    this.lastEventAt = Date.now();
    stream.on("data", (response: WatchRevocationsResponse) => {
      this.lastEventAt = Date.now();
      this.lastHeardAt = this.lastEventAt;
      this.backoffMs = 100;
      const event = response.event;
      switch (event.case) {
        case "revocation": {
          if (event.value.tokenDigest.length === 0) {
            // A legacy JWT's jti (the service knows it by nothing else).
            this.legacyRevoked(event.value.tokenId, Number(event.value.position));
            break;
          }
          const key = Buffer.from(event.value.tokenDigest).toString("base64");
          this.cache.evict(key);
          this.remember(key, Number(event.value.position));
          break;
        }
        case "heartbeat": {
          const position = Number(event.value.position);
          if (this.position === undefined || position > this.position) this.position = position;
          // After a start or a reset, knowledge begins here.
          if (this.knownAfter === Number.POSITIVE_INFINITY) this.knownAfter = position;
          const ageMs = event.value.confirmedAge ? Number(event.value.confirmedAge.seconds) * 1000 + event.value.confirmedAge.nanos / 1e6 : Number.POSITIVE_INFINITY;
          // The server proves completeness up to `ageMs` before it sent this; measured on our clock, conservatively.
          this.cache.confirmUntil(this.lastEventAt - ageMs);
          this.heard?.();
          break;
        }
        case "reset":
          // What was missed is unknown: drop every answer, and check none against the past until the next heartbeat.
          this.cache.clear();
          this.legacyKeys.clear();
          this.knownAfter = Number.POSITIVE_INFINITY;
          // The service could not resume from our position (too old, or not its log): take its next one.
          this.position = undefined;
          break;
      }
    });
    const restart = (error?: grpc.ServiceError) => {
      if (this.stream !== stream) return;
      this.stream = undefined;
      // The cache is kept: without heartbeats its answers age out within the
      // bound, and the next stream resumes from our position with what we missed.
      if (this.closed) return;
      let delayMs = this.backoffMs;
      // Too many streams (or calls) for this caller: come back when the service says, not sooner.
      if (error?.code === grpc.status.RESOURCE_EXHAUSTED) delayMs = Math.max(delayMs, Math.min(retryDelayMs(error.metadata) ?? 1000, this.maxPushbackMs));
      this.retry = setTimeout(() => this.watch(), delayMs);
      this.retry.unref();
      this.backoffMs = Math.min(this.backoffMs * 2, 5000);
    };
    stream.on("error", restart);
    stream.on("end", () => restart());
  }

  /** Remembers a revocation heard on the stream, forgetting the oldest beyond the memory's bound. */
  private remember(key: string, position: number): void {
    if (position > 0 && (this.position === undefined || position > this.position)) this.position = position;
    this.revoked.delete(key);
    this.revoked.set(key, position);
    if (this.revoked.size > this.maxRemembered) {
      const [oldest, at] = this.revoked.entries().next().value!;
      this.revoked.delete(oldest);
      if (at > this.knownAfter) this.knownAfter = at;
    }
  }

  /** A legacy jti was revoked: evict every answer cached for it and remember it, like `remember` for a digest. */
  private legacyRevoked(jti: string, position: number): void {
    const keys = this.legacyKeys.get(jti);
    // Always evict (an empty key if none): fences calls in flight that may bring this jti back.
    if (keys === undefined) this.cache.evict("");
    else for (const key of keys) this.cache.evict(key);
    this.legacyKeys.delete(jti);
    if (position > 0 && (this.position === undefined || position > this.position)) this.position = position;
    this.revokedJtis.delete(jti);
    this.revokedJtis.set(jti, position);
    if (this.revokedJtis.size > this.maxRemembered) {
      const [oldest, at] = this.revokedJtis.entries().next().value!;
      this.revokedJtis.delete(oldest);
      if (at > this.knownAfter) this.knownAfter = at;
    }
  }

  /** Records that `key` holds a legacy answer for `jti`; beyond the bound, the oldest jti's answers go. */
  private indexJti(jti: string, key: string): void {
    const keys = this.legacyKeys.get(jti);
    if (keys === undefined) this.legacyKeys.set(jti, [key]);
    else if (!keys.includes(key)) {
      // A few re-signed copies of one jti at most; a flood of copies keeps the newest.
      if (keys.length >= 16) this.cache.evict(keys.shift()!);
      keys.push(key);
    }
    if (this.legacyKeys.size > this.maxLegacyJtis) {
      const [oldest, oldKeys] = this.legacyKeys.entries().next().value!;
      this.legacyKeys.delete(oldest);
      for (const k of oldKeys) this.cache.evict(k);
    }
  }

  /** A stream that has gone quiet is as good as broken: cancel it and start over. */
  private checkStream(): void {
    const stream = this.stream;
    if (stream !== undefined && Date.now() - this.lastEventAt > 3 * this.heartbeatMs) {
      stream.cancel();
    }
  }
}

/**
 * Whether a cached active legacy answer may still be served at `nowMs`: not
 * on or after the sunset date it carries (the service then answers
 * LEGACY_JWT_SUNSET), nor before its `nbf`. Its `exp` is checked with every answer's.
 */
function legacyServable(answer: IntrospectTokenResponse, nowMs: number): boolean {
  const sunset = answer.deprecation?.sunsetTime;
  if (sunset !== undefined && timestampMs(sunset) <= nowMs) return false;
  return Number(answer.nbf) * 1000 <= nowMs + 1000;
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
