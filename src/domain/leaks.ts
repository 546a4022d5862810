import { createHash } from "node:crypto";
import type { Caller, RequestMeta } from "./model.js";
import type { TokenDeps } from "./ports.js";
import { revokeToken } from "./revoke.js";
import { classifyToken, displayHint } from "./token-format.js";
import { metaFields } from "./introspect.js";

/**
 * Leaked tokens reported by a secret scanner (GitHub's partner programme,
 * GitLab's token revocation API): each token of ours is revoked at once
 * through the ordinary revocation path (so every replica and every watching
 * gateway drops it, like any revocation), with its descendants (`cascade`:
 * a leaked token may have minted others), and a `token_leaked` critical
 * security event naming the token by id and the place it was found.
 *
 * The reporter is trusted only after its request was authenticated (a
 * signature, a bearer secret): that is the authority to revoke, as holding
 * the token is (RFC 7009 §2.1).
 */

/** One reported token. */
export interface LeakReport {
  readonly token: string;
  /** The scanner's name for the token's kind, echoed back. */
  readonly type: string;
  /** Where it was found (a URL), shown in the security event. */
  readonly url: string;
}

/** The verdict on one reported token, in the order reported. */
export interface LeakVerdict {
  /** SHA-256 of the reported token, hex: how the scanner matches the answer to its report. */
  readonly tokenHash: string;
  readonly tokenType: string;
  /** `true_positive`: a token this service issued (revoked now, or before); `false_positive`: anything else. */
  readonly label: "true_positive" | "false_positive";
}

/** Which scanner reported, for the revocation's `revoked_by` and the event. */
export type LeakReporter = "github" | "gitlab";

/** The longest source URL kept in a revocation reason and an event. */
const MAX_URL_CHARS = 256;

/**
 * Revokes every live token of ours among the reports. Unknown tokens, other
 * environments' tokens and anything not shaped like a token are false
 * positives, answered without saying which. Idempotent: a replayed report
 * revokes nothing more and raises no second event, and gives the same verdicts.
 */
export async function revokeLeakedTokens(deps: TokenDeps, reporter: LeakReporter, reports: readonly LeakReport[], meta: RequestMeta): Promise<LeakVerdict[]> {
  const caller = REPORTERS[reporter];
  const verdicts: LeakVerdict[] = [];
  for (const report of reports) {
    const tokenHash = createHash("sha256").update(report.token, "utf8").digest("hex");
    const shape = classifyToken(report.token);
    // Another environment's token is not ours to judge: that environment's own endpoint is.
    if (shape.shape !== "opaque" || shape.environment !== deps.policy.environment) {
      verdicts.push({ tokenHash, tokenType: report.type, label: "false_positive" });
      continue;
    }
    const url = boundedUrl(report.url);
    const result = await revokeToken(deps, caller, { token: report.token, reason: `leaked: reported by ${reporter} secret scanning at ${url}`, cascade: true }, meta);
    const record = result.record;
    if (record === undefined) {
      verdicts.push({ tokenHash, tokenType: report.type, label: "false_positive" });
      continue;
    }
    if (result.revokedCount > 0) {
      deps.events.record({
        type: "token_leaked",
        severity: "critical",
        message: `token leaked and revoked${result.revokedCount > 1 ? ` with ${result.revokedCount - 1} descendant(s)` : ""}: reported by ${reporter} secret scanning, found at ${url}`,
        serviceEnvironment: deps.policy.environment,
        tokenId: record.id,
        tokenHint: displayHint(report.token),
        callerSubject: caller.subject,
        ...metaFields(meta),
      });
      deps.log.warn({ token_id: record.id, token_hint: record.displayHint, reporter, revoked_count: result.revokedCount }, "leaked token revoked");
    }
    verdicts.push({ tokenHash, tokenType: report.type, label: "true_positive" });
  }
  return verdicts;
}

/**
 * The callers a report acts as: admin, so that revocation by value answers
 * with the record (whose id the event names); the authority is the
 * authenticated report, and it can only revoke tokens it presents.
 */
const REPORTERS: Readonly<Record<LeakReporter, Caller>> = Object.freeze({
  github: reporterCaller("secret-scanning:github"),
  gitlab: reporterCaller("secret-scanning:gitlab"),
});

function reporterCaller(subject: string): Caller {
  return Object.freeze({ tokenId: "", subject, fullName: "", scopes: [], teams: [], namespaces: [], isAdmin: true, expiresAt: null });
}

/** A URL as shown in a reason and an event: printable ASCII only, at most {@link MAX_URL_CHARS}. */
function boundedUrl(url: string): string {
  const printable = url.replace(/[^\x21-\x7e]/g, "");
  return printable.length > MAX_URL_CHARS ? `${printable.slice(0, MAX_URL_CHARS)}…` : printable === "" ? "(no url)" : printable;
}
