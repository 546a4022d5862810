import { parseArgs } from "node:util";
import { CONFIG_KEYS, ConfigError, defaultFor, loadConfig, redactUrl, type Config } from "../config.js";
import type { Logger } from "../domain/ports.js";
import { describeKeyEncryptionKeys } from "../keys/kek-config.js";
import { loadLegacyJwtPolicy } from "../keys/legacy-keys.js";
import { loadTlsMaterial } from "../server/tls.js";
import { leakEndpointOptions } from "../server/http/secret-scanning.js";
import { UsageError } from "./usage.js";

/** Where `tokenctl config` writes. */
export interface ConfigCheckIo {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
}

/**
 * Keys whose values are never printed, only whether they are set: the legacy
 * HMAC secrets, the key-encryption keys, headers sent to other services
 * (`OTEL_EXPORTER_OTLP_HEADERS` carries collectors' API keys), and any key
 * added later whose name says it holds a secret. (Paths to key files are fine to print.)
 */
const SECRET_KEY = /SECRET|PASSWORD|CREDENTIAL|API_KEY|(^|_)TOKEN$|ENCRYPTION_KEY(_PREVIOUS)?$|_HEADERS$/;

/** A URL with a password in it, in any key (DATABASE_URL and any other). */
const URL_WITH_PASSWORD = /^[a-z][a-z0-9+.-]*:\/\/[^/@\s]*:[^/@\s]*@/i;

/**
 * `tokenctl config check`: validates the configuration in `env` exactly as
 * the server does at start-up (every key, then the legacy JWT keys and the
 * TLS files they name) without opening the store or a port. Prints
 * `configuration OK` and the effective values, secrets redacted, and returns
 * 0; or names every bad key on stderr and returns 78 (EX_CONFIG), the
 * server's exit code for the same mistake.
 */
export async function configCommand(args: readonly string[], env: Readonly<Record<string, string | undefined>>, io: ConfigCheckIo): Promise<number> {
  const { positionals } = parseArgs({ args: [...args], options: {}, strict: true, allowPositionals: true });
  if (positionals.length !== 1 || positionals[0] !== "check") throw new UsageError("config needs one subcommand: config check");

  const warnings: string[] = [];
  const log = collectingLogger(warnings);
  const problems: string[] = [];
  let config: Config | undefined;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    problems.push(...error.problems);
  }

  let summary: string[] = [];
  if (config !== undefined) {
    // Every file check runs even when one fails, so every bad key is named at once.
    const [legacy, tls, keks] = await Promise.all([
      loadLegacyJwtPolicy(config, log).catch((error: unknown) => fileProblem(error, problems)),
      loadTlsMaterial(config, log).catch((error: unknown) => fileProblem(error, problems)),
      describeKeyEncryptionKeys(config, log).catch((error: unknown) => fileProblem(error, problems)),
      Promise.resolve(config).then((c) => leakEndpointOptions(c, log)).catch((error: unknown) => fileProblem(error, problems)),
    ]);
    summary = [
      `store:           ${config.databaseUrl ? `PostgreSQL ${redactUrl(config.databaseUrl)}` : `embedded PGlite in ${config.dataDir}`}`,
      `tls:             ${tls ? `${config.tlsPorts === "both" ? "gRPC and HTTP ports" : `${config.tlsPorts === "grpc" ? "gRPC" : "HTTP"} port only`}, ${tls.clientCa ? "mutual TLS (client certificates required)" : "server certificate only"}; ${tls.subject}, expires ${tls.notAfter.toISOString()}` : "off (cleartext)"}`,
      `key encryption: ${keks ?? "(see above)"}`,
      `legacy JWT keys: ${legacy && legacy.keys.length > 0 ? legacy.keys.map((k) => `${k.label}/${k.alg}`).join(", ") : "none (legacy JWTs refused)"}`,
    ];
  } else {
    problems.push("(the files named by TLS_*, LEGACY_JWT_* and KEY_ENCRYPTION_KEY* keys are checked once the keys above are fixed)");
  }

  for (const warning of warnings) io.stderr.write(`tokenctl: warning: ${warning}\n`);
  if (problems.length > 0) {
    io.stderr.write(`tokenctl: invalid configuration:\n  ${problems.join("\n  ")}\n`);
    return 78; // EX_CONFIG
  }
  io.stdout.write(`configuration OK\n\n${effectiveValues(env, config!)}\n${summary.join("\n")}\n`);
  return 0;
}

/** Records the problems of a ConfigError; anything else is a real failure. */
function fileProblem(error: unknown, problems: string[]): undefined {
  if (!(error instanceof ConfigError)) throw error;
  problems.push(...error.problems);
  return undefined;
}

/** A table of every key's effective value and where it came from. */
function effectiveValues(env: Readonly<Record<string, string | undefined>>, config: Config): string {
  const rows = Object.entries(CONFIG_KEYS).map(([key, spec]) => {
    const fromEnv = env[key] !== undefined && env[key] !== "";
    const raw = fromEnv ? env[key]! : defaultFor(spec, config.environment);
    let value: string;
    if (raw === undefined) value = "(unset)";
    else if (SECRET_KEY.test(key)) value = "(set, redacted)";
    else if (key === "DATABASE_URL" || URL_WITH_PASSWORD.test(raw)) value = redactUrl(raw);
    else if (key === "TOKEN_ENVIRONMENT") value = config.environment; // the short names resolved
    else value = raw.replace(/[\r\n]/g, " ");
    return [key, value, fromEnv ? "env" : "default"] as const;
  });
  const width = (column: 0 | 1) => Math.max(...rows.map((row) => row[column].length), column === 0 ? 3 : 5);
  const [keyWidth, valueWidth] = [width(0), width(1)];
  const line = (a: string, b: string, c: string) => `${a.padEnd(keyWidth)}  ${b.padEnd(valueWidth)}  ${c}`.trimEnd();
  return [line("KEY", "VALUE", "SOURCE"), ...rows.map(([k, v, s]) => line(k, v, s))].join("\n") + "\n";
}

/** A logger that keeps warnings (with their fields, which never hold secrets) and drops the rest. */
function collectingLogger(warnings: string[]): Logger {
  const ignore = () => undefined;
  return {
    debug: ignore,
    info: ignore,
    warn: (fields, message) => warnings.push(Object.keys(fields).length > 0 ? `${message} ${JSON.stringify(fields)}` : message),
    error: (fields, message) => warnings.push(`${message} ${JSON.stringify(fields)}`),
  };
}
