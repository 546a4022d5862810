import { existsSync, readFileSync, readdirSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { Authorization } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { CONFIG_KEYS, extAuthzProtected, forwardAuthProtected, loadConfig } from "../../src/config.js";
import { CHECK_METHOD, EXT_AUTHZ_SECRET_METADATA } from "../../src/rpc/ext-authz.js";

/**
 * The Dockerfile and the Kubernetes example cannot be run here (no container
 * engine, no cluster), so this keeps them consistent with what can be
 * checked: every environment variable they set is a configuration key, the
 * values pass the service's own validation, and ports, paths and commands
 * agree with the code.
 */
const root = new URL("../../", import.meta.url);
const read = (path: string) => readFileSync(new URL(path, root), "utf8");

/** Dockerfile instructions, continuation lines joined, comments dropped. */
function instructions(dockerfile: string): { op: string; args: string }[] {
  return dockerfile
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const [op = "", ...rest] = line.split(/\s+/);
      return { op: op.toUpperCase(), args: rest.join(" ") };
    });
}

/** `ENV A=1 B="2"` → { A: "1", B: "2" }. */
function envOf(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const match of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("([^"]*)"|\S*)/g)) out[match[1]!] = match[3] ?? match[2]!;
  return out;
}

/**
 * The `env:` entries of a manifest: `- name: X` followed by `value: "…"` (or a
 * `valueFrom`, recorded as undefined). Upper-case names only: container
 * ports and volumes have lower-case names.
 */
function manifestEnv(yaml: string): Map<string, string | undefined> {
  const env = new Map<string, string | undefined>();
  const lines = yaml.split("\n");
  lines.forEach((line, i) => {
    const name = /^\s*-\s+name:\s+"?([A-Z][A-Z0-9_]*)"?\s*(#.*)?$/.exec(line)?.[1];
    if (name === undefined) return;
    const value = /^\s*value:\s+"?([^"#]*?)"?\s*(#.*)?$/.exec(lines[i + 1] ?? "")?.[1];
    env.set(name, value);
  });
  return env;
}

describe("the Dockerfile", () => {
  const dockerfile = read("Dockerfile");
  const steps = instructions(dockerfile);
  const stages = steps.filter((s) => s.op === "FROM");
  const runtimeSteps = steps.slice(steps.lastIndexOf(stages.at(-1)!));
  const env = Object.assign({}, ...runtimeSteps.filter((s) => s.op === "ENV").map((s) => envOf(s.args))) as Record<string, string>;

  it("sets only configuration keys, with values the service accepts", () => {
    expect(Object.keys(env).length).toBeGreaterThan(0);
    for (const key of Object.keys(env)) expect(Object.keys(CONFIG_KEYS), `ENV ${key}`).toContain(key);
    const config = loadConfig(env);
    expect(config.listenHost).toBe("0.0.0.0");
  });

  it("builds on node:20-bookworm-slim in two stages and runs production dependencies only, as a non-root user", () => {
    expect(stages.map((s) => s.args)).toEqual(["node:20-bookworm-slim AS build", "node:20-bookworm-slim AS runtime"]);
    const runs = runtimeSteps.filter((s) => s.op === "RUN").map((s) => s.args);
    expect(runs.some((r) => r.includes("npm ci --omit=dev"))).toBe(true);
    expect(steps.filter((s) => s.op === "RUN").some((r) => r.args.includes("npm run build"))).toBe(true);
    const user = runtimeSteps.filter((s) => s.op === "USER").at(-1)?.args;
    expect(user).toBeDefined();
    expect(user).not.toMatch(/^(0|root)(:|$)/);
  });

  it("exposes the ports it configures and starts the built server", () => {
    const config = loadConfig(env);
    const exposed = runtimeSteps.filter((s) => s.op === "EXPOSE").flatMap((s) => s.args.split(/\s+/)).map(Number);
    expect(exposed.sort()).toEqual([config.grpcPort, config.httpPort].sort());
    expect(runtimeSteps.find((s) => s.op === "CMD")?.args).toBe('["node", "dist/src/main.js"]');
    // tsc -p tsconfig.build.json compiles src/main.ts to dist/src/main.js.
    expect(JSON.parse(read("tsconfig.json")).compilerOptions).toMatchObject({ outDir: "dist", rootDir: "." });
    expect(existsSync(new URL("src/main.ts", root))).toBe(true);
  });

  it("copies only files that exist and that .dockerignore lets through", () => {
    const ignored = read(".dockerignore").split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
    const copies = steps.filter((s) => s.op === "COPY" && !s.args.startsWith("--from"));
    const sources = copies.flatMap((s) => s.args.split(/\s+/).slice(0, -1));
    expect(sources).toEqual(expect.arrayContaining(["package.json", "package-lock.json", "gen", "src"]));
    for (const source of sources) {
      expect(existsSync(new URL(source, root)), source).toBe(true);
      expect(ignored, source).not.toContain(source);
    }
  });
});

describe("the Kubernetes example", () => {
  const dir = "examples/kubernetes/";
  const manifests = readdirSync(new URL(dir, root)).filter((f) => f.endsWith(".yaml"));
  const deployment = read(`${dir}deployment.yaml`);
  const env = manifestEnv(deployment);

  it("sets only configuration keys in every manifest", () => {
    expect(manifests).toEqual(expect.arrayContaining(["deployment.yaml", "service.yaml"]));
    for (const file of manifests) {
      for (const key of manifestEnv(read(`${dir}${file}`)).keys()) expect(Object.keys(CONFIG_KEYS), `${file}: ${key}`).toContain(key);
    }
  });

  it("gives values the service accepts, TOKEN_ENVIRONMENT explicitly and DATABASE_URL from a Secret", () => {
    expect(env.get("TOKEN_ENVIRONMENT")).toBe("production");
    expect(env.has("DATABASE_URL")).toBe(true);
    expect(env.get("DATABASE_URL")).toBeUndefined(); // valueFrom, not a literal
    expect(deployment).toMatch(/secretKeyRef:\s+name: token-service-db\s+key: DATABASE_URL/);
    expect(read(`${dir}secret.example.yaml`)).toMatch(/name: token-service-db[\s\S]*DATABASE_URL: "postgres:\/\//);
    const literal = Object.fromEntries([...env].filter((e): e is [string, string] => e[1] !== undefined));
    const config = loadConfig({ ...literal, DATABASE_URL: "postgres://tokens@postgres:5432/tokens" });
    expect(config).toMatchObject({ environment: "production", listenHost: "0.0.0.0" });
    expect(Number(/terminationGracePeriodSeconds: (\d+)/.exec(deployment)![1]) * 1000).toBeGreaterThan(config.shutdownGraceMs + 5_000);
  });

  it("runs three replicas with readiness on /readyz and liveness on /healthz of the HTTP port", () => {
    const config = loadConfig({ ...Object.fromEntries([...env].filter((e): e is [string, string] => e[1] !== undefined)), DATABASE_URL: "postgres://x@y/z" });
    expect(deployment).toMatch(/^\s+replicas: 3$/m);
    expect(deployment).toMatch(/readinessProbe:\s+httpGet:\s+path: \/readyz\s+port: http/);
    expect(deployment).toMatch(/livenessProbe:\s+httpGet:\s+path: \/healthz\s+port: http/);
    expect(deployment).toMatch(new RegExp(`name: http\\s+containerPort: ${config.httpPort}`));
    expect(deployment).toMatch(new RegExp(`name: grpc\\s+containerPort: ${config.grpcPort}`));
    const service = read(`${dir}service.yaml`);
    expect(service).toMatch(/name: grpc\s+port: 50051\s+targetPort: grpc/);
    expect(service).toMatch(/name: http\s+port: 8080\s+targetPort: http/);
  });
});

describe("the gateway examples (forward auth)", () => {
  const readme = read("README.md");
  const section = readme.slice(readme.indexOf("## Forward auth"), readme.indexOf("\n## ", readme.indexOf("## Forward auth") + 1));
  /** The fenced code blocks of the README's forward-auth section in one language. */
  const blocks = (lang: string) => [...section.matchAll(new RegExp("```" + lang + "\\n([\\s\\S]*?)```", "g"))].map((m) => m[1]!);

  it("the nginx example and the README's nginx snippet add the proxy's secret to the auth request", () => {
    expect(read("examples/nginx/nginx.conf")).toMatch(/location = \/_auth \{[^}]*proxy_set_header X-Forward-Auth-Secret "\{\{FORWARD_AUTH_SECRET\}\}";/);
    expect(blocks("nginx")).toHaveLength(1);
    expect(blocks("nginx")[0]).toMatch(/location = \/_auth \{[^}]*proxy_set_header X-Forward-Auth-Secret /);
  });

  it("the Traefik snippet adds the secret, forwards it to /auth only, and drops it before the upstream", () => {
    const traefik = blocks("yaml").find((b) => b.includes("forwardAuth:"));
    expect(traefik).toBeDefined();
    expect(traefik).toMatch(/add-auth-secret:\s+headers: \{ customRequestHeaders: \{ X-Forward-Auth-Secret: "[^"]+" \} \}/);
    expect(traefik).toMatch(/authRequestHeaders: \[[^\]]*X-Forward-Auth-Secret[^\]]*\]/);
    expect(traefik).toMatch(/drop-auth-secret:\s+headers: \{ customRequestHeaders: \{ X-Forward-Auth-Secret: "" \} \}/);
    expect(traefik).toContain("middlewares: [add-auth-secret, token-auth, drop-auth-secret]");
  });

  it("the Caddy and Envoy snippets add the secret to the auth request", () => {
    expect(blocks("caddy")).toHaveLength(1);
    expect(blocks("caddy")[0]).toMatch(/forward_auth [^{]+\{[^}]*header_up X-Forward-Auth-Secret \S+/);
    const envoy = blocks("yaml").find((b) => b.includes("ext_authz"));
    expect(envoy).toMatch(/authorization_request:\s+headers_to_add: \[\{ key: X-Forward-Auth-Secret, value: "[^"]+" \}\]/);
  });

  it("the Kubernetes example gives the service FORWARD_AUTH_SECRET from an optional Secret, so /auth is protected in production", () => {
    const deployment = read("examples/kubernetes/deployment.yaml");
    expect(manifestEnv(deployment).has("FORWARD_AUTH_SECRET")).toBe(true);
    expect(deployment).toMatch(/- name: FORWARD_AUTH_SECRET\s+valueFrom:\s+secretKeyRef:\s+name: token-service-forward-auth\s+key: FORWARD_AUTH_SECRET\s+optional: true/);
    expect(read("examples/kubernetes/secret.example.yaml")).toMatch(/name: token-service-forward-auth[\s\S]*FORWARD_AUTH_SECRET: "[\x21-\x7e]{16,256}"/);
    const literal = Object.fromEntries([...manifestEnv(deployment)].filter((e): e is [string, string] => e[1] !== undefined));
    const config = loadConfig({ ...literal, DATABASE_URL: "postgres://x@y/z", FORWARD_AUTH_SECRET: "from-the-secret-0123456789" });
    expect(forwardAuthProtected(config)).toBe(true);
  });
});

/**
 * The Envoy, Istio and Envoy Gateway examples cannot run here (no Envoy
 * binary, no cluster): each must parse as YAML and point at what the service
 * serves: the Check method, the gRPC port, the credential header, and the
 * protection the service demands outside development (the secret as gRPC
 * metadata, or mutual TLS on the gRPC port).
 */
describe("the gateway examples (ext_authz over gRPC)", () => {
  // any: these are untyped YAML trees walked by path; a wrong path fails the assertion that reads it.
  type Node = Record<string, any>;
  const docs = (path: string): Node[] =>
    parseAllDocuments(read(path)).map((d) => {
      expect(d.errors, path).toEqual([]);
      return d.toJS() as Node;
    });
  const defaults = loadConfig({});
  /** A production service with mutual TLS on its gRPC port, as the Istio and Envoy Gateway examples need. */
  const mtls = loadConfig({ TOKEN_ENVIRONMENT: "production", EXT_AUTHZ_ENABLED: "true", TLS_CERT_FILE: "/tls/tls.crt", TLS_KEY_FILE: "/tls/tls.key", TLS_CLIENT_CA_FILE: "/tls/ca.crt", TLS_PORTS: "grpc" });

  it("the service serves the method every gateway calls, on the gRPC port", () => {
    expect(Authorization.typeName).toBe("envoy.service.auth.v3.Authorization");
    expect(Authorization.methods.map((m) => `/${m.parent.typeName}/${m.name}`)).toEqual([CHECK_METHOD]);
    expect(CHECK_METHOD).toBe("/envoy.service.auth.v3.Authorization/Check");
    expect(defaults.grpcPort).toBe(50051);
    expect(defaults.extAuthzHeader).toBe("authorization");
    expect(extAuthzProtected(mtls)).toBe(true);
  });

  it("Envoy: the gRPC ext_authz filter, V3, fail-closed, no body, before the router, sending the secret as metadata to an HTTP/2 cluster on the gRPC port", () => {
    const [bootstrap] = docs("examples/envoy/envoy.yaml");
    const hcm = bootstrap!.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
    const filters: Node[] = hcm.http_filters;
    expect(filters.map((f) => f.name)).toEqual(["envoy.filters.http.ext_authz", "envoy.filters.http.router"]);
    const authz = filters[0]!.typed_config;
    expect(authz["@type"]).toBe("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz");
    expect(authz).toMatchObject({ transport_api_version: "V3", failure_mode_allow: false });
    expect(authz.with_request_body).toBeUndefined();
    expect(authz.http_service).toBeUndefined();
    // Envoy sends every request header over gRPC unless allowed_headers narrows it: the credential header must not be left out.
    expect(authz.allowed_headers).toBeUndefined();
    expect(authz.grpc_service.initial_metadata).toEqual([{ key: EXT_AUTHZ_SECRET_METADATA, value: "{{EXT_AUTHZ_SECRET}}" }]);
    const cluster = (bootstrap!.static_resources.clusters as Node[]).find((c) => c.name === authz.grpc_service.envoy_grpc.cluster_name);
    expect(cluster).toBeDefined();
    expect(cluster!.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value).toBe(defaults.grpcPort);
    expect(cluster!.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].explicit_http_config).toHaveProperty("http2_protocol_options");
    // The secret placeholder stands for a value the service accepts, and then Check is served in production.
    expect(extAuthzProtected(loadConfig({ TOKEN_ENVIRONMENT: "production", EXT_AUTHZ_ENABLED: "true", EXT_AUTHZ_SECRET: "from-the-secret-0123456789" }))).toBe(true);
  });

  it("Istio: an envoyExtAuthzGrpc provider on the gRPC port, a CUSTOM AuthorizationPolicy using it, mutual TLS from the gateway", () => {
    const [operator] = docs("examples/istio/mesh-config.yaml");
    const providers: Node[] = operator!.spec.meshConfig.extensionProviders;
    expect(providers).toHaveLength(1);
    const provider = providers[0]!;
    expect(provider.envoyExtAuthzGrpc).toMatchObject({ service: "token-service.tokens.svc.cluster.local", port: defaults.grpcPort, failOpen: false });
    const [policy] = docs("examples/istio/authorization-policy.yaml");
    expect(policy).toMatchObject({ kind: "AuthorizationPolicy", spec: { action: "CUSTOM", provider: { name: provider.name } } });
    const [rule] = docs("examples/istio/destination-rule.yaml");
    expect(rule!.spec.host).toBe(provider.envoyExtAuthzGrpc.service);
    expect(rule!.spec.trafficPolicy.portLevelSettings[0]).toMatchObject({ port: { number: defaults.grpcPort }, tls: { mode: "MUTUAL" } });
  });

  it("Envoy Gateway: a SecurityPolicy with extAuth.grpc on the gRPC port, fail-closed, passing the credential header, with mutual TLS to the service", () => {
    const all = docs("examples/envoy-gateway/security-policy.yaml");
    const byKind = (kind: string) => all.find((d) => d.kind === kind)!;
    const policy = byKind("SecurityPolicy");
    expect(policy.spec.extAuth.failOpen).toBe(false);
    expect(policy.spec.extAuth.http).toBeUndefined();
    expect(policy.spec.extAuth.headersToExtAuth).toContain(defaults.extAuthzHeader);
    const backend = policy.spec.extAuth.grpc.backendRefs[0];
    expect(backend).toMatchObject({ name: "token-service", port: defaults.grpcPort });
    // The Kubernetes example's Service names that port `grpc`, which the BackendTLSPolicy targets.
    expect(read("examples/kubernetes/service.yaml")).toMatch(new RegExp(`name: grpc\\s+port: ${defaults.grpcPort}`));
    expect(byKind("BackendTLSPolicy").spec.targetRefs[0]).toMatchObject({ kind: "Service", name: backend.name, sectionName: "grpc" });
    expect(byKind("BackendTLSPolicy").metadata.namespace).toBe(backend.namespace);
    expect(byKind("ReferenceGrant").spec.to[0]).toMatchObject({ kind: "Service", name: backend.name });
    expect(byKind("EnvoyProxy").spec.backendTLS.clientCertificateRef).toMatchObject({ kind: "Secret" });
  });
});
