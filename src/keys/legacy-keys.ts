import { readFile } from "node:fs/promises";
import { webcrypto } from "node:crypto";
import { importJWK, importSPKI, type JWK } from "jose";
import { ConfigError, type Config } from "../config.js";
import { LEGACY_ALGORITHMS, type LegacyAlgorithm, type LegacyJwtPolicy, type LegacyKey } from "../domain/legacy-jwt.js";
import type { Logger } from "../domain/ports.js";

const DEFAULT_WINDOW_MS = 90 * 86_400_000;
const HMAC_HASH: Readonly<Record<string, string>> = { HS256: "SHA-256", HS384: "SHA-384", HS512: "SHA-512" };

/**
 * Builds the legacy JWT policy from configuration: imports every verification
 * key once, at start-up, each bound to exactly one algorithm. Fails naming the
 * configuration key at fault.
 */
export async function loadLegacyJwtPolicy(config: Config, log: Logger): Promise<LegacyJwtPolicy> {
  const keys: LegacyKey[] = [];
  const problems: string[] = [];

  for (const [label, secret, key] of [
    ["hmac-current", config.legacyHmacSecret, "LEGACY_JWT_HMAC_SECRET"],
    ["hmac-previous", config.legacyHmacSecretPrevious, "LEGACY_JWT_HMAC_SECRET_PREVIOUS"],
  ] as const) {
    if (secret === undefined) continue;
    const bytes = new TextEncoder().encode(secret);
    // RFC 7518 §3.2: a key of the same size as the hash output or larger.
    if (bytes.length < 32) log.warn({ key }, "legacy HMAC secret is shorter than 32 bytes (RFC 7518 §3.2); accepted for compatibility, rotate it");
    const cryptoKey = await webcrypto.subtle.importKey("raw", bytes, { name: "HMAC", hash: HMAC_HASH[config.legacyHmacAlgorithm]! }, false, ["verify"]);
    keys.push({ alg: config.legacyHmacAlgorithm, key: cryptoKey, label });
  }

  if (config.legacyPublicKeyFile !== undefined) {
    try {
      const pem = await readFile(config.legacyPublicKeyFile, "utf8");
      keys.push({ alg: config.legacyPublicKeyAlgorithm, key: await importSPKI(pem, config.legacyPublicKeyAlgorithm), label: "public-key-file" });
    } catch (error) {
      problems.push(`LEGACY_JWT_PUBLIC_KEY_FILE: cannot use ${config.legacyPublicKeyFile} as a ${config.legacyPublicKeyAlgorithm} SPKI public key (${(error as Error).message})`);
    }
  }

  if (config.legacyJwksFile !== undefined) {
    try {
      const jwks = JSON.parse(await readFile(config.legacyJwksFile, "utf8")) as { keys?: JWK[] };
      if (!Array.isArray(jwks.keys)) throw new Error('no "keys" array');
      for (const [index, jwk] of jwks.keys.entries()) {
        const alg = jwk.alg as LegacyAlgorithm | undefined;
        if (alg === undefined || !LEGACY_ALGORITHMS.includes(alg) || alg.startsWith("HS")) throw new Error(`key ${index}: "alg" must be one of the public-key algorithms ${LEGACY_ALGORITHMS.filter((a) => !a.startsWith("HS")).join(", ")}`);
        if (jwk.kty === "oct" || "d" in jwk) throw new Error(`key ${index}: only public keys belong in a JWKS file`);
        const imported = await importJWK(jwk, alg);
        if (imported instanceof Uint8Array) throw new Error(`key ${index}: not a public key`);
        keys.push({ alg, key: imported, label: `jwks:${jwk.kid ?? index}`, ...(jwk.kid ? { kid: jwk.kid } : {}) });
      }
    } catch (error) {
      problems.push(`LEGACY_JWT_JWKS_FILE: cannot use ${config.legacyJwksFile} (${(error as Error).message})`);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);

  const sunsetAt = config.legacySunsetDate ?? new Date(config.legacyReleaseDate.getTime() + DEFAULT_WINDOW_MS);
  log.info({ keys: keys.map((k) => `${k.label}/${k.alg}`), sunset: sunsetAt.toISOString(), require_jti: config.requireJti, require_env: config.legacyRequireEnv }, keys.length > 0 ? "legacy JWTs accepted until sunset" : "legacy JWTs not accepted (no keys configured)");
  return Object.freeze({
    keys: Object.freeze(keys),
    ...(config.legacyIssuer !== undefined ? { issuer: config.legacyIssuer } : {}),
    audience: config.legacyAudience,
    requireJti: config.requireJti,
    requireEnv: config.legacyRequireEnv,
    releaseAt: config.legacyReleaseDate,
    sunsetAt,
    migrationUrl: config.legacyMigrationUrl,
    maxLength: config.legacyMaxLength,
    clockToleranceSec: Math.floor(config.legacyClockToleranceMs / 1000),
  });
}
