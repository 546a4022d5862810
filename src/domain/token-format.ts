import { hash, randomBytes } from "node:crypto";
import { ENVIRONMENT_PREFIX, type Environment } from "./environment.js";

/** Random characters after the prefix. 62^22 ≈ 2^131 possibilities: over the 128 bits we promise. */
export const TOKEN_BODY_LENGTH = 22;

/** The longest value we look at: anything longer is refused before any work. */
export const MAX_PRESENTED_TOKEN_LENGTH = 4096;

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

// Bytes at or above 248 (= 4 × 62) are discarded, so `byte % 62` is uniform:
// no modulo bias.
const UNBIASED_LIMIT = 248;

const OPAQUE_SHAPE = /^(cf|cfstg|cfprd)-([0-9A-Za-z]{22})$/;

const ENVIRONMENT_BY_PREFIX: ReadonlyMap<string, Environment> = new Map(
  (Object.entries(ENVIRONMENT_PREFIX) as [Environment, string][]).map(([env, prefix]) => [
    prefix.slice(0, -1),
    env,
  ]),
);

/** A freshly minted token: the secret and what may be stored about it. */
export interface MintedToken {
  /** The secret. Returned to the caller once, never stored or logged. */
  readonly token: string;
  /** SHA-256 of the token: the only form that is stored. */
  readonly digest: Buffer;
  /** Safe to show: prefix and the last four characters. */
  readonly displayHint: string;
}

/** Mints a token for an environment from the operating system's CSPRNG. */
export function mintToken(environment: Environment): MintedToken {
  let body = "";
  while (body.length < TOKEN_BODY_LENGTH) {
    // 32 bytes almost always yield 22 accepted characters (each is kept with p = 248/256).
    for (const byte of randomBytes(32)) {
      if (byte < UNBIASED_LIMIT) body += BASE62[byte % 62];
      if (body.length === TOKEN_BODY_LENGTH) break;
    }
  }
  const token = ENVIRONMENT_PREFIX[environment] + body;
  return { token, digest: digestToken(token), displayHint: displayHint(token) };
}

/**
 * SHA-256 of a token as base64 text: the cache key, and the form revocation
 * notices carry. One-shot `crypto.hash` straight to text is the cheapest
 * form on Node 20 (no Buffer in between).
 */
export function digestKey(token: string): string {
  return hash("sha256", token, "base64");
}

/** The cache key of a stored digest. */
export function keyOfDigest(digest: Uint8Array): string {
  return Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength).toString("base64");
}

/** SHA-256 of a token. One-shot `crypto.hash` is the cheapest form on Node 20. */
export function digestToken(token: string): Buffer {
  return hash("sha256", token, "buffer");
}

/**
 * What may be shown of a token: its prefix and last four characters, e.g.
 * `cf-…a1B2`. For a value that is not a token at all, only its length.
 */
export function displayHint(value: string): string {
  const match = OPAQUE_SHAPE.exec(value);
  if (match) return `${match[1]}-…${value.slice(-4)}`;
  if (value.startsWith("eyJ")) return `eyJ…(${value.length} chars)`;
  return `(${value.length} chars)`;
}

/** What a presented value is, by its shape alone. */
export type PresentedToken =
  | { readonly shape: "opaque"; readonly environment: Environment }
  | { readonly shape: "jwt" }
  | { readonly shape: "malformed" };

/** Classifies a presented value by shape, without touching any store. */
export function classifyToken(value: string): PresentedToken {
  const match = OPAQUE_SHAPE.exec(value);
  if (match) return { shape: "opaque", environment: ENVIRONMENT_BY_PREFIX.get(match[1]!)! };
  // A JWT's header is base64url JSON, so it starts with `eyJ` ("{\"").
  if (value.startsWith("eyJ")) return { shape: "jwt" };
  return { shape: "malformed" };
}
