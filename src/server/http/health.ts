import type { HttpRequest, HttpResponse } from "../http-server.js";
import { sendJson } from "./io.js";

/** What readiness is made of. */
export interface ReadinessChecks {
  /** Resolves when the store answers a trivial query. */
  readonly store: () => Promise<void>;
  /** Whether the revocation channel is listening (replica caches depend on it). */
  readonly revocationChannel: () => boolean;
  /** Longest a store check may take before it counts as failed. Default 1000 ms (a Kubernetes probe's default timeout is 1 s). */
  readonly timeoutMs?: number;
  /** How long a store check's outcome is reused, so a storm of probes costs one query. Default 500 ms. */
  readonly cacheMs?: number;
}

const NO_STORE = { "cache-control": "no-store" } as const;

/** `GET /healthz`: liveness. The process runs and serves HTTP; nothing else is checked, so a store outage never gets a replica restarted. */
export function healthz(req: HttpRequest, res: HttpResponse): void {
  sendJson(req, res, 200, { status: "ok" }, NO_STORE);
}

/**
 * `GET /readyz`: readiness. `200` when the store answers, the migrations are
 * applied and the revocation channel is listening; otherwise `503` naming
 * each check's state, so a load balancer stops sending calls this replica
 * would answer `UNAVAILABLE` or serve from an unconfirmed cache.
 */
export function readiness(checks: ReadinessChecks): (req: HttpRequest, res: HttpResponse) => Promise<void> {
  const timeoutMs = checks.timeoutMs ?? 1000;
  const cacheMs = checks.cacheMs ?? 500;
  let last: { at: number; outcome: Promise<"ok" | "unavailable" | "timeout"> } | undefined;

  const storeCheck = () => {
    const now = Date.now();
    if (last === undefined || now - last.at >= cacheMs) {
      let timer: NodeJS.Timeout | undefined;
      const outcome = Promise.race([
        checks.store().then(() => "ok" as const, () => "unavailable" as const),
        new Promise<"timeout">((resolve) => {
          timer = setTimeout(() => resolve("timeout"), timeoutMs);
          timer.unref();
        }),
      ]).finally(() => clearTimeout(timer));
      last = { at: now, outcome };
    }
    return last.outcome;
  };

  return async (req, res) => {
    const store = await storeCheck();
    const channel = checks.revocationChannel() ? "ok" : "down";
    // The service applies migrations before it starts listening, so a server
    // that answers has them; the check is reported for completeness.
    const results = { store, migrations: "ok", revocation_channel: channel };
    const ready = store === "ok" && channel === "ok";
    sendJson(req, res, ready ? 200 : 503, { status: ready ? "ready" : "not_ready", checks: results }, NO_STORE);
  };
}
