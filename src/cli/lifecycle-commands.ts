import { parseArgs } from "node:util";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { RevokeTokensResponseSchema, RotateTokenResponseSchema, type RotateTokenRequestSchema } from "../../gen/tokens/v1/token_service_pb.js";
import { parseDuration } from "../config.js";
import { CONNECTION_OPTIONS, isoTime, noPositionals, safe, tokenArgument, tokenRow, ttlMs, warnElevated, wholeNumber, type CliIo, type Command, type Open, type Output } from "./api-commands.js";
import { UsageError } from "./usage.js";

/**
 * tokenctl's rotation and bulk-revocation commands (issue 13): clients of
 * `RotateToken` and `RevokeTokens`, run through `runCommand` like every API
 * command (same connection handling, secret scrubbing and exit codes).
 */

/** The commands of this file. */
export const LIFECYCLE_COMMANDS = ["rotate", "revoke-many"] as const;

/** One of the commands of this file. */
export type LifecycleCommand = (typeof LIFECYCLE_COMMANDS)[number];

/** Whether `command` is one of this file's commands. */
export function isLifecycleCommand(command: string): command is LifecycleCommand {
  return (LIFECYCLE_COMMANDS as readonly string[]).includes(command);
}

/** The command functions, for `runCommand`. */
export const LIFECYCLE: Readonly<Record<LifecycleCommand, Command>> = { rotate, "revoke-many": revokeMany };

/** Usage text of these commands, for `tokenctl help`. */
export const LIFECYCLE_USAGE = `  rotate (<token> | - | --id <uuid>) [--grace 24h|0s] [--ttl 30d]
         [--revoke-on-successor-use] [--reason <r>] [--json]
      Issue a successor with the same claims and print only it on stdout
      (shown once); the old token is revoked when the grace period ends
      (default: the service's ROTATION_DEFAULT_GRACE; 0s: now) or, with
      --revoke-on-successor-use, at the successor's first use. --ttl renews
      the lifetime; without it the successor expires with the old token.
      Warns like issue, and says until when the old token still works.
  revoke-many [--subject <s>] [--team <t>] [--issued-by <token id>] [--name <n>]
              [--created-before <time>] [--expiring-before <time>]
              [--dry-run] [--page-size <n>] [--reason <r>] [--json]
      Revoke every token matching all the given filters (at least one) as
      one operation. Times are ISO 8601, e.g. 2026-12-01T00:00:00Z.
      --dry-run counts and lists the first page, revoking nothing. Warns
      before revoking tokens of every subject.
`;

async function rotate(args: readonly string[], open: Open, io: CliIo, out: Output): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    strict: true,
    options: {
      ...CONNECTION_OPTIONS,
      id: { type: "string" },
      grace: { type: "string" },
      ttl: { type: "string" },
      "revoke-on-successor-use": { type: "boolean" },
      reason: { type: "string" },
      json: { type: "boolean" },
    },
  });
  if (positionals.length > 1) throw new UsageError("rotate takes at most one token argument");
  if ((positionals[0] === undefined) === (values.id === undefined)) throw new UsageError("rotate needs exactly one of <token>, - (the token on stdin) or --id <uuid>");
  const graceMs = values.grace === undefined ? undefined : durationOption("--grace", values.grace);
  const renewMs = values.ttl === undefined ? undefined : ttlMs(values.ttl);

  const client = await open(values); // before stdin is read, as in `revoke`
  let target: MessageInitShape<typeof RotateTokenRequestSchema>["target"];
  if (positionals[0] !== undefined) target = { case: "token", value: await tokenArgument(positionals[0], io, out) };
  else target = { case: "tokenId", value: values.id! };

  const answer = await client.rotateToken({
    target,
    reason: values.reason ?? "",
    revokeOnSuccessorUse: values["revoke-on-successor-use"] ?? false,
    ...(graceMs !== undefined ? { gracePeriod: durationFromMs(graceMs) } : {}),
    ...(renewMs !== undefined ? { ttl: durationFromMs(renewMs) } : {}),
  });
  out.secret(answer.token);

  // The same warnings as `issue`, about what the successor actually got.
  warnElevated(out, { isAdmin: answer.info?.isAdmin ?? false, scopes: answer.info?.scopes ?? [] });
  const old = answer.predecessor;
  if (old !== undefined) {
    if (old.revokeTime !== undefined) out.note(`the old token ${old.id} is revoked`);
    else if (old.scheduledRevokeTime !== undefined) {
      out.warn(`the old token ${old.id} (${safe(old.displayHint)}) keeps working until ${isoTime(old.scheduledRevokeTime)}${old.revokeOnSuccessorUse ? ", or until this one is first used" : ""}`);
    }
  }

  // The one place a successor is printed: stdout, shown this once.
  if (values.json) out.json(RotateTokenResponseSchema, answer);
  else out.line(answer.token);
  return 0;
}

async function revokeMany(args: readonly string[], open: Open, _io: CliIo, out: Output): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    strict: true,
    options: {
      ...CONNECTION_OPTIONS,
      subject: { type: "string" },
      team: { type: "string" },
      "issued-by": { type: "string" },
      name: { type: "string" },
      "created-before": { type: "string" },
      "expiring-before": { type: "string" },
      "dry-run": { type: "boolean" },
      "page-size": { type: "string" },
      reason: { type: "string" },
      json: { type: "boolean" },
    },
  });
  noPositionals("revoke-many", positionals);
  const createdBefore = values["created-before"] === undefined ? undefined : timeOption("--created-before", values["created-before"]);
  const expireBefore = values["expiring-before"] === undefined ? undefined : timeOption("--expiring-before", values["expiring-before"]);
  const selector = {
    subject: values.subject ?? "",
    team: values.team ?? "",
    issuedByTokenId: values["issued-by"] ?? "",
    name: values.name ?? "",
    ...(createdBefore !== undefined ? { createdBefore: timestampFromDate(createdBefore) } : {}),
    ...(expireBefore !== undefined ? { expireBefore: timestampFromDate(expireBefore) } : {}),
  };
  if (selector.subject === "" && selector.team === "" && selector.issuedByTokenId === "" && selector.name === "" && createdBefore === undefined && expireBefore === undefined) {
    throw new UsageError("revoke-many needs at least one of --subject, --team, --issued-by, --name, --created-before, --expiring-before");
  }
  const dryRun = values["dry-run"] ?? false;
  const pageSize = values["page-size"] === undefined ? 0 : wholeNumber("--page-size", values["page-size"]);

  const client = await open(values);
  // An admin selecting without a subject reaches every subject's tokens: say so.
  if (!dryRun && selector.subject === "") out.warn("no --subject: for an admin this revokes matching tokens of every subject (try --dry-run first)");
  const answer = await client.revokeTokens({ selector, dryRun, reason: values.reason ?? "", pageSize });
  if (values.json) {
    out.json(RevokeTokensResponseSchema, answer);
  } else if (dryRun) {
    out.line(`${answer.matchedCount} token${answer.matchedCount === 1n ? "" : "s"} match; nothing was revoked (dry run)`);
    if (answer.tokens.length > 0) out.table(["ID", "NAME", "SUBJECT", "STATE", "HINT", "EXPIRES"], answer.tokens.map(tokenRow));
    if (BigInt(answer.tokens.length) < answer.matchedCount) out.note(`showing the first ${answer.tokens.length}`);
  } else {
    out.line(`${answer.revokedCount} token${answer.revokedCount === 1n ? "" : "s"} revoked (operation ${answer.operationId})`);
  }
  return 0;
}

/** A duration option in the service's syntax (`0s` allowed). */
function durationOption(option: string, raw: string): number {
  try {
    return parseDuration(raw);
  } catch (error) {
    throw new UsageError(`${option} ${(error as Error).message}`);
  }
}

/** An ISO 8601 time option. The value is not echoed back. */
function timeOption(option: string, raw: string): Date {
  const ms = Date.parse(raw);
  if (!/^\d{4}-\d{2}-\d{2}/.test(raw) || Number.isNaN(ms)) throw new UsageError(`${option} must be an ISO 8601 time, e.g. 2026-12-01T00:00:00Z`);
  return new Date(ms);
}
