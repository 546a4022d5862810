/**
 * HOOK FOR CLIENT LIBRARY MEASUREMENTS.
 *
 * The client library (src/client/) is measured by an optional module,
 * `bench/client-bench.ts`, which the runner calls when it exists:
 *
 *   import type { ClientBenchContext } from "./client-bench-api.js";
 *   export async function run(ctx: ClientBenchContext): Promise<Record<string, number>> { … }
 *
 * It should return figures such as `repeat_introspection_us` (cost of a
 * repeated introspection served by the client's cache, µs) and
 * `revoke_to_eviction_p50_ms` / `revoke_to_eviction_p99_ms` (time from
 * RevokeToken to eviction in the client's cache). Each key is printed as a
 * row of the table and written to latest.json under `client`. It runs in
 * the runner's process (pinned to the load core) while two replicas are up,
 * and must finish within `budgetMs`.
 */

/** One running replica of the service. */
export interface ReplicaAddress {
  /** `127.0.0.1:<port>` of the grpc-js server. */
  readonly grpcAddress: string;
  /** `http://127.0.0.1:<port>` of the Connect server. */
  readonly connectBaseUrl: string;
}

/** What the client benchmark is given. */
export interface ClientBenchContext {
  /** Replica A and replica B, on one PostgreSQL database (revoke on one, watch the other). */
  readonly replicas: readonly [ReplicaAddress, ReplicaAddress];
  /** A gateway's token: `tokens.introspect` only. */
  readonly callerToken: string;
  /** An admin token: may issue and revoke anything. */
  readonly adminToken: string;
  /** Active tokens, already stored (not yet cached by the client). */
  readonly tokens: readonly string[];
  /** Issues a fresh active token through replica A. */
  issue(): Promise<string>;
  /** Revokes a token through replica A; resolves once the revocation is durable. */
  revoke(token: string): Promise<void>;
  /** How long the module may take, in ms. */
  readonly budgetMs: number;
  /** Prints a progress line. */
  log(line: string): void;
}

/** The shape of `bench/client-bench.ts`. */
export interface ClientBenchModule {
  run(ctx: ClientBenchContext): Promise<Record<string, number>>;
}
