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
      otelExporterOtlpHeaders: {},
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
