/**
 * Metrics under `WORKERS=N`. Every worker counts into its own registry, and
 * the shared HTTP port hands a scrape to whichever worker accepts it, which
 * alone would show Prometheus one random worker per scrape (counters jumping
 * back and forth). So a worker answering `/metrics` asks the primary, and the
 * primary gathers every worker's registry (prom-client's `AggregatorRegistry`,
 * over the cluster IPC channel) and sums them: one replica, one exposition.
 * Gauges are summed too (cache entries of all workers, workers listening);
 * `token_service_info` keeps the first worker's.
 */
import cluster from "node:cluster";
import { AggregatorRegistry, type Registry } from "prom-client";
import type { MetricsSource } from "./metrics-route.js";

const REQUEST = "token-service:metrics-request";
const ANSWER = "token-service:metrics-answer";

/** How long a worker waits for the primary (which waits up to 5 s for the workers). */
const ANSWER_TIMEOUT_MS = 6_000;

interface MetricsRequest {
  readonly type: typeof REQUEST;
  readonly id: number;
}

interface MetricsAnswer {
  readonly type: typeof ANSWER;
  readonly id: number;
  readonly body?: string;
  readonly error?: string;
}

function isRequest(message: unknown): message is MetricsRequest {
  return typeof message === "object" && message !== null && (message as { type?: unknown }).type === REQUEST;
}

function isAnswer(message: unknown): message is MetricsAnswer {
  return typeof message === "object" && message !== null && (message as { type?: unknown }).type === ANSWER;
}

/** In the primary: answers workers' requests for the cluster-wide exposition. Call once, before forking. */
export function serveClusterMetrics(): void {
  const aggregator = new AggregatorRegistry();
  cluster.on("message", (worker, message: unknown) => {
    if (!isRequest(message)) return;
    const reply = (answer: Omit<MetricsAnswer, "type" | "id">) => {
      if (worker.isConnected()) worker.send({ type: ANSWER, id: message.id, ...answer } satisfies MetricsAnswer);
    };
    aggregator.clusterMetrics().then(
      (body) => reply({ body }),
      (err: unknown) => reply({ error: err instanceof Error ? err.message : String(err) }),
    );
  });
}

/**
 * In a worker: offers `registry` to the primary's gatherings and returns the
 * source `/metrics` serves, the whole cluster's sum, asked of the primary.
 */
export function clusterMetricsSource(registry: Registry): MetricsSource {
  AggregatorRegistry.setRegistries([registry]);
  new AggregatorRegistry(); // installs the worker's listener for the primary's gathering requests
  let next = 0;
  const waiting = new Map<number, { resolve: (body: string) => void; reject: (err: Error) => void; timer: NodeJS.Timeout }>();
  process.on("message", (message: unknown) => {
    if (!isAnswer(message)) return;
    const pending = waiting.get(message.id);
    if (pending === undefined) return;
    waiting.delete(message.id);
    clearTimeout(pending.timer);
    if (message.body !== undefined) pending.resolve(message.body);
    else pending.reject(new Error(`the primary could not gather the workers' metrics: ${message.error ?? "no answer"}`));
  });
  return {
    exposition: () =>
      new Promise((resolve, reject) => {
        const id = next++;
        const timer = setTimeout(() => {
          waiting.delete(id);
          reject(new Error("the primary did not answer the metrics request in time"));
        }, ANSWER_TIMEOUT_MS);
        waiting.set(id, { resolve: (body) => resolve({ contentType: registry.contentType, body }), reject, timer });
        process.send!({ type: REQUEST, id } satisfies MetricsRequest);
      }),
  };
}
