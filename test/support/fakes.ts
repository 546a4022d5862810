import { randomBytes } from "node:crypto";
import { TokenError } from "../../src/domain/errors.js";
import { PageTokens } from "../../src/domain/paging.js";
import type { LegacyJwtPolicy } from "../../src/domain/legacy-jwt.js";
import { createIntrospectionCache } from "../../src/domain/introspect.js";
import { RevocationHub } from "../../src/domain/revocation-hub.js";
import type { SecurityEvent, SecurityEventRow, TokenRecord } from "../../src/domain/model.js";
import { tokenState } from "../../src/domain/model.js";
import type {
  Clock,
  BackendJwtMinter,
  CascadeOutcome,
  EventSink,
  LegacyJwtStore,
  SigningKey,
  SigningKeyStore,
  StoredPrivateKey,
  LegacyUsage,
  Logger,
  NewToken,
  RevokeOneOutcome,
  RevokeOutcome,
  RevokeTarget,
  SecurityEventQuery,
  SecurityEventStore,
  TokenDeps,
  TokenListQuery,
  TokenPolicy,
  TokenStore,
} from "../../src/domain/ports.js";

/** A clock tests move by hand. */
export class FixedClock implements Clock {
  constructor(public current = new Date("2026-11-22T12:00:00.000Z")) {}
  now(): Date {
    return new Date(this.current.getTime());
  }
  advance(ms: number): void {
    this.current = new Date(this.current.getTime() + ms);
  }
}

/** An in-memory TokenStore with the same contract as the real ones; `down` simulates an outage. */
export class MemoryTokenStore implements TokenStore {
  readonly rows = new Map<string, TokenRecord>();
  down = false;

  private check(): void {
    if (this.down) throw new TokenError("unavailable", "the token store is unavailable; try again");
  }
  async insert(token: NewToken, limits: { maxActivePerSubject: number; now: Date }): Promise<TokenRecord> {
    this.check();
    if (token.issuedByTokenId !== null && this.rows.get(token.issuedByTokenId)?.revokedAt != null) {
      throw new TokenError("unauthenticated", "caller credential refused: the token was revoked");
    }
    const active = [...this.rows.values()].filter((r) => r.subject === token.subject && r.environment === token.environment && tokenState(r, limits.now) === "active").length;
    if (active >= limits.maxActivePerSubject) {
      throw new TokenError("resource_exhausted", `subject already holds ${active} active tokens, the most allowed; revoke some first`);
    }
    const record: TokenRecord = { ...token, lastUsedAt: null, revokedAt: null, revokedBy: null, revokeReason: null };
    this.rows.set(record.id, record);
    return record;
  }
  async findByDigest(digest: Uint8Array): Promise<TokenRecord | undefined> {
    this.check();
    const hex = Buffer.from(digest).toString("hex");
    return [...this.rows.values()].find((r) => Buffer.from(r.digest).toString("hex") === hex);
  }
  async findById(id: string): Promise<TokenRecord | undefined> {
    this.check();
    return this.rows.get(id);
  }
  async revoke(id: string, revocation: { by: string; reason: string; at: Date }): Promise<RevokeOutcome | undefined> {
    this.check();
    const row = this.rows.get(id);
    if (!row) return undefined;
    if (row.revokedAt) return { record: row, alreadyRevoked: true };
    const record = { ...row, revokedAt: revocation.at, revokedBy: revocation.by, revokeReason: revocation.reason };
    this.rows.set(id, record);
    return { record, alreadyRevoked: false };
  }
  async revokeOne(target: RevokeTarget, revocation: { by: string; reason: string; at: Date }): Promise<RevokeOneOutcome> {
    this.check();
    const row = "id" in target ? this.rows.get(target.id) : await this.findByDigest(target.digest);
    if (!row || row.environment !== target.environment) return undefined;
    if (target.subject !== undefined && row.subject !== target.subject) return "other_subject";
    return this.revoke(row.id, revocation);
  }
  async revokeCascade(id: string, revocation: { by: string; reason: string; at: Date }): Promise<CascadeOutcome | undefined> {
    this.check();
    const root = await this.revoke(id, revocation);
    if (!root) return undefined;
    const descendants: TokenRecord[] = [];
    const walk = [id];
    for (let parent = walk.pop(); parent !== undefined; parent = walk.pop()) {
      for (const child of [...this.rows.values()].filter((r) => r.issuedByTokenId === parent)) {
        walk.push(child.id);
        const outcome = await this.revoke(child.id, revocation);
        if (outcome && !outcome.alreadyRevoked) descendants.push(outcome.record);
      }
    }
    return { root, descendants };
  }
  async list(q: TokenListQuery): Promise<TokenRecord[]> {
    this.check();
    return [...this.rows.values()]
      .filter((r) => r.environment === q.environment && (q.issuedByTokenId === undefined || r.issuedByTokenId === q.issuedByTokenId))
      .filter((r) => (q.subject === undefined || r.subject === q.subject) && (q.team === undefined || r.teams.includes(q.team)))
      .filter((r) => q.includeRevoked || r.revokedAt === null)
      .filter((r) => q.includeExpired || r.expiresAt === null || r.expiresAt > q.now)
      .sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.id < b.id ? 1 : -1))
      .filter((r) => !q.after || r.createdAt < q.after.createdAt || (r.createdAt.getTime() === q.after.createdAt.getTime() && r.id < q.after.id))
      .slice(0, q.limit);
  }
  async touchLastUsed(entries: ReadonlyMap<string, Date>): Promise<void> {
    this.check();
    for (const [id, at] of entries) {
      const row = this.rows.get(id);
      if (row && (!row.lastUsedAt || row.lastUsedAt < at)) this.rows.set(id, { ...row, lastUsedAt: at });
    }
  }
  async count(): Promise<number> {
    this.check();
    return this.rows.size;
  }
  async ping(): Promise<void> {
    this.check();
  }
}

/** An in-memory SecurityEventStore. */
export class MemorySecurityEventStore implements SecurityEventStore {
  readonly rows: SecurityEventRow[] = [];
  writes = 0;
  async insertMany(rows: readonly SecurityEventRow[]): Promise<void> {
    this.writes++;
    this.rows.push(...rows);
  }
  async list(q: SecurityEventQuery): Promise<SecurityEventRow[]> {
    return this.rows.filter((r) => !q.type || r.type === q.type).slice(0, q.limit);
  }
  async pruneBefore(cutoff: Date, limit: number): Promise<number> {
    const old = this.rows.filter((r) => r.lastSeen < cutoff).slice(0, limit);
    for (const row of old) this.rows.splice(this.rows.indexOf(row), 1);
    return old.length;
  }
}

/** An EventSink that keeps what it is given. */
export class CapturedEvents implements EventSink {
  readonly events: SecurityEvent[] = [];
  record(event: SecurityEvent): void {
    this.events.push(event);
  }
  async flush(): Promise<void> {}
}

/** A Logger that keeps its lines. */
export class CapturedLog implements Logger {
  readonly lines: { level: string; fields: object; message: string }[] = [];
  debug(fields: object, message: string): void {
    this.lines.push({ level: "debug", fields, message });
  }
  info(fields: object, message: string): void {
    this.lines.push({ level: "info", fields, message });
  }
  warn(fields: object, message: string): void {
    this.lines.push({ level: "warn", fields, message });
  }
  error(fields: object, message: string): void {
    this.lines.push({ level: "error", fields, message });
  }
}

/** An in-memory LegacyJwtStore. */
export class MemoryLegacyJwtStore implements LegacyJwtStore {
  readonly revoked = new Map<string, { by: string; reason: string }>();
  readonly usage = new Map<string, LegacyUsage>();
  async isRevoked(jti: string): Promise<boolean> {
    return this.revoked.has(jti);
  }
  async revoke(jti: string, r: { by: string; reason: string }): Promise<{ alreadyRevoked: boolean }> {
    if (this.revoked.has(jti)) return { alreadyRevoked: true };
    this.revoked.set(jti, { by: r.by, reason: r.reason });
    return { alreadyRevoked: false };
  }
  async recordUsage(batch: readonly LegacyUsage[]): Promise<void> {
    for (const u of batch) {
      const old = this.usage.get(u.subject);
      this.usage.set(u.subject, old ? { ...old, count: old.count + u.count, lastSeen: u.lastSeen } : u);
    }
  }
  async listUsage(q: { limit: number }): Promise<LegacyUsage[]> {
    return [...this.usage.values()].sort((a, b) => b.lastSeen.getTime() - a.lastSeen.getTime()).slice(0, q.limit);
  }
}

/** An in-memory SigningKeyStore. */
export class MemorySigningKeyStore implements SigningKeyStore {
  keys: SigningKey[] = [];
  async list(): Promise<SigningKey[]> {
    return [...this.keys].sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime());
  }
  async insert(key: SigningKey): Promise<void> {
    if (!this.keys.some((k) => k.kid === key.kid)) this.keys.push(key);
  }
  async prune(kids: readonly string[]): Promise<void> {
    this.keys = this.keys.filter((k) => !kids.includes(k.kid));
  }
  async reseal(reseal: (key: SigningKey) => StoredPrivateKey | undefined): Promise<number> {
    const next = this.keys.map((k) => ({ key: k, privateKey: reseal(k) })); // all or nothing, as the real store
    this.keys = next.map(({ key, privateKey }) => (privateKey ? { ...key, privateKey } : key));
    return next.filter((n) => n.privateKey !== undefined).length;
  }
}

/** A minter that records what it was asked for; the real one is tested on its own. */
export class FakeMinter implements BackendJwtMinter {
  readonly minted: string[] = [];
  async mint(claims: { id: string }): Promise<string> {
    this.minted.push(claims.id);
    return `backend.jwt.${claims.id}`;
  }
  jwks() {
    return { keys: [{ kty: "EC", kid: "k1", alg: "ES256", crv: "P-256", x: "x", y: "y", use: "sig" }] };
  }
}

/** A legacy policy with no keys: legacy JWTs refused. Tests add keys. */
export const NO_LEGACY: LegacyJwtPolicy = Object.freeze({
  keys: [],
  audience: [],
  requireJti: false,
  requireEnv: false,
  releaseAt: new Date("2026-11-01T00:00:00Z"),
  sunsetAt: new Date("2027-01-30T00:00:00Z"),
  migrationUrl: "https://docs.example.com/migrate",
  maxLength: 4096,
  clockToleranceSec: 0,
});

/** The policy tests start from. */
export const TEST_POLICY: TokenPolicy = Object.freeze({
  environment: "development",
  issuer: "test-issuer",
  audience: ["gateway"],
  defaultTtlMs: 30 * 86_400_000,
  maxTtlMs: 365 * 86_400_000,
  requireExpiry: true,
  maxActiveTokensPerSubject: 5,
  metadataAllowedKeys: [],
});

/** Domain dependencies on fakes, with handles to inspect them. */
export function fakeDeps(policy: Partial<TokenPolicy> = {}, legacyPolicy: LegacyJwtPolicy = NO_LEGACY) {
  const store = new MemoryTokenStore();
  const legacyStore = new MemoryLegacyJwtStore();
  const legacyUsed: { subject: string; at: Date }[] = [];
  const securityEvents = new MemorySecurityEventStore();
  const events = new CapturedEvents();
  const clock = new FixedClock();
  const log = new CapturedLog();
  const used = new Map<string, Date>();
  const minter = new FakeMinter();
  const cache = createIntrospectionCache({ maxEntries: 1000, maxBytes: 1 << 24, stalenessMs: 2000, negativeTtlMs: 1000 });
  const revocations = new RevocationHub();
  const deps: TokenDeps = {
    cache,
    revocations,
    backendJwt: minter,
    legacy: { policy: legacyPolicy, store: legacyStore, usage: { note: (subject, at) => void legacyUsed.push({ subject, at }) } },
    store,
    securityEvents,
    events,
    clock,
    log,
    usage: { note: (id, at) => void used.set(id, at) },
    pageTokens: new PageTokens(randomBytes(32)),
    policy: { ...TEST_POLICY, ...policy },
  };
  return { deps, store, securityEvents, events, clock, log, used, legacyStore, legacyUsed, minter, cache, revocations };
}
