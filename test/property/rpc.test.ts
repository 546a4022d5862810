import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { Code, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import {
  IssueTokenRequestSchema,
  ListSecurityEventsRequestSchema,
  ListTokensRequestSchema,
  RevokeTokenRequestSchema,
  TokenService,
} from "../../gen/tokens/v1/token_service_pb.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { TokenServiceHandler } from "../../src/rpc/token-service.js";
import { fakeDeps } from "../support/fakes.js";
import { LEGACY_POLICY, NOW, jwtish } from "./jwt-arbitraries.js";
import { anyIssue, pageToken } from "./requests.js";
import {
  counted,
  expectCleanRefusal,
  int32,
  nanos,
  nastyString,
  outcome,
  params,
  reportCases,
  secondsAndNanos,
  stringsIn,
  timeout,
} from "./support.js";

/**
 * Every RPC of tokens.v1.TokenService, through the real handler, auth, domain
 * and error table on Connect's in-memory transport (requests are encoded and
 * decoded as on the wire). Each case checks the code (the exact one where the
 * input decides it), that bad input never gets a server fault, that a refused
 * IssueToken writes nothing, and that no error repeats what was sent.
 */
reportCases("rpc.test.ts");

const DAY = 86_400_000;
const MAX_TTL = 365 * DAY;
// RFC 6749 §3.3 scope-token, the label and metadata-key alphabets, and controls, as the service defines them.
const SCOPE = /^[\x21\x23-\x5B\x5D-\x7E]{1,128}$/;
const LABEL = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

type Fixture = Awaited<ReturnType<typeof setup>>;

async function setup() {
  const f = fakeDeps({ maxActiveTokensPerSubject: 1_000_000_000 }, LEGACY_POLICY);
  f.clock.current = NOW;
  const transport = createRouterTransport(({ service }) => service(TokenService, new TokenServiceHandler(f.deps)));
  const client: Client<typeof TokenService> = createClient(TokenService, transport);
  const admin = (await bootstrapAdmin(f.deps, "admin@example.com", "cli")).token;
  const limited = (
    await client.issueToken(
      { name: "limited", subject: "bob@example.com", scopes: ["tokens.create", "tokens.read", "tokens.introspect", "tokens.revoke", "orders.read"], teams: ["red"], namespaces: ["ns1"], expiry: { case: "ttl", value: { seconds: 30n * 86_400n, nanos: 0 } } },
      { headers: { authorization: `Bearer ${admin}` } },
    )
  ).token;
  return { ...f, client, admin, limited };
}

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

/** The request as the server sees it: encoded and decoded (lone surrogates become U+FFFD). */
function onWire<D extends DescMessage>(schema: D, init: MessageInitShape<D>): MessageShape<D> {
  return fromBinary(schema, toBinary(schema, create(schema, init)));
}

async function settle(call: Promise<unknown>): Promise<{ code: Code | "ok"; message: string; value?: unknown }> {
  try {
    return { code: "ok", message: "", value: await call };
  } catch (error) {
    return outcome(error);
  }
}

// ------------------------------------------------------------------ values

const text = (max: number) =>
  fc.string({ unit: fc.constantFrom("a", "Z", "0", " ", "é", "ß", "中", "🙂", "-", "_", ".", "@"), minLength: 1, maxLength: max }).filter((s) => s.trim() !== "");
const scope = fc.stringMatching(/^[\x21\x23-\x5B\x5D-\x7E]{1,16}$/);
const label = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,15}$/);
const metaKey = fc.stringMatching(/^[A-Za-z0-9_.-]{1,16}$/);

const validTtl = fc.integer({ min: 1, max: MAX_TTL / 1000 }).chain((s) => fc.record({ seconds: fc.constant(BigInt(s)), nanos: s === MAX_TTL / 1000 ? fc.constant(0) : fc.integer({ min: 0, max: 999_999_999 }) }));
// NOW is a whole second and MAX_TTL whole days, so rounding up stays within [1s, MAX_TTL].
const validExpire = fc.integer({ min: 1000, max: MAX_TTL }).map((ahead) => ({ seconds: BigInt(Math.ceil((NOW.getTime() + ahead) / 1000)), nanos: 0 }));

/** Whether a Duration is a valid ttl, computed apart from the service's own code. */
function ttlValid(d: { seconds: bigint; nanos: number }): boolean {
  if (d.seconds > 315_576_000_000n || d.seconds < -315_576_000_000n || d.nanos > 999_999_999 || d.nanos < -999_999_999) return false;
  if ((d.seconds > 0n && d.nanos < 0) || (d.seconds < 0n && d.nanos > 0)) return false;
  const ms = Number(d.seconds) * 1000 + Math.trunc(d.nanos / 1e6);
  return ms >= 1000 && ms <= MAX_TTL;
}
/** Whether a Timestamp is a valid expire_time. */
function expireValid(t: { seconds: bigint; nanos: number }): boolean {
  if (t.seconds < -62_135_596_800n || t.seconds > 253_402_300_799n || t.nanos < 0 || t.nanos > 999_999_999) return false;
  const ahead = Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6) - NOW.getTime();
  return ahead >= 1000 && ahead <= MAX_TTL;
}

const validIssue = fc.record({
  name: text(40),
  scopes: fc.array(scope, { maxLength: 4 }),
  teams: fc.array(label, { maxLength: 4 }),
  namespaces: fc.array(label, { maxLength: 4 }),
  metadata: fc.dictionary(metaKey, text(30), { maxKeys: 4 }),
  subject: fc.oneof(fc.constant(""), text(40)),
  fullName: fc.oneof(fc.constant(""), text(40)),
  isAdmin: fc.boolean(),
  expiry: fc.oneof(
    fc.constant({ case: undefined }),
    validTtl.map((value) => ({ case: "ttl" as const, value })),
    validExpire.map((value) => ({ case: "expireTime" as const, value })),
  ),
});

const controlChar = fc.constantFrom("\u0000", "\n", "\r", "\u001b", "\u007f", "\u0085", "\u009f", "\u2028", "\u2029");
// The control character sits inside the value: leading and trailing whitespace is trimmed first.
const withControl = fc.tuple(text(20), controlChar, fc.string({ maxLength: 5 })).map(([a, c, b]) => `${a}${c}z${b}`);
const badScope = fc.oneof(fc.constantFrom("", "a b", 'q"', "back\\slash", "é", "x".repeat(129), "\u0000"), nastyString.filter((s) => !SCOPE.test(s)));
const badLabel = fc.oneof(fc.constantFrom("", "-x", ".x", "a b", "x".repeat(129), "ü"), nastyString.filter((s) => !LABEL.test(s)));

type Mutation = { field: string; apply: (r: MessageInitShape<typeof IssueTokenRequestSchema>) => void };
const insertAt = <T,>(list: T[] | undefined, index: number, value: T) => {
  const out = [...(list ?? [])];
  out.splice(index % (out.length + 1), 0, value);
  return out;
};

/** One rule of IssueToken broken, and the field the refusal must name. */
const issueMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.oneof(fc.constantFrom("", "   ", "\u3000", "x".repeat(129)), withControl).map((v): Mutation => ({ field: "name", apply: (r) => void (r.name = v) })),
  fc.tuple(badScope, fc.nat()).map(([v, i]): Mutation => ({ field: "scopes", apply: (r) => void (r.scopes = insertAt(r.scopes, i, v)) })),
  fc.constant<Mutation>({ field: "scopes", apply: (r) => void (r.scopes = Array.from({ length: 65 }, (_, i) => `s${i}`)) }),
  fc.tuple(badLabel, fc.nat()).map(([v, i]): Mutation => ({ field: "teams", apply: (r) => void (r.teams = insertAt(r.teams, i, v)) })),
  fc.tuple(badLabel, fc.nat()).map(([v, i]): Mutation => ({ field: "namespaces", apply: (r) => void (r.namespaces = insertAt(r.namespaces, i, v)) })),
  fc.constant<Mutation>({ field: "namespaces", apply: (r) => void (r.namespaces = Array.from({ length: 65 }, (_, i) => `n${i}`)) }),
  fc.oneof(fc.constantFrom("", "a b", "x".repeat(65), "ключ", "cfprd-0123456789abcdefghijKL"), nastyString).filter((k) => !/^[A-Za-z0-9_.-]{1,64}$/.test(k)).map((k): Mutation => ({ field: "metadata", apply: (r) => void (r.metadata = { ...r.metadata, [k]: "v" }) })),
  fc.oneof(fc.constant("v".repeat(513)), withControl).map((v): Mutation => ({ field: "metadata", apply: (r) => void (r.metadata = { ...r.metadata, okkey: v }) })),
  fc.constant<Mutation>({ field: "metadata", apply: (r) => void (r.metadata = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, "v"]))) }),
  fc.oneof(secondsAndNanos, fc.record({ seconds: fc.bigInt(-10n, 400n * 86_400n), nanos })).filter((d) => !ttlValid(d)).map((value): Mutation => ({ field: "ttl", apply: (r) => void (r.expiry = { case: "ttl", value }) })),
  fc.oneof(secondsAndNanos, fc.record({ seconds: fc.bigInt(BigInt(NOW.getTime() / 1000) - 10n, BigInt(NOW.getTime() / 1000) + 400n * 86_400n), nanos })).filter((t) => !expireValid(t)).map((value): Mutation => ({ field: "expire_time", apply: (r) => void (r.expiry = { case: "expireTime", value }) })),
  fc.oneof(fc.constant("s".repeat(257)), withControl).map((v): Mutation => ({ field: "subject", apply: (r) => void (r.subject = v) })),
  fc.oneof(fc.constant("f".repeat(257)), withControl).map((v): Mutation => ({ field: "full_name", apply: (r) => void (r.fullName = v) })),
);

// ------------------------------------------------------------------ properties

describe("every RPC, on the in-memory transport", () => {
  let s: Fixture;
  /** Drops a token a case issued, so the in-memory store (scanned per insert) stays small. */
  const forget = (answer: unknown) => {
    const id = (answer as { info?: { id: string } } | undefined)?.info?.id;
    if (id !== undefined) s.store.rows.delete(id);
  };
  beforeAll(async () => {
    s = await setup();
  });

  it("IssueToken: a valid request is issued; one broken rule is INVALID_ARGUMENT naming that field and writes nothing", async () => {
    await fc.assert(
      fc.asyncProperty(validIssue, fc.option(issueMutation, { freq: 3 }), async (base, mutation) => {
        counted();
        const init = structuredClone(base) as MessageInitShape<typeof IssueTokenRequestSchema>;
        mutation?.apply(init);
        const before = s.store.rows.size;
        const got = await settle(s.client.issueToken(init, as(s.admin)));
        const presented = stringsIn(init);
        if (mutation === null) {
          expectCleanRefusal(got, presented, ["ok"], init);
          expect(s.store.rows.size).toBe(before + 1);
          forget(got.value);
        } else {
          expectCleanRefusal(got, presented, [Code.InvalidArgument], init);
          expect(got.message.startsWith(mutation.field), `"${got.message}" names ${mutation.field}`).toBe(true);
          expect(s.store.rows.size).toBe(before);
        }
      }),
      params(4_000),
    );
  }, timeout(120_000));

  it("IssueToken: anything at all, by an admin or a limited caller, is issued or refused cleanly, and a refusal writes nothing", async () => {
    await fc.assert(
      fc.asyncProperty(anyIssue, fc.boolean(), async (init, byAdmin) => {
        counted();
        const before = s.store.rows.size;
        const got = await settle(s.client.issueToken(init as MessageInitShape<typeof IssueTokenRequestSchema>, as(byAdmin ? s.admin : s.limited)));
        expectCleanRefusal(got, stringsIn(init), byAdmin ? ["ok", Code.InvalidArgument] : ["ok", Code.InvalidArgument, Code.PermissionDenied], init);
        expect(s.store.rows.size).toBe(got.code === "ok" ? before + 1 : before);
        forget(got.value);
      }),
      params(4_000),
    );
  }, timeout(120_000));

  it("IntrospectToken: any value is answered (inactive unless it verifies), refused only when empty or oversized", async () => {
    const token = fc.oneof({ weight: 3, arbitrary: nastyString }, { weight: 2, arbitrary: jwtish }, { weight: 1, arbitrary: fc.constantFrom("x".repeat(4096), "y".repeat(4097)) });
    const hint = fc.oneof(fc.constantFrom("", "access_token", "refresh_token", "h".repeat(65)), nastyString);
    await fc.assert(
      fc.asyncProperty(token, hint, fc.boolean(), async (t, h, jwt) => {
        counted();
        const req = onWire(TokenService.method.introspectToken.input, { token: t, tokenTypeHint: h, includeBackendJwt: jwt });
        const got = await settle(s.client.introspectToken(req, as(s.admin)));
        const presented = [req.token, req.tokenTypeHint, ...req.token.split(".")];
        const expected = req.token === "" || req.token.length > 4096 ? Code.InvalidArgument : req.tokenTypeHint.length > 64 ? Code.InvalidArgument : "ok";
        expectCleanRefusal(got, presented, [expected], req);
        if (got.code === "ok") {
          const answer = got.value as { active: boolean; message: string };
          expectCleanRefusal({ code: "ok", message: answer.message }, presented, ["ok"], req);
        }
      }),
      params(5_000),
    );
  }, timeout(120_000));

  it("RevokeToken: any target and reason gets the code the input decides", async () => {
    const target = fc.oneof(
      fc.constant({ case: undefined }),
      fc.oneof(nastyString, jwtish).map((value) => ({ case: "token" as const, value })),
      fc.oneof(nastyString, fc.uuid()).map((value) => ({ case: "tokenId" as const, value })),
      nastyString.map((value) => ({ case: "legacyJti" as const, value })),
    );
    const reason = fc.oneof(fc.constant(""), nastyString, withControl, fc.constant("r".repeat(513)));
    await fc.assert(
      fc.asyncProperty(target, reason, async (t, r) => {
        counted();
        const req = onWire(RevokeTokenRequestSchema, { target: t, reason: r } as MessageInitShape<typeof RevokeTokenRequestSchema>);
        const got = await settle(s.client.revokeToken(req, as(s.admin)));
        const value = req.target.value ?? "";
        const expected = ((): Code | "ok" => {
          if (req.target.case === undefined) return Code.InvalidArgument;
          if (req.reason.length > 512 || CONTROL.test(req.reason)) return Code.InvalidArgument;
          switch (req.target.case) {
            case "token":
              return value === "" || value.length > 4096 ? Code.InvalidArgument : "ok";
            case "tokenId":
              return UUID.test(value) ? Code.NotFound : Code.InvalidArgument;
            case "legacyJti": {
              const jti = value.trim();
              return jti === "" || jti.length > 256 || CONTROL.test(jti) ? Code.InvalidArgument : "ok";
            }
          }
        })();
        // A validly signed legacy JWT without a jti cannot be revoked on its own.
        const allowed: (Code | "ok")[] = req.target.case === "token" && expected === "ok" ? ["ok", Code.FailedPrecondition] : [expected];
        expectCleanRefusal(got, [...stringsIn(req), ...value.split(".")], allowed, req);
      }),
      params(5_000),
    );
  }, timeout(120_000));

  it("ListTokens: any filters, page size and page token get the code the input decides", async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.constant(""), nastyString, text(20)), fc.oneof(fc.constant(""), label, nastyString), fc.boolean(), fc.boolean(), int32, pageToken, fc.boolean(), async (subject, team, r, e, pageSize, token, byAdmin) => {
        counted();
        const req = onWire(ListTokensRequestSchema, { subject, team, includeRevoked: r, includeExpired: e, pageSize, pageToken: token });
        const got = await settle(s.client.listTokens(req, as(byAdmin ? s.admin : s.limited)));
        const subjectOk = req.subject.length <= 256 && !CONTROL.test(req.subject);
        const teamOk = req.team === "" || LABEL.test(req.team);
        const sizeOk = req.pageSize >= 0 && req.pageSize <= 500;
        const other = req.subject.trim() !== "" && req.subject.trim() !== "bob@example.com";
        const expected = !subjectOk || !teamOk || !sizeOk ? Code.InvalidArgument : !byAdmin && other ? Code.PermissionDenied : req.pageToken !== "" ? Code.InvalidArgument : "ok";
        expectCleanRefusal(got, stringsIn(req), [expected], req);
      }),
      params(4_000),
    );
  }, timeout(120_000));

  it("ListSecurityEvents: any type, severity, since, page size and page token get the code the input decides", async () => {
    const since = fc.option(fc.oneof(secondsAndNanos, fc.record({ seconds: fc.bigInt(0n, 2_000_000_000n), nanos: fc.integer({ min: 0, max: 999_999_999 }) })), { nil: undefined });
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.constant(""), nastyString), fc.oneof(fc.constantFrom(0, 1, 2, 3, 4, -1), int32), since, int32, pageToken, fc.boolean(), async (type, minSeverity, sinceValue, pageSize, token, byAdmin) => {
        counted();
        const req = onWire(ListSecurityEventsRequestSchema, { type, minSeverity, ...(sinceValue ? { since: sinceValue } : {}), pageSize, pageToken: token });
        const got = await settle(s.client.listSecurityEvents(req, as(byAdmin ? s.admin : s.limited)));
        const t = req.since;
        const sinceOk = t === undefined || (t.seconds >= -62_135_596_800n && t.seconds <= 253_402_300_799n && t.nanos >= 0 && t.nanos <= 999_999_999);
        const expected =
          req.minSeverity < 0 || req.minSeverity > 3
            ? Code.InvalidArgument
            : !byAdmin
              ? Code.PermissionDenied
              : req.type.length > 64 || CONTROL.test(req.type) || req.pageSize < 0 || req.pageSize > 500 || !sinceOk || req.pageToken !== ""
                ? Code.InvalidArgument
                : "ok";
        expectCleanRefusal(got, stringsIn(req), [expected], req);
      }),
      params(4_000),
    );
  }, timeout(120_000));

  it("ListLegacyJwtUsage: any page size and page token get the code the input decides", async () => {
    await fc.assert(
      fc.asyncProperty(int32, pageToken, fc.boolean(), async (pageSize, token, byAdmin) => {
        counted();
        const req = onWire(TokenService.method.listLegacyJwtUsage.input, { pageSize, pageToken: token });
        const got = await settle(s.client.listLegacyJwtUsage(req, as(byAdmin ? s.admin : s.limited)));
        const expected = !byAdmin ? Code.PermissionDenied : req.pageSize < 0 || req.pageSize > 500 || req.pageToken !== "" ? Code.InvalidArgument : "ok";
        expectCleanRefusal(got, stringsIn(req), [expected], req);
      }),
      params(2_000),
    );
  }, timeout(120_000));

  it("WatchRevocations: any heartbeat interval opens the stream or is INVALID_ARGUMENT naming heartbeat_interval", async () => {
    const interval = fc.option(fc.oneof(secondsAndNanos, fc.record({ seconds: fc.bigInt(-2n, 70n), nanos })), { nil: undefined });
    await fc.assert(
      fc.asyncProperty(interval, async (heartbeatInterval) => {
        counted();
        // The client cancels the stream once it has its answer, as a gateway
        // closing a stream does (the server hands back the caller's stream slot).
        const cancel = new AbortController();
        const got = await settle(
          (async () => {
            try {
              for await (const event of s.client.watchRevocations(heartbeatInterval ? { heartbeatInterval } : {}, { ...as(s.admin), signal: cancel.signal })) return event;
              return undefined;
            } finally {
              cancel.abort();
            }
          })(),
        );
        const d = heartbeatInterval;
        let ok = true;
        if (d !== undefined) {
          const shapeOk = d.seconds <= 315_576_000_000n && d.seconds >= -315_576_000_000n && Math.abs(d.nanos) <= 999_999_999 && !(d.seconds > 0n && d.nanos < 0) && !(d.seconds < 0n && d.nanos > 0);
          const ms = Number(d.seconds) * 1000 + Math.trunc(d.nanos / 1e6);
          ok = shapeOk && ms >= 100 && ms <= 60_000;
        }
        expectCleanRefusal(got, [], [ok ? "ok" : Code.InvalidArgument], heartbeatInterval);
        if (!ok) expect(got.message).toMatch(/^heartbeat_interval: /);
      }),
      params(2_000),
    );
  }, timeout(120_000));

  it("any method with any Authorization header but a token of ours is UNAUTHENTICATED, without repeating the header", async () => {
    const header = fc.oneof(
      fc.tuple(fc.constantFrom("Bearer ", "bearer ", "BEARER  ", "Basic ", "Bearer", "", "Token "), fc.oneof(fc.stringMatching(/^[\x21-\x7E]{0,60}$/), fc.stringMatching(/^(cf|cfstg|cfprd)-[0-9A-Za-z]{22}$/))).map(([p, v]) => p + v),
      fc.stringMatching(/^[\x20-\x7E]{0,80}$/),
    );
    const method = fc.constantFrom("issueToken", "introspectToken", "revokeToken", "listTokens", "listSecurityEvents", "listLegacyJwtUsage", "getJwks", "watchRevocations");
    await fc.assert(
      fc.asyncProperty(header, method, async (authorization, name) => {
        counted();
        const options = { headers: { authorization } };
        const call = ((): Promise<unknown> => {
          switch (name) {
            case "issueToken":
              return s.client.issueToken({ name: "x" }, options);
            case "introspectToken":
              return s.client.introspectToken({ token: "cf-0000000000000000000000" }, options);
            case "revokeToken":
              return s.client.revokeToken({ target: { case: "tokenId", value: "00000000-0000-4000-8000-000000000000" } }, options);
            case "listTokens":
              return s.client.listTokens({}, options);
            case "listSecurityEvents":
              return s.client.listSecurityEvents({}, options);
            case "listLegacyJwtUsage":
              return s.client.listLegacyJwtUsage({}, options);
            case "getJwks":
              return s.client.getJwks({}, options);
            default:
              return (async () => {
                for await (const _ of s.client.watchRevocations({}, options)) break;
              })();
          }
        })();
        const got = await settle(call);
        expectCleanRefusal(got, [authorization, ...authorization.split(/\s+/)], [Code.Unauthenticated], { name, authorization });
      }),
      params(3_000),
    );
  }, timeout(120_000));

  it("garbage protobuf: whatever random bytes decode to is answered cleanly by every method", async () => {
    const methods = [
      TokenService.method.issueToken,
      TokenService.method.introspectToken,
      TokenService.method.revokeToken,
      TokenService.method.listTokens,
      TokenService.method.listSecurityEvents,
      TokenService.method.listLegacyJwtUsage,
      TokenService.method.getJwks,
    ] as const;
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 80 }),
      // Field keys the messages have, followed by random payloads: decodes far more often than pure noise.
      fc.array(fc.tuple(fc.integer({ min: 1, max: 12 }), fc.constantFrom(0, 1, 2, 5), fc.uint8Array({ maxLength: 12 })), { maxLength: 6 }).map((fields) => {
        const out: number[] = [];
        for (const [no, wire, payload] of fields) {
          out.push((no << 3) | wire);
          if (wire === 2) out.push(payload.length);
          out.push(...(wire === 0 ? [...payload.slice(0, 10)].map((b, i, a) => (i < a.length - 1 ? b | 0x80 : b & 0x7f)).concat(payload.length === 0 ? [0] : []) : wire === 1 ? [...payload, 0, 0, 0, 0, 0, 0, 0, 0].slice(0, 8) : wire === 5 ? [...payload, 0, 0, 0, 0].slice(0, 4) : [...payload]));
        }
        return Uint8Array.from(out);
      }),
    );
    await fc.assert(
      fc.asyncProperty(fc.nat(methods.length - 1), bytes, async (which, raw) => {
        counted();
        const method = methods[which]!;
        let request: MessageShape<typeof method.input>;
        try {
          request = fromBinary(method.input, raw);
        } catch (error) {
          // Not a message at all: the transports refuse it (see transports.test.ts).
          expect(error).toBeInstanceOf(Error);
          return;
        }
        const before = s.store.rows.size;
        const call = (s.client as unknown as Record<string, (r: unknown, o: unknown) => Promise<unknown>>)[method.localName]!(request, as(s.admin));
        const got = await settle(call);
        expectCleanRefusal(got, stringsIn(request), ["ok", Code.InvalidArgument, Code.NotFound, Code.FailedPrecondition], { method: method.name, request });
        if (method === TokenService.method.issueToken) {
          expect(s.store.rows.size).toBe(got.code === "ok" ? before + 1 : before);
          forget(got.value);
        }
      }),
      params(4_000),
    );
  }, timeout(120_000));
});
