import cluster, { type Worker } from "node:cluster";
import type { Logger as PinoLogger } from "pino";
import type { Config } from "./config.js";
import { serveClusterMetrics } from "./observability/cluster-metrics.js";

/**
 * The primary of `WORKERS=N`: prepares the store once, forks N workers that
 * each run the whole service (both ports are shared by node:cluster; each
 * worker has its own cache and its own revocation listener, so a revocation
 * reaches every worker the same way it reaches every replica), replaces a
 * worker that dies, and on SIGTERM/SIGINT stops them all gracefully.
 */
export async function runPrimary(config: Config, log: PinoLogger, prepare: () => Promise<void>): Promise<void> {
  await prepare();
  if (config.metricsEnabled) serveClusterMetrics(); // workers' /metrics asks here for the sum of all workers
  let stopping = false;
  const fork = (): Worker => cluster.fork();
  for (let i = 0; i < config.workers; i++) fork();
  let restarts = 0;
  cluster.on("exit", (worker, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) {
        log.info({}, "all workers stopped");
        process.exit(0);
      }
      return;
    }
    restarts++;
    log.error({ worker: worker.process.pid, code, signal, restarts }, "worker died; starting a new one");
    // Back off when workers keep dying (a broken configuration, a store that refuses us).
    setTimeout(fork, Math.min(100 * 2 ** Math.min(restarts, 6), 5_000)).unref();
  });
  log.info({ workers: config.workers }, "cluster primary started");
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      if (stopping) process.exit(130);
      stopping = true;
      log.info({ signal }, "stopping workers");
      for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill("SIGTERM");
      setTimeout(() => process.exit(1), config.shutdownGraceMs + 5_000).unref();
    });
  }
}
