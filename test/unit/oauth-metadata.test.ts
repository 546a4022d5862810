import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import type { HttpRequest } from "../../src/server/http-server.js";
import { METADATA_PATH, authorizationServerMetadata, isMetadataPath, oauthMetadataOptions } from "../../src/server/http/metadata.js";
import { TEST_KEK } from "../support/service.js";
import { CapturedLog } from "../support/fakes.js";

/**
 * Who the OAuth issuer is (RFC 8414 §2, §3.3), decided from configuration
 * only: the request contributes the port its connection reached in
 * development, never its Host header.
 */

/** A request that reached port 8443 and claims to be for evil.example. */
const request = { socket: { localPort: 8443 }, headers: { host: "evil.example" } } as unknown as HttpRequest;

describe("the OAuth issuer", () => {
  it("is PUBLIC_BASE_URL whenever it is set, in every environment", () => {
    for (const env of [{}, { TOKEN_ENVIRONMENT: "staging", KEY_ENCRYPTION_KEY: TEST_KEK }, { TOKEN_ENVIRONMENT: "production", KEY_ENCRYPTION_KEY: TEST_KEK }]) {
      const log = new CapturedLog();
      const options = oauthMetadataOptions(loadConfig({ ...env, PUBLIC_BASE_URL: "https://tokens.example.com/" }), log, false);
      expect(options.issuer(request)).toBe("https://tokens.example.com");
      expect(options.issuerPath).toBe("");
      expect(log.lines).toEqual([]);
    }
  });

  it("is the listen address in development without it: wildcards become loopback, IPv6 gets brackets, TLS gives https", () => {
    const cases: [string, boolean, string][] = [
      ["127.0.0.1", false, "http://127.0.0.1:8443"],
      ["0.0.0.0", false, "http://127.0.0.1:8443"],
      ["::", false, "http://[::1]:8443"],
      ["::1", true, "https://[::1]:8443"],
      ["localhost", true, "https://localhost:8443"],
    ];
    for (const [host, https, issuer] of cases) {
      expect(oauthMetadataOptions(loadConfig({ LISTEN_HOST: host }), new CapturedLog(), https).issuer(request), host).toBe(issuer);
    }
  });

  it("is none in staging and production without it, with a warning naming the key", () => {
    for (const environment of ["staging", "production"]) {
      const log = new CapturedLog();
      const options = oauthMetadataOptions(loadConfig({ TOKEN_ENVIRONMENT: environment, KEY_ENCRYPTION_KEY: TEST_KEK }), log, true);
      expect(options.issuer(request)).toBeUndefined();
      expect(log.lines).toHaveLength(1);
      expect(log.lines[0]).toMatchObject({ level: "warn", fields: { oauth_metadata: "not_served" } });
      expect(log.lines[0]!.message).toContain("PUBLIC_BASE_URL");
    }
  });

  it("with a path is also served at the RFC 8414 §3.1 path-inserted location", () => {
    const options = oauthMetadataOptions(loadConfig({ PUBLIC_BASE_URL: "https://api.example.com/tokens" }), new CapturedLog(), false);
    expect(options.issuer(request)).toBe("https://api.example.com/tokens");
    expect(isMetadataPath(METADATA_PATH, options)).toBe(true);
    expect(isMetadataPath(`${METADATA_PATH}/tokens`, options)).toBe(true);
    expect(isMetadataPath(`${METADATA_PATH}/other`, options)).toBe(false);
    expect(authorizationServerMetadata("https://api.example.com/tokens", "ES256")).toMatchObject({
      introspection_endpoint: "https://api.example.com/tokens/oauth2/introspect",
      revocation_endpoint: "https://api.example.com/tokens/oauth2/revoke",
      jwks_uri: "https://api.example.com/tokens/.well-known/jwks.json",
    });
  });
});
