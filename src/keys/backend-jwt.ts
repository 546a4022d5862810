import { randomUUID } from "node:crypto";
import { SignJWT, calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK } from "jose";
import { backendJwtPayload } from "../domain/claims.js";
import type { IntrospectedClaims } from "../domain/introspect.js";
import type { BackendJwtMinter, Clock, Logger, SigningKey, SigningKeyStore } from "../domain/ports.js";
import { KeyUnwrapError, type KeyEncryptionKeys } from "./key-wrap.js";

/** How backend JWTs are made. */
export interface BackendJwtOptions {
  readonly alg: "ES256" | "EdDSA";
  /** Lifetime of one JWT (never beyond the token's own expiry). */
  readonly ttlMs: number;
  /** How often a new signing key is made. */
  readonly rotationMs: number;
  readonly issuer: string;
  readonly audience: readonly string[];
  /** How often replicas re-read the shared key set. */
  readonly refreshMs: number;
}

interface LoadedKey {
  readonly record: SigningKey;
  readonly privateKey: CryptoKey;
}

/** Cached JWTs, bounded; oldest insertions go first. */
const MAX_CACHED = 100_000;

/**
 * Backend JWT signing with rotating keys shared through the store.
 *
 * Key roll-over without a gap: a new key is published in the JWKS for two
 * refresh intervals before any replica signs with it (`activatesAt`), so a
 * backend that fetched the JWKS from any replica can verify every JWT; an old
 * key stays published until the last JWT it signed has expired.
 *
 * Minted JWTs are cached per token and reused while at least a fifth of their
 * lifetime is left, so a busy token costs one signature per few minutes, not
 * one per call. A revoked token never reaches `mint` (introspection answers
 * inactive first), so it stops getting new JWTs at once.
 *
 * Private keys are stored wrapped under the key-encryption key (`key-wrap.ts`)
 * and unwrapped only into memory. Every refresh moves any stored key that is
 * not under the current key-encryption key (plaintext rows from before
 * encryption or from a replica of that version, keys under the previous KEK)
 * under it, so the store never keeps plaintext while a replica with a KEK
 * runs, and a KEK rotation completes on its own once every replica has the
 * new key. A key that cannot be unwrapped fails `start` naming its kid; later,
 * a refresh that fails keeps the keys already loaded.
 */
export class BackendJwtKeys implements BackendJwtMinter {
  private keys: LoadedKey[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly cache = new Map<string, { jwt: string; expiresAt: number; kid: string }>();

  constructor(
    private readonly store: SigningKeyStore,
    private readonly keks: KeyEncryptionKeys,
    private readonly options: BackendJwtOptions,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {}

  /** Loads the shared keys, makes one if none is fresh enough, and starts refreshing. */
  async start(): Promise<void> {
    await this.refresh();
    this.timer = setInterval(() => {
      this.refresh().catch((err: unknown) => this.log.warn({ err }, "backend JWT keys could not be refreshed; keeping the current set"));
    }, this.options.refreshMs);
    this.timer.unref();
  }

  /** Stops refreshing. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Re-reads the shared keys; rotates when the newest is older than the rotation period. */
  async refresh(): Promise<void> {
    const now = this.clock.now();
    let records = await this.store.list();
    if (records.some((r) => !this.keks.isCurrent(r))) {
      const rewrapped = await this.store.reseal((key) => this.keks.rewrap(key));
      if (rewrapped > 0) this.log.info({ count: rewrapped, kek_id: this.keks.current.id }, "backend JWT signing keys wrapped under the current key-encryption key");
      records = await this.store.list();
    }
    const newest = records[0];
    if (newest === undefined || now.getTime() - newest.createdAt.getTime() >= this.options.rotationMs) {
      // The very first key is active at once; later ones wait until every replica publishes them.
      const activatesAt = newest === undefined ? now : new Date(now.getTime() + 2 * this.options.refreshMs);
      await this.store.insert(await this.generate(now, activatesAt));
      records = await this.store.list();
      this.log.info({ kid: records[0]?.kid, alg: this.options.alg }, "backend JWT signing key created");
    }
    const published = this.publishedOf(records, now);
    const stale = records.filter((r) => !published.includes(r)).map((r) => r.kid);
    if (stale.length > 0) await this.store.prune(stale);
    const loaded: LoadedKey[] = [];
    for (const record of published) {
      const existing = this.keys.find((k) => k.record.kid === record.kid);
      loaded.push(existing ?? { record, privateKey: await this.unwrap(record) });
    }
    this.keys = loaded;
  }

  /** The JSON Web Key Set (RFC 7517 §5): the public half of every published key. */
  jwks(): { keys: JWK[] } {
    return { keys: this.keys.map((k) => ({ ...(k.record.publicJwk as JWK), kid: k.record.kid, alg: k.record.alg, use: "sig" })) };
  }

  /** A JWT for these claims, from the cache while it has enough life left. */
  async mint(claims: IntrospectedClaims, now: Date): Promise<string> {
    const signer = this.currentKey(now);
    const cached = this.cache.get(claims.id);
    const nowMs = now.getTime();
    if (cached && cached.kid === signer.record.kid && cached.expiresAt - nowMs >= this.options.ttlMs / 5) return cached.jwt;

    const tokenExpiry = claims.expiresAt?.getTime() ?? Number.POSITIVE_INFINITY;
    const expiresAt = Math.min(nowMs + this.options.ttlMs, tokenExpiry);
    const payload = backendJwtPayload(claims, { issuer: this.options.issuer, audience: this.options.audience, jti: randomUUID() });
    const jwt = await new SignJWT(payload)
      // RFC 9068 §2.1, RFC 8725 §3.11: typed as an access token, never confusable with an RFC 9701 answer.
      .setProtectedHeader({ alg: signer.record.alg, kid: signer.record.kid, typ: "at+jwt" })
      .setIssuedAt(Math.floor(nowMs / 1000))
      .setNotBefore(Math.floor(nowMs / 1000))
      .setExpirationTime(Math.floor(expiresAt / 1000))
      .sign(signer.privateKey);
    if (this.cache.size >= MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(claims.id, { jwt, expiresAt: Math.floor(expiresAt / 1000) * 1000, kid: signer.record.kid });
    return jwt;
  }

  /**
   * Signs an arbitrary payload with the current backend JWT key, verifiable
   * with the same JWKS. `typ` types the JWT explicitly (RFC 8725 §3.11), so it
   * cannot be taken for a backend JWT or an access token, e.g.
   * `token-introspection+jwt` for an RFC 9701 introspection answer. The
   * payload is signed as given: the caller sets `iss`, `aud`, `iat`.
   */
  async signPayload(payload: Record<string, unknown>, typ: string): Promise<string> {
    const signer = this.currentKey(this.clock.now());
    return new SignJWT(payload).setProtectedHeader({ alg: signer.record.alg, kid: signer.record.kid, typ }).sign(signer.privateKey);
  }

  /** Forgets a token's cached JWT (on revocation). */
  forget(tokenId: string): void {
    this.cache.delete(tokenId);
  }

  /** The newest key that is already active. */
  private currentKey(now: Date): LoadedKey {
    const key = this.keys.find((k) => k.record.activatesAt.getTime() <= now.getTime());
    if (!key) throw new Error("no active backend JWT signing key");
    return key;
  }

  /**
   * Keys to publish, newest first: every key not yet superseded by an active
   * successor, and superseded ones until the last JWT they may have signed
   * (up to one lifetime after the successor activated) has expired.
   */
  private publishedOf(records: readonly SigningKey[], now: Date): SigningKey[] {
    const out: SigningKey[] = [];
    let successorActivatedAt: number | undefined;
    for (const record of records) {
      if (successorActivatedAt === undefined || successorActivatedAt + this.options.ttlMs > now.getTime()) out.push(record);
      if (record.activatesAt.getTime() <= now.getTime()) {
        successorActivatedAt = successorActivatedAt === undefined ? record.activatesAt.getTime() : Math.min(successorActivatedAt, record.activatesAt.getTime());
      }
    }
    return out;
  }

  private async generate(now: Date, activatesAt: Date): Promise<SigningKey> {
    const pair = await generateKeyPair(this.options.alg, { extractable: true, ...(this.options.alg === "EdDSA" ? { crv: "Ed25519" } : {}) });
    const publicJwk = await exportJWK(pair.publicKey);
    const privateJwk = await exportJWK(pair.privateKey);
    // RFC 7638 thumbprint: a kid every replica derives the same way from the key itself.
    const kid = await calculateJwkThumbprint(publicJwk);
    // Wrapped before it leaves this process: the store never sees the private key in the clear.
    const privateKey = this.keks.seal(privateJwk as Record<string, unknown>, { kid, alg: this.options.alg });
    return { kid, alg: this.options.alg, privateKey, publicJwk, createdAt: now, activatesAt };
  }

  /**
   * The signing key of a stored record, checked to be the private half of
   * the published key (its RFC 7638 thumbprint is the kid), so a key that
   * decrypts to anything else is refused rather than used to sign.
   *
   * @throws KeyUnwrapError naming the kid, never key material
   */
  private async unwrap(record: SigningKey): Promise<CryptoKey> {
    const jwk = this.keks.open(record) as JWK;
    try {
      // RFC 7638 §3.2: the thumbprint takes only the public members, so this is the public key's.
      if ((await calculateJwkThumbprint(jwk)) !== record.kid) throw new KeyUnwrapError(record.kid, "the unwrapped key is not the private half of the published key");
      return (await importJWK(jwk, record.alg)) as CryptoKey;
    } catch (error) {
      if (error instanceof KeyUnwrapError) throw error;
      throw new KeyUnwrapError(record.kid, `the unwrapped key cannot be imported as ${record.alg} (${(error as Error).name})`);
    }
  }
}
