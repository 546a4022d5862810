/**
 * Private keys at rest: envelope encryption of the backend JWT signing keys
 * under a key-encryption key (KEK) that lives outside the database.
 *
 * A wrapped key is `0x01 ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`:
 * AES-256-GCM (NIST SP 800-38D) with a random 96-bit nonce per wrap, over the
 * private JWK as JSON. The associated data binds the ciphertext to its row
 * (kid and algorithm) and to the KEK's id, so a wrapped key copied into
 * another row, or relabelled with another KEK id, fails authentication
 * instead of decrypting. Random nonces are safe here: a KEK wraps a few keys
 * a day, far below the 2^32 messages SP 800-38D §8.3 allows per key.
 *
 * The KEK id is a fingerprint of the KEK (the first 8 bytes of a labelled
 * SHA-256, in hex), stored beside each wrapped key, so a rotation knows which
 * KEK opens which key and an operator can see which keys still need the old one.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import type { SigningKey, StoredPrivateKey } from "../domain/ports.js";

/** Length of a KEK: AES-256. */
export const KEK_BYTES = 32;
const FORMAT_V1 = 0x01;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

/** A key-encryption key and its id. */
export interface Kek {
  /** Fingerprint of the key (16 hex digits); stored with every key it wraps. */
  readonly id: string;
  readonly key: Buffer;
}

/** Thrown when a stored private key cannot be unwrapped; the message names the kid and why, never key material. */
export class KeyUnwrapError extends Error {
  override readonly name = "KeyUnwrapError";
  constructor(
    readonly kid: string,
    reason: string,
  ) {
    super(`key encryption key does not decrypt stored signing key ${kid}: ${reason}`);
  }
}

/**
 * Decodes a KEK written as base64 or base64url (`openssl rand -base64 32`).
 *
 * @throws Error when it is not exactly 32 bytes
 */
export function decodeKek(text: string): Kek {
  const value = text.trim();
  if (!/^[A-Za-z0-9+/_-]{43}=?$/.test(value)) throw new Error("must be 32 random bytes in base64; make one with: openssl rand -base64 32");
  const key = Buffer.from(value.replace(/-/g, "+").replace(/_/g, "/"), "base64");
  if (key.length !== KEK_BYTES) throw new Error("must be 32 random bytes in base64; make one with: openssl rand -base64 32");
  return { id: kekId(key), key };
}

/** The id of a KEK: a fingerprint that reveals nothing usable about a 256-bit random key. */
export function kekId(key: Uint8Array): string {
  return createHash("sha256").update("token-service key-encryption-key id v1\0").update(key).digest("hex").slice(0, 16);
}

/** The row a wrapped key belongs to, bound into its associated data. */
export interface WrapContext {
  readonly kid: string;
  readonly alg: string;
}

function associatedData(context: WrapContext, id: string): Buffer {
  // NUL-separated: kids (RFC 7638 thumbprints), algorithm names and KEK ids never contain NUL.
  return Buffer.from(`signing_keys\0v1\0${context.kid}\0${context.alg}\0${id}`, "utf8");
}

/**
 * The current KEK, which wraps, and the previous ones, which still unwrap
 * during a rotation.
 */
export class KeyEncryptionKeys {
  private readonly byId: ReadonlyMap<string, Kek>;

  /**
   * @param current wraps every key written from now on
   * @param previous accepted for unwrapping only (duplicates of `current` are ignored)
   */
  constructor(
    readonly current: Kek,
    previous: readonly Kek[] = [],
  ) {
    this.byId = new Map([...previous, current].map((k) => [k.id, k]));
  }

  /** Ids of the previous KEKs that are not also the current one. */
  get previousIds(): string[] {
    return [...this.byId.keys()].filter((id) => id !== this.current.id);
  }

  /** Encrypts `plaintext` under the current KEK, bound to `context`. */
  wrap(plaintext: Uint8Array, context: WrapContext): { kekId: string; wrapped: Buffer } {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv("aes-256-gcm", this.current.key, nonce, { authTagLength: TAG_BYTES });
    cipher.setAAD(associatedData(context, this.current.id));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return { kekId: this.current.id, wrapped: Buffer.concat([Buffer.of(FORMAT_V1), nonce, body, cipher.getAuthTag()]) };
  }

  /**
   * Decrypts a wrapped key after checking its tag.
   *
   * @throws KeyUnwrapError when its KEK is not configured, or the ciphertext,
   *   its row or its KEK id was altered (or the KEK is not the one that wrapped it)
   */
  unwrap(id: string, wrapped: Uint8Array, context: WrapContext): Buffer {
    const kek = this.byId.get(id);
    if (kek === undefined) {
      const configured = [`current ${this.current.id}`, ...this.previousIds.map((p) => `previous ${p}`)].join(", ");
      throw new KeyUnwrapError(context.kid, `it was wrapped under KEK ${id}, which is not configured (${configured}); set KEY_ENCRYPTION_KEY or KEY_ENCRYPTION_KEY_PREVIOUS to that key`);
    }
    const bytes = Buffer.from(wrapped.buffer, wrapped.byteOffset, wrapped.byteLength);
    if (bytes.length < 1 + NONCE_BYTES + TAG_BYTES || bytes[0] !== FORMAT_V1) throw new KeyUnwrapError(context.kid, "the stored wrapped key is not in a known format");
    const nonce = bytes.subarray(1, 1 + NONCE_BYTES);
    const tag = bytes.subarray(bytes.length - TAG_BYTES);
    const decipher = createDecipheriv("aes-256-gcm", kek.key, nonce, { authTagLength: TAG_BYTES });
    decipher.setAAD(associatedData(context, id));
    decipher.setAuthTag(tag);
    try {
      return Buffer.concat([decipher.update(bytes.subarray(1 + NONCE_BYTES, bytes.length - TAG_BYTES)), decipher.final()]);
    } catch {
      // GCM verifies before releasing anything: nothing decrypted is used or shown.
      throw new KeyUnwrapError(context.kid, `authentication failed under KEK ${id}: the wrapped key, its kid or its algorithm was altered`);
    }
  }

  /** Wraps a private JWK for the key `context` names. */
  seal(privateJwk: Readonly<Record<string, unknown>>, context: WrapContext): StoredPrivateKey {
    return this.wrap(Buffer.from(JSON.stringify(privateJwk), "utf8"), context);
  }

  /**
   * The private JWK of a stored key: unwrapped, or as stored when it is a
   * plaintext row from before encryption.
   *
   * @throws KeyUnwrapError when it cannot be unwrapped
   */
  open(key: SigningKey): Record<string, unknown> {
    if (key.privateKey.kekId === undefined) return { ...key.privateKey.plaintextJwk };
    const plaintext = this.unwrap(key.privateKey.kekId, key.privateKey.wrapped, key);
    try {
      return JSON.parse(plaintext.toString("utf8")) as Record<string, unknown>;
    } catch {
      throw new KeyUnwrapError(key.kid, "the unwrapped key is not JSON");
    } finally {
      plaintext.fill(0);
    }
  }

  /**
   * What `SigningKeyStore.reseal` should store for a key to be under the
   * current KEK: `undefined` when it already is, else the key wrapped anew
   * (plaintext rows included).
   *
   * @throws KeyUnwrapError when it cannot be unwrapped
   */
  rewrap(key: SigningKey): StoredPrivateKey | undefined {
    if (key.privateKey.kekId === this.current.id) return undefined;
    return this.seal(this.open(key), key);
  }

  /** Whether a stored key is wrapped under the current KEK. */
  isCurrent(key: SigningKey): boolean {
    return key.privateKey.kekId === this.current.id;
  }
}
