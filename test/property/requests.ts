/**
 * Request generators shared by the RPC-tier and the transport properties:
 * anything at all in every field, weighted to what the service refuses.
 */
import fc from "fast-check";
import { nastyString, secondsAndNanos } from "./support.js";

const scope = fc.stringMatching(/^[\x21\x23-\x5B\x5D-\x7E]{1,16}$/);
const label = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,15}$/);
const metaKey = fc.stringMatching(/^[A-Za-z0-9_.-]{1,16}$/);

/** Anything at all in every IssueToken field. */
export const anyIssue = fc.record({
  name: nastyString,
  scopes: fc.array(fc.oneof(scope, nastyString), { maxLength: 6 }),
  teams: fc.array(fc.oneof(label, nastyString), { maxLength: 6 }),
  namespaces: fc.array(fc.oneof(label, nastyString), { maxLength: 6 }),
  metadata: fc.dictionary(fc.oneof(metaKey, nastyString), nastyString, { maxKeys: 5 }),
  subject: nastyString,
  fullName: nastyString,
  isAdmin: fc.boolean(),
  expiry: fc.oneof(fc.constant({ case: undefined }), secondsAndNanos.map((value) => ({ case: "ttl" as const, value })), secondsAndNanos.map((value) => ({ case: "expireTime" as const, value }))),
});

/** A page token: mostly none, else garbage. */
export const pageToken = fc.oneof({ weight: 3, arbitrary: fc.constant("") }, { weight: 2, arbitrary: nastyString }, { weight: 1, arbitrary: fc.base64String().map((s) => s.replace(/=/g, "")) });

