import { AggregatorRegistry, Counter, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { HotCounter, HotHistogram } from "../../src/observability/hot-metrics.js";
import { requestIdFrom } from "../../src/server/request-id.js";
import { RevocationChannel, type ListenSessionFactory } from "../../src/storage/revocation-channel.js";

const quiet = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

describe("hot metrics", () => {
  it("expose exactly what prom-client's own histogram exposes for the same observations", async () => {
    const buckets = [0.001, 0.01, 0.1, 1];
    const values = [0, 0.0005, 0.001, 0.002, 0.05, 0.1, 0.7, 3, 12];
    const ours = new Registry();
    const theirs = new Registry();
    const hot = new HotHistogram({ name: "d_seconds", help: "h", buckets }, ours);
    const reference = new Histogram({ name: "d_seconds", help: "h", buckets, labelNames: ["method", "code"], registers: [theirs] });
    for (const [method, code, only] of [["A", "OK", values], ["B", "INTERNAL", values.slice(2, 5)]] as const) {
      const row = hot.row({ method, code });
      for (const v of only) {
        row.observe(v);
        reference.observe({ method, code }, v);
      }
    }
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  it("count per row, start at zero, and reset", async () => {
    const registry = new Registry();
    const hot = new HotCounter({ name: "n_total", help: "h" }, registry);
    const a = hot.row({ kind: "a" });
    hot.row({ kind: "b" });
    a.inc();
    a.inc();
    expect(await registry.metrics()).toBe('# HELP n_total h\n# TYPE n_total counter\nn_total{kind="a"} 2\nn_total{kind="b"} 0\n');
    registry.resetMetrics();
    expect(a.value).toBe(0);
  });

  it("sum across workers the way prom-client aggregates a cluster", async () => {
    const worker = async (n: number) => {
      const registry = new Registry();
      const hist = new HotHistogram({ name: "d_seconds", help: "h", buckets: [1] }, registry);
      const counter = new HotCounter({ name: "n_total", help: "h" }, registry);
      const row = hist.row({ code: "OK" });
      const c = counter.row({ kind: "a" });
      for (let i = 0; i < n; i++) {
        row.observe(0.5);
        c.inc();
      }
      return registry.getMetricsAsJSON();
    };
    const text = await AggregatorRegistry.aggregate([await worker(2), await worker(3)]).metrics();
    expect(text).toContain('d_seconds_bucket{le="1",code="OK"} 5');
    expect(text).toContain('d_seconds_count{code="OK"} 5');
    expect(text).toContain('n_total{kind="a"} 5');
  });

  it("leave prom-client's own metrics alone in the same registry", async () => {
    const registry = new Registry();
    new Counter({ name: "plain_total", help: "h", registers: [registry] }).inc(3);
    new HotCounter({ name: "n_total", help: "h" }, registry).row({}).inc();
    const text = await registry.metrics();
    expect(text).toContain("plain_total 3");
    expect(text).toContain("n_total 1");
  });
});

describe("request ids", () => {
  it.each(["a", "gw-req.0001_A", "x".repeat(128), "0b7e1c2a-4d5e-4f60-8a9b-c0d1e2f3a4b5"])("keeps the caller's %s", (id) => {
    expect(requestIdFrom(id)).toBe(id);
  });

  it.each([
    ["absent", undefined],
    ["empty", ""],
    ["too long", "x".repeat(129)],
    ["a space", "a b"],
    ["a quote", 'a"b'],
    ["a newline", "a\nb"],
    ["non-ASCII", "ä"],
    ["a binary value", Buffer.from("abc")],
    ["a repeated header", ["a", "b"]],
  ])("replaces one that is %s with a fresh one", (_case, given) => {
    const first = requestIdFrom(given);
    const second = requestIdFrom(given);
    expect(first).toMatch(/^[A-Za-z0-9_-]{12}\.[0-9a-z]+$/);
    expect(second).not.toBe(first);
  });
});

describe("revocation notices", () => {
  /** A channel on a fake session; returns what its `revoked` handler received. */
  async function received(payloads: string[]): Promise<unknown[][]> {
    const seen: unknown[][] = [];
    let deliver: (payload: string) => void = () => undefined;
    const open: ListenSessionFactory = async (onPayload) => {
      deliver = onPayload;
      return { notify: async () => undefined, close: async () => undefined };
    };
    const channel = new RevocationChannel(
      open,
      { revoked: (...args) => seen.push(args), confirmed: () => undefined, restored: () => undefined, lost: () => undefined },
      { heartbeatMs: 60_000, timeoutMs: 60_000, maxBackoffMs: 1_000 },
      quiet,
    );
    await channel.start();
    for (const payload of payloads) deliver(payload);
    expect(channel.stats()).toEqual({ up: true, reconnects: 0, losses: 0 });
    await channel.stop();
    return seen;
  }

  it("read the commit time and log position when the notice carries them, and accept older notices without them", async () => {
    expect(await received(["r:q83vEjRWeJA=:0b7e1c2a-4d5e-4f60-8a9b-c0d1e2f3a4b5:1790000000123:42", "r:q83vEjRWeJA=:0b7e1c2a-4d5e-4f60-8a9b-c0d1e2f3a4b5:1790000000123", "r:q83vEjRWeJA=:0b7e1c2a-4d5e-4f60-8a9b-c0d1e2f3a4b5", "r:k:id:garbage", "r:", "r:k"])).toEqual([
      ["q83vEjRWeJA=", "0b7e1c2a-4d5e-4f60-8a9b-c0d1e2f3a4b5", 1790000000123, 42],
      ["q83vEjRWeJA=", "0b7e1c2a-4d5e-4f60-8a9b-c0d1e2f3a4b5", 1790000000123, undefined],
      ["q83vEjRWeJA=", "0b7e1c2a-4d5e-4f60-8a9b-c0d1e2f3a4b5", undefined, undefined],
      ["k", "id", undefined, undefined],
    ]);
  });
});
