import { pino, type Logger as PinoLogger } from "pino";
import type { Config } from "./config.js";

/**
 * The service's structured JSON logger. Tokens and Authorization headers are
 * never passed to it; the redaction below is a second line of defence for
 * fields with those names, should one ever be logged by mistake.
 */
export function createLogger(level: Config["logLevel"], destination?: NodeJS.WritableStream): PinoLogger {
  return pino(
    {
      level,
      base: { service: "token-service" },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: {
        paths: ["token", "authorization", "*.token", "*.authorization", "headers.authorization", "*.headers.authorization"],
        censor: "[redacted]",
      },
    },
    destination ?? process.stderr,
  );
}
