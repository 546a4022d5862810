/**
 * The database as Kysely sees it. Column names are the SQL ones (snake_case);
 * the stores map rows to domain types, so nothing above `storage/` sees these.
 *
 * Types follow what both drivers return: `pg` and PGlite both parse
 * `timestamptz` to `Date`, `text[]` to `string[]` and `jsonb` to an object;
 * `bytea` comes back as a `Buffer` from `pg` and a `Uint8Array` from PGlite,
 * and `bigint` as a string from `pg` and a number from PGlite.
 */
import type { ColumnType, GeneratedAlways } from "kysely";
import type { Environment } from "../domain/environment.js";
import type { Severity } from "../domain/model.js";

/** The `tokens` table: one row per token ever issued; revocation never deletes. */
export interface TokensTable {
  id: string;
  /** SHA-256 of the token; the only way to find a token from its bearer string. */
  digest: Uint8Array;
  display_hint: string;
  name: string;
  subject: string;
  full_name: string;
  teams: string[];
  scopes: string[];
  namespaces: string[];
  is_admin: boolean;
  /** Written as JSON text (so both drivers encode it the same way), read back as an object. */
  metadata: ColumnType<Record<string, string>, string, string>;
  environment: Environment;
  /** Always the application's Date, never `now()`, so keyset cursors round-trip exactly. */
  created_at: Date;
  created_by: string;
  /** The token whose holder issued this one (migration 0006); null for bootstrap tokens and older rows. */
  issued_by_token_id: ColumnType<string | null, string | null | undefined, string | null>;
  expires_at: Date | null;
  /** No longer written (migration 0012 moved last use to `token_last_used`); read as the earlier bound. */
  last_used_at: Date | null;
  revoked_at: Date | null;
  revoked_by: string | null;
  revoke_reason: string | null;
  /** Migration 0011: canonical CIDRs the token may be used from; empty: any. */
  allowed_networks: ColumnType<string[], string[] | undefined, string[]>;
  /** Migration 0011: the token's own rate limit, both set or both null. */
  rate_limit_requests: ColumnType<number | null, number | null | undefined, number | null>;
  rate_limit_window_ms: ColumnType<number | null, number | null | undefined, number | null>;
  /** Migration 0010: the token this one replaced through rotation. */
  predecessor_id: ColumnType<string | null, string | null | undefined, string | null>;
  /** Migration 0010: the token that replaced this one through rotation. */
  successor_id: ColumnType<string | null, string | null | undefined, string | null>;
  /** Migration 0010: when a rotated token's grace period ends. */
  scheduled_revoke_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
  /** Migration 0010: revoke this token at its successor's first use. */
  revoke_on_successor_use: ColumnType<boolean, boolean | undefined, boolean>;
  /** Migration 0010: when the successor was first used. */
  successor_used_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
}

/** The `bulk_revocations` table (migration 0010): one row per `RevokeTokens` operation. */
export interface BulkRevocationsTable {
  id: string;
  environment: Environment;
  subject: string | null;
  team: string | null;
  issued_by_token_id: string | null;
  name: string | null;
  created_before: Date | null;
  expire_before: Date | null;
  reason: string;
  requested_by: string;
  caller_token_id: string | null;
  started_at: Date;
  lease_until: Date;
  /** `bigint`: a string from `pg`, a number from PGlite. */
  revoked_count: ColumnType<string | number | bigint, number | undefined, number>;
  finished_at: Date | null;
}

/** The `security_events` table: folded occurrences of one event. */
export interface SecurityEventsTable {
  id: string;
  type: string;
  severity: Severity;
  /** Generated from `severity` (info 1, warning 2, critical 3) so "at least warning" is a range test. */
  severity_rank: GeneratedAlways<number>;
  first_seen: Date;
  last_seen: Date;
  /** `bigint`: a string from `pg`, a number from PGlite; written as a number. */
  count: ColumnType<string | number | bigint, number, number>;
  service_environment: Environment;
  token_environment: Environment | null;
  caller_token_id: string | null;
  caller_subject: string | null;
  peer: string | null;
  user_agent: string | null;
  token_hint: string | null;
  token_id: string | null;
  method: string | null;
  message: string;
  /** Migration 0008: a few distinct display hints of a folded row, when it had several. */
  token_hint_sample: string[] | null;
  /** Migration 0008: distinct display hints of a folded row (estimated above 64), when it had several. */
  distinct_token_hints: number | null;
  /** Migration 0008: a few distinct user agents of a folded row, when it had several. */
  user_agent_sample: string[] | null;
  /** Migration 0008: distinct user agents of a folded row, when it had several. */
  distinct_user_agents: number | null;
  /** Migration 0008: on an overflow row, how many distinct actors it folded. */
  folded_sources: number | null;
}

/** The `legacy_jwt_revocations` table: revoked legacy JWT ids. */
export interface LegacyJwtRevocationsTable {
  jti: string;
  revoked_at: Date;
  revoked_by: string;
  revoke_reason: string;
  expires_at: Date | null;
}

/** The `legacy_jwt_usage` table: who still sends legacy JWTs. */
export interface LegacyJwtUsageTable {
  subject: string;
  /** `bigint`: a string from `pg`, a number from PGlite. */
  introspections: ColumnType<string | number | bigint, number, never>;
  first_seen: Date;
  last_seen: Date;
}

/** The `signing_keys` table: backend JWT keys. */
export interface SigningKeysTable {
  kid: string;
  alg: "ES256" | "EdDSA";
  /** Plaintext private JWK: only rows from before migration 0005 (or old replicas), until wrapped. Written as JSON text. */
  private_jwk: ColumnType<Record<string, unknown> | null, string | null, string | null>;
  /** The private JWK encrypted under the key-encryption key `kek_id` (see `src/keys/key-wrap.ts`). */
  private_key_wrapped: Uint8Array | null;
  /** Fingerprint of the key-encryption key that wrapped `private_key_wrapped`. */
  kek_id: string | null;
  /** Written as JSON text, read back as an object. */
  public_jwk: ColumnType<Record<string, unknown>, string, string>;
  created_at: Date;
  activates_at: Date;
}

/** The `server_secrets` table: secrets every replica shares (the page-token key). */
export interface ServerSecretsTable {
  name: string;
  secret: Uint8Array;
  created_at: ColumnType<Date, never, never>;
}

/** The `revocation_log_counter` table (migration 0009): one row, the last position handed out and the pruning mark. */
export interface RevocationLogCounterTable {
  singleton: boolean;
  /** `bigint`: a string from `pg`, a number from PGlite. */
  position: ColumnType<string | number, never, never>;
  pruned_through: ColumnType<string | number, never, never>;
}

/** The `revocation_log` table (migration 0009): one row per revocation, by position. */
export interface RevocationLogTable {
  position: ColumnType<string | number, never, never>;
  kind: "token" | "legacy_jti";
  subject_id: string;
  digest: Uint8Array | null;
  logged_at: Date;
}

/** The `token_last_used` table (migration 0012): when each token was last used, apart from its row. */
export interface TokenLastUsedTable {
  token_id: string;
  last_used_at: Date;
}

/** Every table the service owns (Kysely's migration tables are Kysely's). */
export interface Database {
  tokens: TokensTable;
  token_last_used: TokenLastUsedTable;
  security_events: SecurityEventsTable;
  legacy_jwt_revocations: LegacyJwtRevocationsTable;
  legacy_jwt_usage: LegacyJwtUsageTable;
  signing_keys: SigningKeysTable;
  server_secrets: ServerSecretsTable;
  revocation_log_counter: RevocationLogCounterTable;
  revocation_log: RevocationLogTable;
  bulk_revocations: BulkRevocationsTable;
}
