/**
 * Client library figures: the cost of a repeat introspection answered by the
 * gateway client's own cache, and the time from RevokeToken on replica A to
 * eviction in a client watching replica B.
 */
import { IntrospectionClient } from "../src/client/introspection-client.js";
import type { ClientBenchContext } from "./client-bench-api.js";

/** Runs the client measurements within `ctx.budgetMs`. */
export async function run(ctx: ClientBenchContext): Promise<Record<string, number>> {
  const deadline = Date.now() + ctx.budgetMs - 2_000;
  // Staleness far out: only the pushed revocation can explain a prompt eviction.
  const client = new IntrospectionClient({ address: ctx.replicas[1].grpcAddress, callerToken: ctx.callerToken, stalenessMs: 600_000, heartbeatMs: 200 });
  try {
    await client.ready();

    // Repeat introspection: warm the cache with a few hundred tokens, then time hits.
    const tokens = ctx.tokens.slice(0, 500);
    for (const token of tokens) await client.introspect(token);
    const rounds = 200_000;
    for (let i = 0; i < 20_000; i++) await client.introspect(tokens[i % tokens.length]!);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < rounds; i++) await client.introspect(tokens[i % tokens.length]!);
    const repeatUs = Number(process.hrtime.bigint() - t0) / 1000 / rounds;
    ctx.log(`client: repeat introspection ${repeatUs.toFixed(2)} µs`);

    // Revocation to eviction: issue, cache in the client, revoke on A, spin until the client no longer has it.
    const lags: number[] = [];
    for (let i = 0; i < 200 && Date.now() < deadline; i++) {
      const token = await ctx.issue();
      if (!(await client.introspect(token)).active) throw new Error("a fresh token was not active");
      const start = performance.now();
      const revoking = ctx.revoke(token);
      // A cached answer is returned synchronously-resolved; once evicted the client asks B, which says revoked.
      for (;;) {
        const answer = await client.introspect(token);
        if (!answer.active) break;
        if (performance.now() - start > 5_000) throw new Error("revocation did not reach the client within 5 s");
        await new Promise((resolve) => setImmediate(resolve));
      }
      lags.push(performance.now() - start);
      await revoking;
    }
    lags.sort((a, b) => a - b);
    const pct = (p: number) => lags[Math.min(lags.length - 1, Math.floor(p * lags.length))]!;
    ctx.log(`client: revoke→eviction n=${lags.length} p50 ${pct(0.5).toFixed(1)} ms p99 ${pct(0.99).toFixed(1)} ms`);
    return {
      repeat_introspection_us: Math.round(repeatUs * 100) / 100,
      revoke_to_eviction_n: lags.length,
      revoke_to_eviction_p50_ms: Math.round(pct(0.5) * 10) / 10,
      revoke_to_eviction_p99_ms: Math.round(pct(0.99) * 10) / 10,
    };
  } finally {
    client.close();
  }
}
