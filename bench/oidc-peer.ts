/**
 * The peer in the benchmark: oidc-provider (panva, the `oidc-provider` npm
 * package, a devDependency pinned for Node 20) serving only RFC 7662 token
 * introspection, with its default in-memory adapter, as a child process the
 * runner pins to the server core exactly like the service (see
 * `startOidcPeer` in processes.ts), so CPU per call is comparable.
 *
 * Configured here and nowhere else: one confidential client using
 * `client_secret_basic` (RFC 6749 §2.3.1), `features.introspection` on, every
 * other feature at its default, `NODE_ENV=production` set by the runner. On
 * start it mints one opaque access token through the provider's own model API
 * (a `Grant`, then `new provider.AccessToken({ … grantId }).save()`, which
 * store them in the memory adapter and return the ids; the token's id is its
 * value), writes the value to `PEER_TOKEN_FILE`
 * (not to the log), and prints `oidc-provider listening on 127.0.0.1:<port>`.
 *
 * Environment: PEER_CLIENT_ID, PEER_CLIENT_SECRET, PEER_TOKEN_FILE.
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
// oidc-provider ships no type declarations (they live in @types/oidc-provider,
// which we do not need for a dozen lines): the import is typed by hand below.
// @ts-expect-error -- untyped JavaScript module
import ProviderModule from "oidc-provider";

/** The part of oidc-provider's API the peer uses (v8: `lib/provider.js`, `lib/models/`). */
interface ProviderApi {
  callback(): (req: unknown, res: unknown) => void;
  Client: { find(id: string): Promise<unknown> };
  Grant: new (fields: { accountId: string; clientId: string }) => { addOIDCScope(scope: string): void; save(): Promise<string> };
  AccessToken: new (fields: { accountId: string; client: unknown; grantId: string; scope: string; expiresIn: number }) => { save(): Promise<string> };
}
type ProviderClass = new (issuer: string, configuration: Record<string, unknown>) => ProviderApi;

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
}

async function main(): Promise<void> {
  const clientId = required("PEER_CLIENT_ID");
  const clientSecret = required("PEER_CLIENT_SECRET");
  const tokenFile = required("PEER_TOKEN_FILE");
  // A signing key of our own: the provider's development keys are refused in production mode.
  const signingKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" });
  const Provider = ProviderModule as ProviderClass;
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const port = (server.address() as AddressInfo).port;
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        token_endpoint_auth_method: "client_secret_basic",
        // A resource server's client: it introspects, it is never sent through an authorization flow.
        grant_types: [],
        response_types: [],
        redirect_uris: [],
      },
    ],
    features: { introspection: { enabled: true }, devInteractions: { enabled: false } },
    routes: { introspection: "/introspect" },
    ttl: { Grant: 14 * 24 * 60 * 60 },
    jwks: { keys: [{ ...signingKey, alg: "RS256", use: "sig", kid: "bench" }] },
    cookies: { keys: [randomBytes(32).toString("hex")] },
    // The answer carries the token's subject, like the service's.
    findAccount: (_ctx: unknown, id: string) => ({ accountId: id, claims: () => ({ sub: id }) }),
  });
  const client = await provider.Client.find(clientId);
  if (!client) throw new Error("oidc-provider did not load the bench client");
  // A grant, as an access token from a real authorization flow carries one:
  // introspection then also finds the grant and checks it (lib/actions/introspection.js).
  const accountId = "alice@example.com";
  const grant = new provider.Grant({ accountId, clientId });
  grant.addOIDCScope("openid");
  const grantId = await grant.save();
  const token = await new provider.AccessToken({ accountId, client, grantId, scope: "openid orders.read orders.write", expiresIn: 3600 }).save();
  writeFileSync(tokenFile, token);
  server.on("request", provider.callback());
  process.on("SIGTERM", () => server.close(() => process.exit(0)));
  process.stdout.write(`oidc-provider listening on 127.0.0.1:${port}\n`);
}

main().catch((error: unknown) => {
  const description = (error as { error_description?: string }).error_description;
  process.stderr.write(`oidc peer failed: ${description ? `${description}: ` : ""}${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
