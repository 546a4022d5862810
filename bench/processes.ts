/**
 * Servers under test as child processes, pinned to the server core with
 * `taskset` (which execs, so the child's pid is the server's own and its
 * /proc figures are the server's alone), or unpinned as `npm start` runs
 * them (the soak test).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { cpus } from "node:os";
import { resolve } from "node:path";
import { ROOT, SERVER_CPU, TMP_DIR, rssKiB, sleep } from "./common.js";

/** A running server child. */
export interface ServerProcess {
  readonly name: string;
  readonly pid: number;
  readonly grpcPort: number;
  /** The Connect/HTTP port (0 for the echo server, which has none). */
  readonly httpPort: number;
  readonly logFile: string;
  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** Whether it has exited. */
  exited(): boolean;
}

/** How to start a server child. */
interface SpawnOptions {
  readonly name: string;
  readonly script: string;
  readonly env: Record<string, string>;
  readonly nodeArgs?: readonly string[];
  /** Parses the ports from one line of the child's stdout; undefined while not ready. */
  readonly ready: (line: string) => { grpcPort: number; httpPort: number } | undefined;
  readonly timeoutMs: number;
  /** Pin to SERVER_CPU (the default), or let the scheduler place it. */
  readonly pinned?: boolean;
}

async function spawnServer(options: SpawnOptions): Promise<ServerProcess> {
  const logFile = resolve(TMP_DIR, `${options.name}.log`);
  const fd = openSync(logFile, "w");
  const nodeCommand = [process.execPath, ...(options.nodeArgs ?? []), resolve(ROOT, options.script)];
  // Unpinned means every core: without an explicit list the child would
  // inherit the runner's own affinity (core 1, from the npm script).
  const cores = options.pinned === false ? `0-${Math.max(0, cpus().length - 1)}` : String(SERVER_CPU);
  const [command, ...args] = ["taskset", "-c", cores, ...nodeCommand];
  const child: ChildProcess = spawn(
    command!,
    args,
    // Output goes to a file, not a pipe: the runner must not spend CPU (or
    // apply back-pressure) while the server is under load.
    { cwd: ROOT, env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ...options.env }, stdio: ["ignore", fd, fd] },
  );
  closeSync(fd);
  let exitCode: number | null | undefined;
  const exit = new Promise<void>((done) => child.on("exit", (code) => ((exitCode = code), done())));
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${options.name}: could not spawn`);

  const deadline = Date.now() + options.timeoutMs;
  let ports: { grpcPort: number; httpPort: number } | undefined;
  while (ports === undefined) {
    if (exitCode !== undefined) throw new Error(`${options.name} exited (${exitCode}) before listening:\n${tail(logFile)}`);
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`${options.name} not listening within ${options.timeoutMs} ms:\n${tail(logFile)}`);
    }
    await sleep(50);
    for (const line of readFileSync(logFile, "utf8").split("\n")) {
      ports ??= options.ready(line);
    }
  }
  const found = ports;
  let stopping: Promise<void> | undefined;
  return {
    name: options.name,
    pid,
    grpcPort: found.grpcPort,
    httpPort: found.httpPort,
    logFile,
    exited: () => exitCode !== undefined,
    stop: (graceMs = 15_000) =>
      (stopping ??= (async () => {
        if (exitCode !== undefined) return;
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
        await exit;
        clearTimeout(timer);
      })()),
  };
}

function tail(file: string): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-20).join("\n");
  } catch {
    return "(no log)";
  }
}

/**
 * Starts the real service (`node dist/src/main.js`) on 127.0.0.1 with free
 * ports. `env` adds to a clean environment (nothing leaks in from the
 * runner's own). Pinned to SERVER_CPU unless `pinned` is false.
 */
export function startTokenService(name: string, env: Record<string, string>, nodeArgs: readonly string[] = [], pinned = true): Promise<ServerProcess> {
  return spawnServer({
    name,
    pinned,
    script: "dist/src/main.js",
    nodeArgs,
    env: { LISTEN_HOST: "127.0.0.1", GRPC_PORT: "0", HTTP_PORT: "0", LOG_LEVEL: "info", SHUTDOWN_GRACE: "2s", ...env },
    timeoutMs: 90_000,
    ready: (line) => {
      if (!line.includes("token service listening")) return undefined;
      const parsed = JSON.parse(line) as { grpc?: string; http?: string };
      const port = (address: string | undefined) => Number(address?.slice(address.lastIndexOf(":") + 1));
      return { grpcPort: port(parsed.grpc), httpPort: port(parsed.http) };
    },
  });
}

/** Starts the bare grpc-js echo server (the floor). */
export function startEchoServer(responseBytes: number): Promise<ServerProcess> {
  return spawnServer({
    name: "echo",
    script: "dist/bench/echo-server.js",
    env: { ECHO_RESPONSE_BYTES: String(responseBytes) },
    timeoutMs: 20_000,
    ready: (line) => {
      const match = /^echo listening on 127\.0\.0\.1:(\d+)$/.exec(line.trim());
      return match ? { grpcPort: Number(match[1]), httpPort: 0 } : undefined;
    },
  });
}

/** Used and committed bytes of one V8 heap space. */
export interface SpaceBytes {
  readonly used: number;
  readonly committed: number;
}

/**
 * RSS now, then RSS and heap after a full GC and once memory has settled:
 * the server must have been started with `--expose-gc` and bench/gc-signal.js
 * preloaded, whose SIGUSR2 hook collects, waits for freed pages to go back
 * to the OS, and prints `{"benchGc": process.memoryUsage(), "spaces": …}`.
 */
export async function memoryOf(
  server: ServerProcess,
): Promise<{
  rawRssKiB: number;
  gc: { rssKiB: number; heapUsedKiB: number; heapTotalKiB: number; externalKiB: number };
  spaces: Record<string, SpaceBytes>;
  /** RSS by kind of mapping, bytes (see bench/gc-signal.ts). */
  mappings: Record<string, number>;
}> {
  const rawRssKiB = rssKiB(server.pid);
  const lines = () => readFileSync(server.logFile, "utf8").split("\n").filter((line) => line.startsWith('{"benchGc"'));
  const seen = lines().length;
  process.kill(server.pid, "SIGUSR2");
  // The hook settles for up to ten seconds.
  for (let i = 0; i < 300 && lines().length === seen; i++) await sleep(50);
  const last = lines()[seen];
  if (last === undefined) throw new Error(`${server.name} did not answer SIGUSR2 with a GC report`);
  const report = JSON.parse(last) as { benchGc: NodeJS.MemoryUsage; spaces?: Record<string, SpaceBytes>; mappings?: Record<string, number> };
  const usage = report.benchGc;
  return {
    rawRssKiB,
    gc: { rssKiB: rssKiB(server.pid), heapUsedKiB: usage.heapUsed / 1024, heapTotalKiB: usage.heapTotal / 1024, externalKiB: (usage.external + usage.arrayBuffers) / 1024 },
    spaces: report.spaces ?? {},
    mappings: report.mappings ?? {},
  };
}

/**
 * Starts the peer, oidc-provider's introspection (bench/oidc-peer.ts), pinned
 * like the service, with `NODE_ENV=production` as a deployment would run it.
 * Its one opaque access token is written to `tokenFile`; its port is `httpPort`.
 */
export function startOidcPeer(clientId: string, clientSecret: string, tokenFile: string): Promise<ServerProcess> {
  return spawnServer({
    name: "oidc-provider",
    script: "dist/bench/oidc-peer.js",
    env: { NODE_ENV: "production", PEER_CLIENT_ID: clientId, PEER_CLIENT_SECRET: clientSecret, PEER_TOKEN_FILE: tokenFile },
    timeoutMs: 30_000,
    ready: (line) => {
      const match = /^oidc-provider listening on 127\.0\.0\.1:(\d+)$/.exec(line.trim());
      return match ? { grpcPort: 0, httpPort: Number(match[1]) } : undefined;
    },
  });
}

/** Starts the bare `node:http` floor (bench/http-floor.ts), pinned like the service. */
export function startHttpFloor(responseBytes: number): Promise<ServerProcess> {
  return spawnServer({
    name: "http-floor",
    script: "dist/bench/http-floor.js",
    env: { FLOOR_RESPONSE_BYTES: String(responseBytes) },
    timeoutMs: 20_000,
    ready: (line) => {
      const match = /^http floor listening on 127\.0\.0\.1:(\d+)$/.exec(line.trim());
      return match ? { grpcPort: 0, httpPort: Number(match[1]) } : undefined;
    },
  });
}
