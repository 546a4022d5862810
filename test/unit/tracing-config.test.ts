import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";

/** The OTEL_* keys: read and checked by loadConfig like every other key (src/config.ts). */
describe("tracing configuration", () => {
  it("is off by default, with the OpenTelemetry defaults otherwise", () => {
    expect(loadConfig({})).toMatchObject({
      otelTracesExporter: "none",
      otelSdkDisabled: false,
      otelServiceName: "token-service",
      otelExporterOtlpEndpoint: "http://localhost:4318",
      otelExporterOtlpTracesEndpoint: undefined,
      otelExporterOtlpProtocol: "http/protobuf",
      otelExporterOtlpHeaders: undefined,
      otelTracesSampler: "parentbased_always_on",
      otelTracesSamplerArg: undefined,
      otelBspScheduleDelayMs: 5000,
    });
  });

  it("reads key=value lists with percent-encoded values", () => {
    const config = loadConfig({ OTEL_RESOURCE_ATTRIBUTES: "service.namespace=auth, team=platform%20identity", OTEL_EXPORTER_OTLP_HEADERS: "api-key=a%3Db" });
    expect(config.otelResourceAttributes).toEqual({ "service.namespace": "auth", team: "platform identity" });
    expect(config.otelExporterOtlpHeaders).toEqual({ "api-key": "a=b" });
  });

  it("refuses what the SDK would not understand, naming the key", () => {
    expect(() => loadConfig({ OTEL_TRACES_EXPORTER: "jaeger" })).toThrow("OTEL_TRACES_EXPORTER");
    expect(() => loadConfig({ OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" })).toThrow("must be http/protobuf or http/json");
    expect(() => loadConfig({ OTEL_TRACES_SAMPLER: "sometimes" })).toThrow("OTEL_TRACES_SAMPLER");
    expect(() => loadConfig({ OTEL_TRACES_SAMPLER_ARG: "1.5" })).toThrow("must be a number from 0 to 1");
    expect(() => loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" })).toThrow("must be an http(s) URL");
    expect(() => loadConfig({ OTEL_BSP_MAX_QUEUE_SIZE: "10", OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "20" })).toThrow("OTEL_BSP_MAX_EXPORT_BATCH_SIZE");
  });

  it("never echoes the exporter headers, which may hold a collector's key", () => {
    let message = "";
    try {
      loadConfig({ OTEL_EXPORTER_OTLP_HEADERS: "api-key=%zz-super-secret" });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain("OTEL_EXPORTER_OTLP_HEADERS=(secret)");
    expect(message).not.toContain("super-secret");
  });
});

describe("tokenctl config check with tracing keys", () => {
  it("prints the exporter headers redacted, like every secret", async () => {
    const { configCommand } = await import("../../src/cli/config-check.js");
    const { PassThrough } = await import("node:stream");
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const code = await configCommand(["check"], { DATA_DIR: "memory://", OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_HEADERS: "api-key=collector-key-123" }, { stdout, stderr });
    const out = String(stdout.read() ?? "");
    expect(code).toBe(0);
    expect(out).toMatch(/^OTEL_EXPORTER_OTLP_HEADERS +\(set, redacted\) +env$/m);
    expect(out).toMatch(/^OTEL_TRACES_EXPORTER +otlp +env$/m);
    expect(out).not.toContain("collector-key-123");
  });
});

describe("Tracing.fromConfig", () => {
  const capture = () => {
    const lines: { level: string; message: string }[] = [];
    const at = (level: string) => (_fields: object, message: string) => void lines.push({ level, message });
    return { lines, log: { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") } };
  };

  it("builds nothing when off", async () => {
    const { Tracing } = await import("../../src/observability/tracing.js");
    expect(Tracing.fromConfig(loadConfig({}), capture().log)).toBeUndefined();
    expect(Tracing.fromConfig(loadConfig({ OTEL_TRACES_EXPORTER: "otlp", OTEL_SDK_DISABLED: "true" }), capture().log)).toBeUndefined();
  });

  it("warns when exporter headers would cross the network in cleartext", async () => {
    const { Tracing } = await import("../../src/observability/tracing.js");
    for (const [endpoint, warned] of [
      ["http://collector.example:4318", true],
      ["https://collector.example:4318", false],
      ["http://localhost:4318", false],
      ["http://127.0.0.1:4318", false],
    ] as const) {
      const c = capture();
      const tracing = Tracing.fromConfig(loadConfig({ OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_EXPORTER_OTLP_HEADERS: "api-key=k" }), c.log);
      expect(c.lines.some((l) => l.level === "warn" && l.message.includes("cleartext")), endpoint).toBe(warned);
      await tracing?.shutdown();
    }
  });

  it("traces the store's queries and passes any other method straight through", async () => {
    const { Tracing } = await import("../../src/observability/tracing.js");
    const tracing = Tracing.fromConfig(loadConfig({ OTEL_TRACES_EXPORTER: "otlp" }), capture().log)!;
    try {
      const store = { findByDigest: async (d: Uint8Array) => d.length, extra(this: { n: number }) { return this.n; }, n: 7 };
      const traced = tracing.traceStore(store as never) as unknown as typeof store;
      expect(await traced.findByDigest(new Uint8Array(3))).toBe(3);
      expect(traced.extra()).toBe(7);
      expect(traced.n).toBe(7);
    } finally {
      await tracing.shutdown();
    }
  });
});
