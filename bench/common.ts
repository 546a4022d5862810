/**
 * Small helpers shared by the benchmark's runner and its child processes:
 * where things live, reading a process's CPU time and memory from /proc,
 * percentiles, bounded child processes.
 */
import { spawn, spawnSync } from "node:child_process";
import { readFileSync, readdirSync, readlinkSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file runs as dist/bench/common.js). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** Where results go: latest.json and latest.svg are meant to be committed. */
export const RESULTS_DIR = resolve(ROOT, "bench", "results");
/** Scratch files of one run (request bodies, h2load logs, service logs); git-ignored. */
export const TMP_DIR = resolve(RESULTS_DIR, "tmp");
/** Compiled benchmark modules. */
export const DIST_BENCH = resolve(ROOT, "dist", "bench");

/** Core the servers run on, and core the load generators run on. */
export const SERVER_CPU = 0;
export const LOAD_CPU = 1;

/** Clock ticks per second of /proc/<pid>/stat times (getconf CLK_TCK; 100 on Linux). */
export const CLOCK_TICKS = (() => {
  const out = spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" });
  const value = Number(out.stdout.trim());
  return Number.isFinite(value) && value > 0 ? value : 100;
})();

/** User + system CPU time a process has used so far, in microseconds (all its threads). */
export function cpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) may hold spaces; fields after it are plain.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return ((utime + stime) * 1_000_000) / CLOCK_TICKS;
}

/**
 * The main thread's scheduler figures so far, in microseconds: time on a CPU
 * and time runnable but waiting in a run queue (/proc/<pid>/schedstat). A
 * process can show little CPU use because it had nothing to do, or because
 * it waited for a core other work held: only the second figure tells them apart.
 */
export function schedMicros(pid: number | "self"): { onCpu: number; waiting: number } {
  const [onCpu, waiting] = readFileSync(`/proc/${pid}/schedstat`, "utf8").trim().split(" ").map(Number);
  return { onCpu: (onCpu ?? 0) / 1000, waiting: (waiting ?? 0) / 1000 };
}

/** Resident set size of a process, in KiB. */
export function rssKiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!match) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]);
}

/** Local TCP ports of a process's sockets (IPv4 and IPv6), from /proc. */
export function localTcpPorts(pid: number): Set<number> {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      const match = /^socket:\[(\d+)\]$/.exec(link);
      if (match) inodes.add(match[1]!);
    } catch {
      // The descriptor closed meanwhile.
    }
  }
  const ports = new Set<number>();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10) continue;
      if (inodes.has(cols[9]!)) ports.add(parseInt(cols[1]!.split(":")[1]!, 16));
    }
  }
  return ports;
}

/** The q-quantile (0..1) of ascending-sorted values; NaN when empty. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[index]!;
}

/** Sorts a copy ascending (numeric). */
export function sortedCopy(values: ArrayLike<number>): Float64Array {
  return Float64Array.from(values).sort();
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}

/** What a finished child process printed. */
export interface ChildResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a command to completion, killing it (SIGKILL) if it outlives
 * `timeoutMs`: every load loop of the benchmark is bounded, and so is the
 * process around it.
 */
export function runBounded(command: string, args: readonly string[], timeoutMs: number, env?: NodeJS.ProcessEnv): Promise<ChildResult> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env: env ?? process.env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => out.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => err.push(chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      fail(error);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      done({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    });
  });
}

/** Runs a Node script of dist/bench pinned to the load core, passing one JSON argument; returns its JSON answer. */
export async function runLoadScript<T>(script: string, input: unknown, timeoutMs: number): Promise<T> {
  const result = await runBounded("taskset", ["-c", String(LOAD_CPU), process.execPath, resolve(DIST_BENCH, script), JSON.stringify(input)], timeoutMs);
  if (result.code !== 0) throw new Error(`${script} failed (exit ${result.code}):\n${result.stderr.slice(-2000)}`);
  const last = result.stdout.trim().split("\n").pop() ?? "";
  return JSON.parse(last) as T;
}

/** Rounds for display: 3 significant digits below 100, whole numbers above. */
export function round(value: number): number {
  if (!Number.isFinite(value)) return value;
  if (Math.abs(value) >= 100) return Math.round(value);
  return Number(value.toPrecision(3));
}

/**
 * Busy and total clock ticks of one core so far (/proc/stat `cpuN`: busy is
 * everything but idle and iowait), to tell whether anything else kept a
 * pinned server's core busy over a window.
 */
export function coreTicks(cpu: number): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n").find((l) => l.startsWith(`cpu${cpu} `));
  const fields = (line ?? "").trim().split(/\s+/).slice(1).map(Number);
  const total = fields.reduce((sum, value) => sum + value, 0);
  return { busy: total - (fields[3] ?? 0) - (fields[4] ?? 0), total };
}
