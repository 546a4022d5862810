import { stat, readFile } from "node:fs/promises";
import * as http from "node:http";
import * as https from "node:https";
import { parseArgs } from "node:util";
import { toJson, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  Environment,
  InactiveReason,
  IntrospectTokenResponseSchema,
  IssueTokenResponseSchema,
  RevokeTokenResponseSchema,
  TokenInfoSchema,
  TokenKind,
  TokenService,
  TokenState,
  type IntrospectTokenResponse,
  type IssueTokenRequestSchema,
  type RevokeTokenRequestSchema,
  type TokenInfo,
} from "../../gen/tokens/v1/token_service_pb.js";
import { parseDuration } from "../config.js";
import { UsageError } from "./usage.js";

/**
 * tokenctl's API commands: a client of the running service's Connect port.
 * They never touch the store and never read the server's configuration; they
 * send exactly what they were given, so the server (src/domain/claims.ts)
 * stays the one place that decides a token's claims.
 */

/** The streams a command reads and writes; the process's own in production, pipes in tests. */
export interface CliIo {
  readonly stdin: NodeJS.ReadableStream & { readonly isTTY?: boolean };
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
}

/** Where the API commands connect when neither `--addr` nor `TOKENCTL_ADDR` says otherwise: the Connect port. */
export const DEFAULT_ADDR = "http://127.0.0.1:8080";

/** The commands that call the service's API. */
export const API_COMMANDS = ["issue", "list", "revoke", "introspect"] as const;

/** One of the commands that call the service's API. */
export type ApiCommand = (typeof API_COMMANDS)[number];

/** Whether `command` is one of the API commands. */
export function isApiCommand(command: string): command is ApiCommand {
  return (API_COMMANDS as readonly string[]).includes(command);
}

/**
 * Whether a scope only reads: it ends in `.read` or `:read`. Anything else
 * (`orders.write`, `tokens.create`, and `tokens.introspect` too, which reveals
 * any token's claims) counts as beyond read, and `issue` warns about it.
 */
export function isReadScope(scope: string): boolean {
  return scope.endsWith(".read") || scope.endsWith(":read");
}

/** How long one call may take; the server's own ceiling (`RPC_MAX_TIMEOUT`) is 30s by default too. */
const CALL_TIMEOUT_MS = 30_000;

/** A token value read from stdin is a few dozen characters; refuse to buffer more than this. */
const MAX_STDIN_BYTES = 64 * 1024;

/** Options every API command takes: where the service is and who is calling. */
export const CONNECTION_OPTIONS = {
  addr: { type: "string" },
  "token-file": { type: "string" },
} as const;

/**
 * Runs one API command. Returns the exit code: 0 on success, 1 when the
 * service refused or could not be reached (after printing
 * `tokenctl: <code>: <message>` on stderr). Throws `UsageError` for a bad
 * command line or a missing caller token (exit 64).
 */
export async function runApiCommand(
  command: ApiCommand,
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  io: CliIo,
): Promise<number> {
  return runCommand(COMMANDS[command], args, env, io);
}

/**
 * Runs any API command function with the shared connection handling, token
 * scrubbing and error reporting (the rotation and bulk-revocation commands
 * of `lifecycle-commands.ts` use it too).
 */
export async function runCommand(
  command: Command,
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  io: CliIo,
): Promise<number> {
  refusePlainTokenFlag(args);
  const out = new Output(io);
  let connection: Connection | undefined;
  try {
    // Every command parses its options before it opens a client, and reads
    // any token from stdin before its one call: a usage mistake never costs a
    // round trip.
    const open = async (values: { readonly addr?: string | undefined; readonly "token-file"?: string | undefined }) => {
      const target = resolveTarget(values.addr ?? env["TOKENCTL_ADDR"] ?? DEFAULT_ADDR, out);
      const token = await callerToken(values["token-file"], env, out);
      out.secret(token);
      connection = connect(target, token);
      return connection.client;
    };
    return await command(args, open, io, out);
  } catch (error) {
    if (error instanceof UsageError) throw error;
    // parseArgs' own errors are usage errors too (exit 64). They never quote a
    // positional argument, since every command allows positionals and checks
    // them itself.
    if (error instanceof Error && "code" in error && typeof error.code === "string" && error.code.startsWith("ERR_PARSE_ARGS")) throw new UsageError(error.message);
    // Network failures arrive as ConnectErrors too (`unavailable`), so one
    // shape covers every way a call can fail.
    const err = ConnectError.from(error);
    out.error(`${codeName(err.code)}: ${err.rawMessage}`);
    return 1;
  } finally {
    connection?.close();
  }
}

/**
 * Resolves the address and the caller's token from the command's parsed
 * options and makes a client. Nothing goes over the wire until the first call.
 */
export type Open = (values: { readonly addr?: string | undefined; readonly "token-file"?: string | undefined }) => Promise<Client<typeof TokenService>>;

export type Command = (args: readonly string[], open: Open, io: CliIo, out: Output) => Promise<number>;

// Hoisted function declarations, so the table may come first.
const COMMANDS: Readonly<Record<ApiCommand, Command>> = { issue, list, revoke, introspect };

// ---------------------------------------------------------------- commands

async function issue(args: readonly string[], open: Open, _io: CliIo, out: Output): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    strict: true,
    options: {
      ...CONNECTION_OPTIONS,
      name: { type: "string" },
      subject: { type: "string" },
      "full-name": { type: "string" },
      admin: { type: "boolean" },
      teams: { type: "string", multiple: true },
      scopes: { type: "string", multiple: true },
      namespaces: { type: "string", multiple: true },
      ttl: { type: "string" },
      metadata: { type: "string", multiple: true },
      networks: { type: "string", multiple: true },
      "rate-limit": { type: "string" },
      json: { type: "boolean" },
    },
  });
  noPositionals("issue", positionals);
  if (values.name === undefined) throw new UsageError("issue needs --name <name>");

  // The request carries exactly what was typed: no default scopes, no
  // sorting, no case folding. The server validates and builds the claims,
  // so the CLI and a direct API call with the same parameters agree.
  const request: MessageInitShape<typeof IssueTokenRequestSchema> = {
    name: values.name,
    subject: values.subject ?? "",
    fullName: values["full-name"] ?? "",
    isAdmin: values.admin ?? false,
    teams: commaList(values.teams),
    scopes: commaList(values.scopes),
    namespaces: commaList(values.namespaces),
    metadata: metadataOf(values.metadata),
    ...(values.ttl !== undefined ? { expiry: { case: "ttl", value: durationFromMs(ttlMs(values.ttl)) } } : {}),
    allowedNetworks: commaList(values.networks),
    ...(values["rate-limit"] !== undefined ? { rateLimit: rateLimitOf(values["rate-limit"]) } : {}),
  };

  const client = await open(values);
  const answer = await client.issueToken(request);
  out.secret(answer.token);

  // Warn about what the token actually got (the answer), not what was asked.
  warnElevated(out, answer.info ?? { isAdmin: request.isAdmin ?? false, scopes: request.scopes ?? [] });

  // The one place a token is printed: stdout of `issue`, shown this once.
  if (values.json) out.json(IssueTokenResponseSchema, answer);
  else out.line(answer.token);
  return 0;
}

async function list(args: readonly string[], open: Open, _io: CliIo, out: Output): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    strict: true,
    options: {
      ...CONNECTION_OPTIONS,
      subject: { type: "string" },
      team: { type: "string" },
      "issued-by": { type: "string" },
      "include-revoked": { type: "boolean" },
      "include-expired": { type: "boolean" },
      "page-size": { type: "string" },
      "page-token": { type: "string" },
      all: { type: "boolean" },
      json: { type: "boolean" },
    },
  });
  noPositionals("list", positionals);
  const pageSize = values["page-size"] === undefined ? 0 : wholeNumber("--page-size", values["page-size"]);
  const filters = {
    subject: values.subject ?? "",
    team: values.team ?? "",
    issuedByTokenId: values["issued-by"] ?? "",
    includeRevoked: values["include-revoked"] ?? false,
    includeExpired: values["include-expired"] ?? false,
    pageSize,
  };

  const client = await open(values);
  const rows: TokenInfo[] = [];
  let pageToken = values["page-token"] ?? "";
  for (;;) {
    const page = await client.listTokens({ ...filters, pageToken });
    // JSON lines stream page by page; the table needs every row for its widths.
    if (values.json) for (const info of page.tokens) out.jsonLine(TokenInfoSchema, info);
    else rows.push(...page.tokens);
    if (page.nextPageToken !== "" && page.nextPageToken === pageToken) throw new ConnectError("the service returned the same page token twice", Code.Internal);
    pageToken = page.nextPageToken;
    if (!values.all || pageToken === "") break;
  }
  if (!values.json) {
    if (rows.length === 0) out.note("no tokens match");
    else out.table(["ID", "NAME", "SUBJECT", "STATE", "HINT", "EXPIRES"], rows.map(tokenRow));
  }
  // A page token is a keyset cursor, not a credential: safe to show.
  if (pageToken !== "") out.note(`more tokens: pass --all, or --page-token ${pageToken}`);
  return 0;
}

async function revoke(args: readonly string[], open: Open, io: CliIo, out: Output): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    strict: true,
    options: {
      ...CONNECTION_OPTIONS,
      id: { type: "string" },
      "legacy-jti": { type: "string" },
      cascade: { type: "boolean" },
      reason: { type: "string" },
      json: { type: "boolean" },
    },
  });
  if (positionals.length > 1) throw new UsageError("revoke takes at most one token argument");
  const given = [positionals[0], values.id, values["legacy-jti"]].filter((v) => v !== undefined);
  if (given.length !== 1) throw new UsageError("revoke needs exactly one of <token>, - (the token on stdin), --id <uuid> or --legacy-jti <jti>");

  // The caller's token is checked before stdin is read: a missing one is
  // the likelier mistake, and waiting on stdin first would hide it.
  const client = await open(values);
  let target: MessageInitShape<typeof RevokeTokenRequestSchema>["target"];
  if (positionals[0] !== undefined) {
    const token = await tokenArgument(positionals[0], io, out);
    target = { case: "token", value: token };
  } else if (values.id !== undefined) {
    target = { case: "tokenId", value: values.id };
  } else {
    target = { case: "legacyJti", value: values["legacy-jti"]! };
  }

  const cascade = values.cascade ?? false;
  const answer = await client.revokeToken({ target, reason: values.reason ?? "", cascade });
  if (values.json) {
    out.json(RevokeTokenResponseSchema, answer);
  } else {
    const verb = answer.alreadyRevoked ? "already revoked" : "revoked";
    // Without `info` the service either knows no such token (RFC 7009 §2.2
    // answers success anyway) or the caller may not see it: nothing to add.
    out.line(answer.info ? `${verb} ${answer.info.id} (${safe(answer.info.name)}, ${safe(answer.info.displayHint)})` : verb);
    // With --cascade the count is the news: how many tokens went, the named one included.
    if (cascade) out.line(`${answer.revokedCount} token${answer.revokedCount === 1 ? "" : "s"} revoked by this call (cascade)`);
  }
  return 0;
}

async function introspect(args: readonly string[], open: Open, io: CliIo, out: Output): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    strict: true,
    options: { ...CONNECTION_OPTIONS, json: { type: "boolean" } },
  });
  if (positionals.length !== 1 || positionals[0] === undefined) throw new UsageError("introspect needs one token argument, or - to read it from stdin");
  const client = await open(values); // before stdin is read, as in `revoke`
  const token = await tokenArgument(positionals[0], io, out);
  const answer = await client.introspectToken({ token });
  if (values.json) out.json(IntrospectTokenResponseSchema, answer);
  else out.lines(describeIntrospection(answer));
  // An inactive token is an answer, not a failure (RFC 7662 §2.2): exit 0.
  return 0;
}

// ---------------------------------------------------------------- input

/**
 * Refuses `--token` before anything else: parseArgs would reject it as
 * unknown anyway, but this says why there is none. The value is already in
 * the shell history by now; the message tells how to avoid that next time.
 */
function refusePlainTokenFlag(args: readonly string[]): void {
  for (const arg of args) {
    if (arg === "--") return;
    if (arg === "--token" || arg.startsWith("--token=")) {
      throw new UsageError("there is no --token option (a token on the command line shows up in `ps` and shell history): use --token-file <path> or TOKENCTL_TOKEN");
    }
  }
}

/**
 * parseArgs would quote an unexpected positional argument in its error, and
 * that argument may well be a token pasted in the wrong place: check here,
 * without quoting it.
 */
export function noPositionals(command: string, positionals: readonly string[]): void {
  if (positionals.length > 0) throw new UsageError(`${command} takes no arguments besides its options`);
}

/** `a,b` → `["a", "b"]`, over every use of a repeatable option; an empty value adds nothing. Nothing is trimmed or folded. */
function commaList(values: readonly string[] | undefined): string[] {
  return (values ?? []).flatMap((value) => (value === "" ? [] : value.split(",")));
}

/** `--metadata k=v` (repeatable) → a map; the value may contain `=`. */
function metadataOf(pairs: readonly string[] | undefined): Record<string, string> {
  const metadata: Record<string, string> = {};
  for (const pair of pairs ?? []) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new UsageError(`--metadata must be key=value, got "${safe(pair)}"`);
    const key = pair.slice(0, eq);
    // A map holds one value per key; taking the last silently would hide a typo.
    if (Object.hasOwn(metadata, key)) throw new UsageError(`--metadata key "${safe(key)}" given twice`);
    metadata[key] = pair.slice(eq + 1);
  }
  return metadata;
}

/** `--rate-limit <requests>/<window>`, e.g. `600/1m`; the server checks the ranges. */
function rateLimitOf(raw: string): { requests: number; window: ReturnType<typeof durationFromMs> } {
  const slash = raw.indexOf("/");
  if (slash < 0) throw new UsageError("--rate-limit must be <requests>/<window>, e.g. 600/1m");
  const requests = wholeNumber("--rate-limit requests", raw.slice(0, slash));
  let ms: number;
  try {
    ms = parseDuration(raw.slice(slash + 1));
  } catch (error) {
    throw new UsageError(`--rate-limit window ${(error as Error).message}`);
  }
  if (!Number.isSafeInteger(ms)) throw new UsageError("--rate-limit window is too long");
  return { requests, window: durationFromMs(ms) };
}

/** `--ttl` in the service's duration syntax (src/config.ts): `90m`, `12h`, `30d`, `3600s`. */
export function ttlMs(raw: string): number {
  let ms: number;
  try {
    ms = parseDuration(raw);
  } catch (error) {
    throw new UsageError(`--ttl ${(error as Error).message}`);
  }
  if (!Number.isSafeInteger(ms)) throw new UsageError("--ttl is too long");
  return ms;
}

export function wholeNumber(option: string, raw: string): number {
  if (!/^\d{1,9}$/.test(raw)) throw new UsageError(`${option} must be a whole number`);
  return Number(raw);
}

/**
 * The token a command acts on: the argument itself, or, for `-`, the first
 * line of stdin, which keeps it out of shell history and `ps`.
 */
export async function tokenArgument(arg: string, io: CliIo, out: Output): Promise<string> {
  if (arg !== "-") {
    out.secret(arg);
    return arg;
  }
  if (io.stdin.isTTY) out.note("reading the token from stdin (end with Enter, then Ctrl-D)");
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of io.stdin) {
    const buffer = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
    size += buffer.length;
    if (size > MAX_STDIN_BYTES) throw new UsageError(`stdin holds more than ${MAX_STDIN_BYTES} bytes; expected one token`);
    chunks.push(buffer);
  }
  const token = Buffer.concat(chunks).toString("utf8").trim();
  if (token === "") throw new UsageError("expected a token on stdin, got nothing");
  out.secret(token);
  return token;
}

/**
 * The caller's own token: `--token-file` wins over `TOKENCTL_TOKEN`. There
 * is deliberately no `--token`: arguments show up in `ps` and shell history.
 */
async function callerToken(file: string | undefined, env: Readonly<Record<string, string | undefined>>, out: Output): Promise<string> {
  if (file !== undefined) {
    let text: string;
    try {
      const info = await stat(file);
      // Like ssh with its keys: a bearer token readable by others is as good as leaked.
      if (process.platform !== "win32" && (info.mode & 0o077) !== 0) out.warn(`${file} is readable by other users; chmod 600 it`);
      text = await readFile(file, "utf8");
    } catch (error) {
      throw new UsageError(`cannot read --token-file ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
    return checkedCallerToken(text.trim(), `--token-file ${file}`);
  }
  const value = env["TOKENCTL_TOKEN"];
  if (value === undefined || value.trim() === "") {
    throw new UsageError("no caller token: set TOKENCTL_TOKEN or pass --token-file <path> (a token with tokens.create, tokens.read, tokens.revoke or tokens.introspect as the command needs)");
  }
  return checkedCallerToken(value.trim(), "TOKENCTL_TOKEN");
}

/** A header value must be printable ASCII; say where the bad token came from, never what it is. */
function checkedCallerToken(token: string, source: string): string {
  if (token === "") throw new UsageError(`${source} is empty`);
  if (!/^[\x21-\x7e]+$/.test(token)) throw new UsageError(`the token in ${source} contains spaces or characters outside printable ASCII`);
  return token;
}

// ---------------------------------------------------------------- transport

/** Where to send calls, and over which HTTP version. */
interface Target {
  readonly baseUrl: string;
  readonly httpVersion: "1.1" | "2";
}

/**
 * URL schemes tokenctl understands. Connect over HTTP/1.1 works through any
 * proxy; `h2c://` asks for cleartext HTTP/2 with prior knowledge (what the
 * service's port also speaks), `h2://` for HTTP/2 over TLS.
 */
const SCHEMES: Readonly<Record<string, { readonly scheme: "http:" | "https:"; readonly httpVersion: "1.1" | "2" }>> = {
  "http:": { scheme: "http:", httpVersion: "1.1" },
  "https:": { scheme: "https:", httpVersion: "1.1" },
  "h2c:": { scheme: "http:", httpVersion: "2" },
  "h2:": { scheme: "https:", httpVersion: "2" },
};

function resolveTarget(addr: string, out: Output): Target {
  let url: URL;
  try {
    url = new URL(addr);
  } catch {
    throw new UsageError(`--addr/TOKENCTL_ADDR must be a URL such as ${DEFAULT_ADDR}`);
  }
  const scheme = SCHEMES[url.protocol];
  if (!scheme || url.host === "") throw new UsageError(`--addr/TOKENCTL_ADDR must start with http://, https://, h2c:// or h2:// and name a host, e.g. ${DEFAULT_ADDR}`);
  if (scheme.scheme === "http:" && !isLoopback(url.hostname)) out.warn(`your token goes unencrypted to ${url.host}; use https:// unless this network is trusted`);
  const path = url.pathname === "/" ? "" : url.pathname.replace(/\/$/, "");
  return { baseUrl: `${scheme.scheme}//${url.host}${path}`, httpVersion: scheme.httpVersion };
}

function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

/** A client of the service and how to let go of its connections, so the process can exit at once. */
interface Connection {
  readonly client: Client<typeof TokenService>;
  close(): void;
}

function connect(target: Target, callerToken: string): Connection {
  // Sets the credential on every call in one place (RFC 6750 §2.1), and names
  // the client in the service's security events.
  const credentials: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${callerToken}`);
    request.header.set("user-agent", "tokenctl");
    return next(request);
  };
  const common = { baseUrl: target.baseUrl, interceptors: [credentials], defaultTimeoutMs: CALL_TIMEOUT_MS };
  if (target.httpVersion === "2") {
    const sessionManager = new Http2SessionManager(target.baseUrl);
    const transport = createConnectTransport({ ...common, httpVersion: "2", sessionManager });
    return { client: createClient(TokenService, transport), close: () => sessionManager.abort() };
  }
  // An agent of our own, destroyed at the end: Node 20's global agent keeps
  // sockets alive, which would hold the process open for a while.
  const agent = target.baseUrl.startsWith("https:") ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  const transport = createConnectTransport({ ...common, httpVersion: "1.1", nodeOptions: { agent } });
  return { client: createClient(TokenService, transport), close: () => agent.destroy() };
}

/** `Code.PermissionDenied` → `permission_denied`, the Connect protocol's spelling. */
export function codeName(code: Code): string {
  const name = Code[code] as string | undefined;
  if (name === undefined) return String(code);
  return name.replace(/[A-Z]/g, (letter, offset: number) => (offset === 0 ? "" : "_") + letter.toLowerCase());
}

// ---------------------------------------------------------------- output

/**
 * Everything a command prints goes through here. stderr lines are scrubbed
 * of every secret the command has seen (the caller token, a token argument,
 * an issued token), whatever produced them: a server message, a network
 * error, a bug.
 */
export class Output {
  private readonly secrets: string[] = [];

  constructor(private readonly io: CliIo) {}

  /** Remembers a value that must never appear on stderr. */
  secret(value: string): void {
    if (value !== "") this.secrets.push(value);
  }

  /** A line of the command's result on stdout. */
  line(text: string): void {
    this.io.stdout.write(`${text}\n`);
  }

  lines(texts: readonly string[]): void {
    for (const text of texts) this.line(text);
  }

  /** A message as pretty JSON: every field, empty ones included, so scripts need no defaults. */
  json<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): void {
    this.line(JSON.stringify(toJson(schema, message, { alwaysEmitImplicit: true }), null, 2));
  }

  /** A message as one JSON line. */
  jsonLine<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): void {
    this.line(JSON.stringify(toJson(schema, message, { alwaysEmitImplicit: true })));
  }

  table(header: readonly string[], rows: readonly (readonly string[])[]): void {
    const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i]?.length ?? 0)));
    const format = (cells: readonly string[]) => cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join("  ");
    this.line(format(header));
    for (const row of rows) this.line(format(row));
  }

  /** Information on stderr, e.g. that more pages exist. */
  note(text: string): void {
    this.stderr(`tokenctl: ${text}`);
  }

  warn(text: string): void {
    this.stderr(`tokenctl: warning: ${text}`);
  }

  error(text: string): void {
    this.stderr(`tokenctl: ${text}`);
  }

  private stderr(text: string): void {
    let scrubbed = text;
    for (const secret of this.secrets) scrubbed = scrubbed.split(secret).join("[redacted]");
    this.io.stderr.write(`${safe(scrubbed)}\n`);
  }
}

/** Control characters as escapes, so a name or label from the store cannot drive the terminal. */
export function safe(text: string): string {
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

const lower = (name: string | undefined, fallback: string) => (name ?? fallback).toLowerCase();

export function isoTime(value: Timestamp | undefined): string {
  // Whole seconds are enough to read, and keep the column narrow.
  return value ? timestampDate(value).toISOString().replace(/\.\d{3}Z$/, "Z") : "never";
}

function epochTime(seconds: bigint): string {
  return seconds === 0n ? "never" : new Date(Number(seconds) * 1000).toISOString().replace(/\.000Z$/, "Z");
}

export function tokenRow(info: TokenInfo): string[] {
  return [info.id, safe(info.name), safe(info.subject), lower(TokenState[info.state], "unspecified"), safe(info.displayHint), isoTime(info.expireTime)];
}

/** The human form of an introspection: the verdict first, then the claims (RFC 7662 names). */
function describeIntrospection(answer: IntrospectTokenResponse): string[] {
  if (!answer.active) {
    return ["inactive", `reason:      ${lower(InactiveReason[answer.reason], "unspecified")}`, ...(answer.message ? [`message:     ${safe(answer.message)}`] : [])];
  }
  const metadata = Object.entries(answer.metadata).map(([k, v]) => `${k}=${v}`);
  const fields: [string, string][] = [
    ["token_name", answer.tokenName],
    ["sub", answer.sub],
    ["full_name", answer.fullName],
    ["jti", answer.jti],
    ["token_kind", lower(TokenKind[answer.tokenKind], "unspecified")],
    ["environment", lower(Environment[answer.environment], "unspecified")],
    ["is_admin", String(answer.isAdmin)],
    ["scope", answer.scope],
    ["teams", answer.teams.join(" ")],
    ["namespaces", answer.namespaces.join(" ")],
    ["metadata", metadata.join(", ")],
    ["iat", epochTime(answer.iat)],
    ["exp", epochTime(answer.exp)],
    ["iss", answer.iss],
    ["aud", answer.aud.join(" ")],
  ];
  const lines = ["active", ...fields.filter(([, value]) => value !== "").map(([key, value]) => `${`${key}:`.padEnd(13)}${safe(value)}`)];
  if (answer.deprecation) lines.push(`deprecation: ${safe(answer.deprecation.notice)} ${safe(answer.deprecation.link)} (sunset ${isoTime(answer.deprecation.sunsetTime)})`);
  return lines;
}

/**
 * Warns on stderr about what a new token actually got: admin, or scopes
 * beyond read. One check for every command that prints a new token
 * (`issue`, `rotate`).
 */
export function warnElevated(out: Output, granted: { readonly isAdmin: boolean; readonly scopes: readonly string[] }): void {
  if (granted.isAdmin) out.warn("this token is an admin token");
  const beyondRead = granted.scopes.filter((scope) => !isReadScope(scope));
  if (beyondRead.length > 0) out.warn(`this token has scopes beyond read: ${beyondRead.join(", ")}`);
}
