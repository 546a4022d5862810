import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { CONFIG_KEYS, ConfigError, loadConfig } from "../../src/config.js";

describe("configuration", () => {
  it("has a sensible default for every key", () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      environment: "development",
      databaseUrl: undefined,
      dataDir: "./data",
      grpcPort: 50051,
      httpPort: 8080,
      listenHost: "127.0.0.1",
      tokenDefaultTtlMs: 30 * 86_400_000,
      tokenRequireExpiry: true,
      maxActiveTokensPerSubject: 100,
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it("accepts the short environment names", () => {
    expect(loadConfig({ TOKEN_ENVIRONMENT: "prod" }).environment).toBe("production");
    expect(loadConfig({ TOKEN_ENVIRONMENT: "stage" }).environment).toBe("staging");
  });

  it("names every bad key at once, without echoing a database password", () => {
    let error: unknown;
    try {
      loadConfig({ TOKEN_ENVIRONMENT: "qa", GRPC_PORT: "70000", TOKEN_MAX_TTL: "forever", DATABASE_URL: "mysql://u:hunter2@h/db" });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toContain('TOKEN_ENVIRONMENT="qa": must be development, staging or production');
    expect(message).toContain('GRPC_PORT="70000": must be a whole number from 0 to 65535');
    expect(message).toContain("TOKEN_MAX_TTL=\"forever\": must be a duration");
    expect(message).toContain("DATABASE_URL=");
    expect(message).not.toContain("hunter2");
  });

  it("refuses a default lifetime longer than the maximum", () => {
    expect(() => loadConfig({ TOKEN_DEFAULT_TTL: "400d" })).toThrow("TOKEN_DEFAULT_TTL: must not be longer than TOKEN_MAX_TTL");
  });

  it("documents every key in the README's configuration table", () => {
    const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
    for (const key of Object.keys(CONFIG_KEYS)) expect(readme, key).toContain(`| \`${key}\` |`);
  });
});
