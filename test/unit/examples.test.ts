import { existsSync, readFileSync, readdirSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { CONFIG_KEYS, forwardAuthProtected, loadConfig } from "../../src/config.js";

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
