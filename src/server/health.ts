import { Code, ConnectError } from "@connectrpc/connect";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/health/v1/health_pb.js";
import type { ServiceRegistration } from "./context.js";

/** Options for {@link createHealthService}. */
export interface HealthOptions {
  /**
   * Whether the service can do its job (typically: the store answers).
   * A rejection, or no answer within `checkTimeoutMs`, counts as false.
   */
  readonly check: () => Promise<boolean>;
  /** Service names besides "" (the whole server) that clients may ask about. */
  readonly services: readonly string[];
  /** How long `check` may take before the answer is NOT_SERVING. Default 1000. */
  readonly checkTimeoutMs?: number;
  /** How long an answer is reused, so a storm of probes costs one check. Default 1000. */
  readonly cacheMs?: number;
  /** How often a Watch re-checks, to send a change. Default 5000. */
  readonly watchIntervalMs?: number;
}

/** The health service, plus the switch `main.ts` flips when it starts shutting down. */
export interface HealthService extends ServiceRegistration<typeof Health> {
  /**
   * From now on every known service is NOT_SERVING, so load balancers stop
   * sending new calls while in-flight ones finish. Watchers are told at once.
   */
  setShuttingDown(): void;
}

/**
 * grpc.health.v1.Health (https://github.com/grpc/grpc/blob/master/doc/health-checking.md),
 * for Kubernetes gRPC probes, grpc_health_probe and load balancers:
 *
 * - Check answers SERVING only while `check()` resolves true in time;
 *   an unknown service is NOT_FOUND, as the protocol requires.
 * - Watch sends the status at once and again on every change; for an unknown
 *   service it sends SERVICE_UNKNOWN and keeps the stream open (the protocol
 *   again). It ends when the call's signal aborts, with that reason
 *   (UNAVAILABLE when the server shuts down).
 * - List answers every known service.
 */
export function createHealthService(options: HealthOptions): HealthService {
  const known = new Set(["", ...options.services]);
  const checkTimeoutMs = options.checkTimeoutMs ?? 1000;
  const cacheMs = options.cacheMs ?? 1000;
  const watchIntervalMs = options.watchIntervalMs ?? 5000;

  let shuttingDown = false;
  let cached: { serving: boolean; at: number } | undefined;
  let inFlight: Promise<boolean> | undefined;
  /** Wakes sleeping watchers when the status is forced to change. */
  const wakers = new Set<() => void>();
  /**
   * Bumped on every forced change. A watcher that was between two messages
   * (not yet asleep, so not woken) sees the bump and re-checks at once.
   */
  let epoch = 0;

  const probe = async (): Promise<boolean> => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), checkTimeoutMs);
    });
    try {
      // Through then(), so a check that throws synchronously also counts as false.
      const answer = Promise.resolve().then(options.check).then((ok) => ok === true, () => false);
      return await Promise.race([answer, timeout]);
    } finally {
      clearTimeout(timer);
    }
  };

  /** The whole server's status: cached, and shared by concurrent callers. */
  const serving = async (): Promise<boolean> => {
    if (shuttingDown) return false;
    if (cached !== undefined && performance.now() - cached.at < cacheMs) return cached.serving;
    inFlight ??= probe().then((ok) => {
      cached = { serving: ok, at: performance.now() };
      inFlight = undefined;
      return ok;
    });
    const ok = await inFlight;
    return ok && !shuttingDown;
  };

  const statusOf = async (service: string): Promise<Status> => {
    if (!known.has(service)) return Status.SERVICE_UNKNOWN;
    return (await serving()) ? Status.SERVING : Status.NOT_SERVING;
  };

  /** Resolves after `ms`, or earlier when the status was forced since `since`, or when the call ends. */
  const sleep = (ms: number, ctx: HandlerContext, since: number): Promise<void> =>
    new Promise((resolve) => {
      if (epoch !== since || ctx.signal.aborted) {
        resolve();
        return;
      }
      const done = () => {
        clearTimeout(timer);
        wakers.delete(done);
        ctx.signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      wakers.add(done);
      ctx.signal.addEventListener("abort", done);
    });

  const impl: ServiceImpl<typeof Health> = {
    async check(request) {
      if (!known.has(request.service)) {
        throw new ConnectError(`unknown service "${request.service}"`, Code.NotFound);
      }
      return { status: await statusOf(request.service) };
    },

    async *watch(request, ctx) {
      let last: Status | undefined;
      while (!ctx.signal.aborted) {
        const since = epoch;
        const status = await statusOf(request.service);
        if (ctx.signal.aborted) break;
        if (status !== last) {
          last = status;
          yield { status };
        }
        await sleep(watchIntervalMs, ctx, since);
      }
      // End with the reason (UNAVAILABLE when the server shuts down), not OK:
      // a client should reconnect, not conclude the watch is over.
      throw ConnectError.from(ctx.signal.reason, Code.Canceled);
    },

    async list() {
      const status = (await serving()) ? Status.SERVING : Status.NOT_SERVING;
      const statuses: Record<string, { status: Status }> = {};
      for (const name of known) statuses[name] = { status };
      return { statuses };
    },
  };

  return {
    service: Health,
    impl,
    setShuttingDown() {
      shuttingDown = true;
      epoch++;
      for (const wake of [...wakers]) wake();
    },
  };
}
