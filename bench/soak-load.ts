/**
 * The soak test's load generator (a child process of bench/soak.ts, so its
 * CPU and event-loop lag never delay the runner's revocation checks).
 *
 * Two modes:
 * - `capacity`: closed loop, the same mix spread over every replica,
 *   `concurrency` calls in flight, for `seconds`; prints one
 *   `{"capacity": …}` line.
 * - `soak`: open loop at `rate` calls/s for `seconds`, a weighted mix of
 *   operations spread over the replicas and credentials; prints one
 *   `{"interval": …}` line every `intervalSeconds` and a `{"done": …}` line.
 *   It pauses on a `pause` line on stdin (answering `{"paused": true}` once
 *   nothing is in flight) and carries on at `resume`.
 *
 * Open loop means calls are started on a fixed schedule whatever the answers
 * do, and each call's latency is counted from when it was due, not from when
 * the generator got round to sending it: a stall shows up as latency instead
 * of silently lowering the load (coordinated omission).
 *
 * Calls are prepared gRPC frames written straight onto `node:http2` streams
 * (as bench/h2-load.ts does), decoded with the service's generated schemas.
 *
 * Usage: node dist/bench/soak-load.js '<json SoakLoadInput>'
 */
import { readFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import { createInterface } from "node:readline";
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import {
  IntrospectTokenRequestSchema,
  IntrospectTokenResponseSchema,
  IssueTokenRequestSchema,
  IssueTokenResponseSchema,
  ListTokensRequestSchema,
  ListTokensResponseSchema,
  RevokeTokenRequestSchema,
  RevokeTokenResponseSchema,
} from "../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../src/domain/token-format.js";
import { quantile } from "./common.js";

/** The operations of the mix. */
export const OPERATIONS = ["introspect_hit", "introspect_miss", "introspect_fresh", "issue", "revoke", "list"] as const;
/** One operation of the mix. */
export type Operation = (typeof OPERATIONS)[number];

/** What the runner asks for. */
export interface SoakLoadInput {
  readonly mode: "capacity" | "soak";
  /** gRPC ports of the replicas, on 127.0.0.1. */
  readonly grpcPorts: readonly number[];
  /** Caller tokens with `tokens.introspect` (introspections rotate over them). */
  readonly gateways: readonly string[];
  /** Admin caller tokens (issue, revoke and list rotate over them). */
  readonly admins: readonly string[];
  /** JSON file: array of seeded, active tokens (the cache-hit working set). */
  readonly hotTokensFile: string;
  readonly seconds: number;
  /** capacity: calls in flight in total (closed loop). */
  readonly concurrency: number;
  /** soak: calls started per second, in total. */
  readonly rate: number;
  /** soak: weight of each operation (need not add up to 100). */
  readonly mix: Readonly<Record<Operation, number>>;
  readonly intervalSeconds: number;
  /** The service's CACHE_STALENESS: an issued-then-revoked token answered active later than this after its revocation was acknowledged is a violation. */
  readonly stalenessMs: number;
  /** Most issued tokens kept for introspect_fresh and revoke (the oldest go first). */
  readonly liveMax: number;
  /** HTTP/2 connections per replica. */
  readonly connectionsPerReplica: number;
  /** Open loop: calls in flight beyond this are not started (counted as `shed`, a failure). */
  readonly maxInFlight: number;
  /** Per-call deadline (sent as grpc-timeout and enforced here). */
  readonly deadlineMs: number;
}

/** Figures of one operation over one interval. */
export interface OperationFigures {
  /** Calls answered (any way). */
  n: number;
  /** Calls that failed: a gRPC status other than OK and RESOURCE_EXHAUSTED, a transport failure, a timeout, or a wrong answer. */
  errors: number;
  /** RESOURCE_EXHAUSTED answers (rate limits), kept apart from errors. */
  exhausted: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** One interval of the soak. */
export interface IntervalReport {
  /** Seconds since the load started, at the end of the interval. */
  readonly t: number;
  readonly seconds: number;
  readonly ops: Record<Operation, OperationFigures>;
  /** Calls not started because `maxInFlight` were in flight. */
  readonly shed: number;
  /** Issued-then-revoked tokens answered active more than `stalenessMs` after the revocation was acknowledged. */
  readonly staleAccepted: number;
  readonly inFlightAtEnd: number;
  /** Issued tokens tracked for introspect_fresh and revoke. */
  readonly live: number;
  readonly loaderCpuPercent: number;
  /** Up to five failure descriptions (status and message, truncated), for the log. */
  readonly samples: readonly string[];
}

/** The whole soak, per operation. */
export interface DoneReport {
  /** Calls the schedule asked for (started or shed). */
  readonly scheduled: number;
  readonly seconds: number;
  readonly loaderCpuPercent: number;
  readonly ops: Record<Operation, OperationFigures>;
}

/** Closed-loop capacity figures: the same mix, back to back. */
export interface CapacityReport {
  readonly calls: number;
  readonly seconds: number;
  readonly rate: number;
  readonly errors: number;
  readonly exhausted: number;
  readonly staleAccepted: number;
  readonly ops: Record<Operation, OperationFigures>;
  readonly loaderCpuPercent: number;
  readonly samples: readonly string[];
}

const SERVICE = "/tokens.v1.TokenService/";
const STATUS_OK = "0";
const STATUS_RESOURCE_EXHAUSTED = "8";

function frame(message: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

function connect(port: number): Promise<http2.ClientHttp2Session> {
  return new Promise((done, fail) => {
    // No Nagle: HEADERS and DATA of one call must not wait for a delayed ACK.
    const session = http2.connect(`http://127.0.0.1:${port}`, { createConnection: () => net.connect({ host: "127.0.0.1", port, noDelay: true }) });
    session.once("connect", () => done(session));
    session.once("error", fail);
  });
}

/** How one call ended. */
interface Outcome {
  /** grpc-status, or "transport" / "timeout". */
  readonly status: string;
  readonly message: string;
  /** The response message (without the 5-byte frame header), when OK. */
  readonly body: Buffer | undefined;
}

class Replicas {
  private next = 0;
  private readonly headers = new Map<string, http2.OutgoingHttpHeaders>();

  constructor(
    private readonly sessions: http2.ClientHttp2Session[][],
    private readonly deadlineMs: number,
  ) {}

  get count(): number {
    return this.sessions.length;
  }

  /** One unary call on replica `replica` (a round-robin connection of it). */
  call(replica: number, method: string, caller: string, body: Buffer): Promise<Outcome> {
    const key = `${method} ${caller}`;
    let headers = this.headers.get(key);
    if (headers === undefined) {
      headers = {
        ":method": "POST",
        ":path": SERVICE + method,
        "content-type": "application/grpc",
        te: "trailers",
        "grpc-timeout": `${this.deadlineMs}m`,
        authorization: `Bearer ${caller}`,
      };
      this.headers.set(key, headers);
    }
    const pool = this.sessions[replica]!;
    const session = pool[this.next++ % pool.length]!;
    return new Promise((finish) => {
      let status: string | undefined;
      let message = "";
      const chunks: Buffer[] = [];
      let settled = false;
      const end = (outcome: Outcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        finish(outcome);
      };
      const take = (h: http2.IncomingHttpHeaders) => {
        const s = h["grpc-status"];
        if (typeof s === "string") status = s;
        const m = h["grpc-message"];
        if (typeof m === "string") message = safeDecode(m);
      };
      let stream: http2.ClientHttp2Stream;
      try {
        stream = session.request(headers);
      } catch (error) {
        finish({ status: "transport", message: error instanceof Error ? error.message : String(error), body: undefined });
        return;
      }
      const timer = setTimeout(() => {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        end({ status: "timeout", message: `no answer within ${this.deadlineMs + 2000} ms`, body: undefined });
      }, this.deadlineMs + 2000);
      stream.on("response", take);
      stream.on("trailers", take);
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      let failure: string | undefined;
      stream.on("error", (error) => {
        failure = error.message;
      });
      stream.on("close", () => {
        if (failure !== undefined || stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) {
          end({ status: "transport", message: failure ?? `stream reset ${stream.rstCode}`, body: undefined });
          return;
        }
        const all = Buffer.concat(chunks);
        end({ status: status ?? "missing", message, body: status === STATUS_OK && all.length >= 5 ? all.subarray(5, 5 + all.readUInt32BE(1)) : undefined });
      });
      stream.end(body);
    });
  }

  close(): void {
    for (const pool of this.sessions) for (const session of pool) session.close();
  }
}

function safeDecode(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

function encode<S extends DescMessage>(schema: S, init: MessageInitShape<S>): Buffer {
  return frame(toBinary(schema, create(schema, init)));
}

function decode<S extends DescMessage>(schema: S, body: Buffer | undefined): MessageShape<S> {
  return fromBinary(schema, body ?? new Uint8Array());
}

/** A growable list of latencies. */
class Latencies {
  private values = new Float64Array(1024);
  n = 0;

  add(ms: number): void {
    if (this.n === this.values.length) {
      const grown = new Float64Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.n++] = ms;
  }

  /** Sorts in place and returns the sorted values. */
  sorted(): Float64Array {
    return this.values.subarray(0, this.n).sort();
  }
}

function figures(latencies: Latencies, errors: number, exhausted: number): OperationFigures {
  const sorted = latencies.sorted();
  return {
    n: sorted.length,
    errors,
    exhausted,
    p50Ms: round3(quantile(sorted, 0.5)),
    p99Ms: round3(quantile(sorted, 0.99)),
    maxMs: round3(sorted.length > 0 ? sorted[sorted.length - 1]! : Number.NaN),
  };
}

/** Latencies and counts of one operation: the current interval's, and the whole run's. */
class Recorder {
  private interval = new Latencies();
  private readonly all = new Latencies();
  errors = 0;
  exhausted = 0;
  private totalErrors = 0;
  private totalExhausted = 0;

  add(ms: number): void {
    this.interval.add(ms);
    this.all.add(ms);
  }

  /** The interval's figures; starts the next interval. */
  take(): OperationFigures {
    const out = figures(this.interval, this.errors, this.exhausted);
    this.totalErrors += this.errors;
    this.totalExhausted += this.exhausted;
    this.interval = new Latencies();
    this.errors = 0;
    this.exhausted = 0;
    return out;
  }

  /** The whole run's figures (after the last `take`). */
  whole(): OperationFigures {
    return figures(this.all, this.totalErrors, this.totalExhausted);
  }
}

function round3(value: number): number {
  return Number.isFinite(value) ? Number(value.toPrecision(3)) : value;
}

/** A token issued during the soak, tracked until revoked. */
interface LiveToken {
  readonly token: string;
  /** Set when its revocation is sent. */
  revoking: boolean;
  /** When its revocation was acknowledged (performance.now()). */
  revokedAt?: number;
}

function emit(line: unknown): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function main(): Promise<void> {
  const input = JSON.parse(process.argv[2] ?? "{}") as SoakLoadInput;
  const hotTokens = JSON.parse(readFileSync(input.hotTokensFile, "utf8")) as string[];
  const hotBodies = hotTokens.map((token) => encode(IntrospectTokenRequestSchema, { token }));
  const replicas = new Replicas(
    await Promise.all(input.grpcPorts.map((port) => Promise.all(Array.from({ length: Math.max(1, input.connectionsPerReplica) }, () => connect(port))))),
    input.deadlineMs,
  );
  let gatewayTurn = 0;
  let adminTurn = 0;
  let replicaTurn = 0;
  const gateway = () => input.gateways[gatewayTurn++ % input.gateways.length]!;
  const admin = () => input.admins[adminTurn++ % input.admins.length]!;
  const nextReplica = () => replicaTurn++ % replicas.count;
  const samples: string[] = [];
  const sample = (what: string) => {
    if (samples.length < 5) samples.push(what.slice(0, 300));
  };
  const isActive = (body: Buffer | undefined) => body !== undefined && decode(IntrospectTokenResponseSchema, body).active;

  // Every hot token once on every replica: the working set is cached before anything is measured.
  {
    let index = 0;
    const total = hotBodies.length * replicas.count;
    const warm = async () => {
      while (index < total) {
        const i = index++;
        const outcome = await replicas.call(i % replicas.count, "IntrospectToken", gateway(), hotBodies[Math.floor(i / replicas.count)]!);
        if (outcome.status !== STATUS_OK) sample(`warm-up introspection: status ${outcome.status} ${outcome.message}`);
      }
    };
    await Promise.all(Array.from({ length: 16 }, warm));
  }

  emit({ started: true });
  const cpuAtStart = process.cpuUsage();
  const started = performance.now();
  const stopAt = started + input.seconds * 1000;

  const recorders = Object.fromEntries(OPERATIONS.map((op) => [op, new Recorder()])) as Record<Operation, Recorder>;
  const weights = OPERATIONS.map((op) => Math.max(0, input.mix[op] ?? 0));
  const totalWeight = weights.reduce((a, b) => a + b, 0);
  const pick = (): Operation => {
    let r = Math.random() * totalWeight;
    for (const [i, op] of OPERATIONS.entries()) {
      r -= weights[i]!;
      if (r < 0) return op;
    }
    return "introspect_hit";
  };
  const live: LiveToken[] = [];
  /** Revoked tokens (the latest `liveMax`), still introspected now and then. */
  const revoked: LiveToken[] = [];
  let issued = 0;
  let hot = 0;
  let inFlight = 0;
  let shed = 0;
  let staleAccepted = 0;

  const fail = (op: Operation, what: string) => {
    recorders[op].errors++;
    sample(`${op}: ${what}`);
  };
  /** Counts the outcome's status; true when it is OK. */
  const settle = (op: Operation, outcome: Outcome): boolean => {
    if (outcome.status === STATUS_OK) return true;
    if (outcome.status === STATUS_RESOURCE_EXHAUSTED) recorders[op].exhausted++;
    else fail(op, `status ${outcome.status} ${outcome.message}`);
    return false;
  };

  const run = async (wanted: Operation, due: number): Promise<void> => {
    // Without issued tokens, fresh introspections and revocations fall back to hits.
    const op: Operation = (wanted === "introspect_fresh" || wanted === "revoke") && live.length === 0 ? "introspect_hit" : wanted;
    const replica = nextReplica();
    switch (op) {
      case "introspect_hit": {
        const outcome = await replicas.call(replica, "IntrospectToken", gateway(), hotBodies[hot++ % hotBodies.length]!);
        recorders[op].add(performance.now() - due);
        if (settle(op, outcome) && !isActive(outcome.body)) fail(op, "a seeded token answered inactive");
        return;
      }
      case "introspect_miss": {
        // Well-formed, never issued: a store lookup, then a negative cache entry.
        const body = encode(IntrospectTokenRequestSchema, { token: mintToken("development").token });
        const outcome = await replicas.call(replica, "IntrospectToken", gateway(), body);
        recorders[op].add(performance.now() - due);
        if (settle(op, outcome) && isActive(outcome.body)) fail(op, "an unknown token answered active");
        return;
      }
      case "introspect_fresh": {
        // Mostly tokens still active; some recently revoked ones, whose answers must respect the bound.
        const fromRevoked = revoked.length > 0 && Math.random() < 0.25;
        const pool = fromRevoked ? revoked : live;
        const entry = pool[Math.floor(Math.random() * pool.length)]!;
        const sent = performance.now();
        const outcome = await replicas.call(replica, "IntrospectToken", gateway(), encode(IntrospectTokenRequestSchema, { token: entry.token }));
        recorders[op].add(performance.now() - due);
        if (!settle(op, outcome)) return;
        const active = isActive(outcome.body);
        if (active && entry.revokedAt !== undefined && sent - entry.revokedAt > input.stalenessMs) {
          staleAccepted++;
          sample(`introspect_fresh: a token revoked ${Math.round(sent - entry.revokedAt)} ms before the call was sent answered active`);
        }
        if (!active && !entry.revoking) fail(op, "an issued, unrevoked token answered inactive");
        return;
      }
      case "issue": {
        const n = issued++;
        const body = encode(IssueTokenRequestSchema, { name: `soak-${n}`, subject: `soak-${process.pid}-${n}@soak.example.com`, scopes: ["orders.read"] });
        const outcome = await replicas.call(replica, "IssueToken", admin(), body);
        recorders[op].add(performance.now() - due);
        if (!settle(op, outcome)) return;
        const token = decode(IssueTokenResponseSchema, outcome.body).token;
        if (token === "") return fail(op, "answer without a token");
        live.push({ token, revoking: false });
        if (live.length > input.liveMax) live.shift();
        return;
      }
      case "revoke": {
        // The oldest live token leaves the pool before its revocation is sent.
        const entry = live.shift()!;
        entry.revoking = true;
        const outcome = await replicas.call(replica, "RevokeToken", admin(), encode(RevokeTokenRequestSchema, { target: { case: "token", value: entry.token }, reason: "soak" }));
        recorders[op].add(performance.now() - due);
        if (!settle(op, outcome)) return;
        entry.revokedAt = performance.now();
        if (decode(RevokeTokenResponseSchema, outcome.body).alreadyRevoked) fail(op, "a token revoked once answered already_revoked");
        revoked.push(entry);
        if (revoked.length > input.liveMax) revoked.shift();
        return;
      }
      case "list": {
        const outcome = await replicas.call(replica, "ListTokens", admin(), encode(ListTokensRequestSchema, { pageSize: 20, includeRevoked: Math.random() < 0.5 }));
        recorders[op].add(performance.now() - due);
        if (settle(op, outcome) && decode(ListTokensResponseSchema, outcome.body).tokens.length === 0) fail(op, "an empty first page");
        return;
      }
    }
  };

  if (input.mode === "capacity") {
    // Closed loop: each of `concurrency` workers runs the mix back to back.
    const worker = async () => {
      while (performance.now() < stopAt) await run(pick(), performance.now());
    };
    await Promise.all(Array.from({ length: input.concurrency }, worker));
    const seconds = (performance.now() - started) / 1000;
    const cpu = process.cpuUsage(cpuAtStart);
    for (const op of OPERATIONS) recorders[op].take();
    const ops = Object.fromEntries(OPERATIONS.map((op) => [op, recorders[op].whole()])) as Record<Operation, OperationFigures>;
    const calls = OPERATIONS.reduce((sum, op) => sum + ops[op].n, 0);
    const report: CapacityReport = {
      calls,
      seconds,
      rate: calls / seconds,
      errors: OPERATIONS.reduce((sum, op) => sum + ops[op].errors, 0),
      exhausted: OPERATIONS.reduce((sum, op) => sum + ops[op].exhausted, 0),
      staleAccepted,
      ops,
      loaderCpuPercent: Math.round((cpu.user + cpu.system) / 10_000 / seconds),
      samples,
    };
    emit({ capacity: report });
    replicas.close();
    return;
  }

  // ---------------------------------------------------------------- soak (open loop)
  const intervalMs = input.intervalSeconds * 1000;
  let intervalStart = started;
  let cpuAtInterval = process.cpuUsage();
  const report = (now: number) => {
    const seconds = (now - intervalStart) / 1000;
    const cpu = process.cpuUsage(cpuAtInterval);
    const line: IntervalReport = {
      t: Math.round((now - started) / 100) / 10,
      seconds: Math.round(seconds * 10) / 10,
      ops: Object.fromEntries(OPERATIONS.map((op) => [op, recorders[op].take()])) as Record<Operation, OperationFigures>,
      shed,
      staleAccepted,
      inFlightAtEnd: inFlight,
      live: live.length,
      loaderCpuPercent: Math.round((cpu.user + cpu.system) / 10_000 / Math.max(seconds, 0.001)),
      samples: samples.splice(0),
    };
    shed = 0;
    staleAccepted = 0;
    intervalStart = now;
    cpuAtInterval = process.cpuUsage();
    emit({ interval: line });
  };

  const periodMs = 1000 / input.rate;
  let scheduled = 0;
  const pending = new Set<Promise<void>>();
  // "pause" on stdin: start nothing more, report {"paused"} once nothing is in flight (the runner
  // then forces a GC on idle replicas, so its pause is no call's latency); "resume": carry on, with
  // the schedule moved on by the pause (no backlog of calls that were due meanwhile).
  let pausedAt: number | undefined;
  let pausedReported = false;
  let origin = started;
  const commands = createInterface({ input: process.stdin });
  commands.on("line", (line) => {
    if (line === "pause" && pausedAt === undefined) {
      pausedAt = performance.now();
      pausedReported = false;
    } else if (line === "resume" && pausedAt !== undefined) {
      origin += performance.now() - pausedAt;
      pausedAt = undefined;
    }
  });
  await new Promise<void>((finished) => {
    const tick = () => {
      const now = performance.now();
      if (now >= stopAt) {
        finished();
        return;
      }
      if (pausedAt !== undefined) {
        if (!pausedReported && inFlight === 0) {
          pausedReported = true;
          emit({ paused: true });
        }
      } else {
        // Every call due by now starts now, timed from when it was due.
        while (origin + scheduled * periodMs <= now) {
          const due = origin + scheduled * periodMs;
          scheduled++;
          if (inFlight >= input.maxInFlight) {
            shed++;
            continue;
          }
          inFlight++;
          const promise = run(pick(), due).finally(() => {
            inFlight--;
            pending.delete(promise);
          });
          pending.add(promise);
        }
      }
      if (now - intervalStart >= intervalMs) report(now);
      setTimeout(tick, 1);
    };
    tick();
  });
  // Reading stdin would keep this process alive.
  commands.close();
  process.stdin.destroy();
  // Calls still in flight are waited for (each is bounded by its deadline) and go into the last interval.
  await Promise.all(pending);
  report(performance.now());
  const cpu = process.cpuUsage(cpuAtStart);
  const seconds = (performance.now() - started) / 1000;
  const done: DoneReport = {
    scheduled,
    seconds,
    loaderCpuPercent: Math.round((cpu.user + cpu.system) / 10_000 / seconds),
    ops: Object.fromEntries(OPERATIONS.map((op) => [op, recorders[op].whole()])) as Record<Operation, OperationFigures>,
  };
  emit({ done });
  replicas.close();
}

// Only as a process of its own: bench/soak.ts imports this module for its types and OPERATIONS.
if (process.argv[1]?.endsWith("/soak-load.js")) {
  main().catch((error: unknown) => {
    process.stderr.write(`soak-load failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  });
}
