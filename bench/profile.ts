/**
 * Where the server's CPU goes: reads a V8 `.cpuprofile` (written by
 * `node --cpu-prof`) and sums self time per function (name + script), the
 * way the "Bottom-up" view of DevTools does.
 */
import { readFileSync } from "node:fs";
import { ROOT } from "./common.js";

/** The parts of a .cpuprofile this reads. */
interface CpuProfile {
  readonly nodes: readonly { readonly id: number; readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number } }[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** One row of the summary. */
export interface ProfileRow {
  readonly function: string;
  readonly where: string;
  readonly selfMs: number;
  /** Share of the busy (non-idle) time. */
  readonly percent: number;
}

/** The summary of one profile. */
export interface ProfileSummary {
  readonly totalMs: number;
  readonly idleMs: number;
  readonly gcMs: number;
  readonly top: ProfileRow[];
}

/** Shortens a script URL: repository files relative to the root, packages by name. */
function shortWhere(url: string): string {
  if (url === "") return "";
  const path = url.startsWith("file://") ? url.slice("file://".length) : url;
  const nm = path.lastIndexOf("/node_modules/");
  if (nm >= 0) return path.slice(nm + "/node_modules/".length);
  if (path.startsWith(`${ROOT}/`)) return path.slice(ROOT.length + 1);
  return path;
}

/** Sums self time per function+script and returns the `top` heaviest of the busy time. */
export function summarizeProfile(file: string, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const keyOf = new Map<number, string>();
  const frames = new Map<string, { fn: string; where: string }>();
  for (const node of profile.nodes) {
    const fn = node.callFrame.functionName === "" ? "(anonymous)" : node.callFrame.functionName;
    // Anonymous functions of one script are told apart by their line.
    const where = shortWhere(node.callFrame.url) + (node.callFrame.functionName === "" && node.callFrame.url !== "" ? `:${node.callFrame.lineNumber + 1}` : "");
    const key = `${fn}\u0000${where}`;
    keyOf.set(node.id, key);
    frames.set(key, { fn, where });
  }
  // timeDeltas[i] is the time between sample i-1 and sample i (µs); it is
  // charged to the function on the stack at sample i.
  const selfMicros = new Map<string, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const key = keyOf.get(profile.samples[i]!);
    if (key === undefined) continue;
    selfMicros.set(key, (selfMicros.get(key) ?? 0) + Math.max(0, profile.timeDeltas[i] ?? 0));
  }
  let total = 0;
  let idle = 0;
  let gc = 0;
  for (const [key, micros] of selfMicros) {
    total += micros;
    const fn = frames.get(key)!.fn;
    if (fn === "(idle)") idle += micros;
    if (fn === "(garbage collector)") gc += micros;
  }
  const busy = Math.max(1, total - idle);
  const rows = [...selfMicros]
    .filter(([key]) => frames.get(key)!.fn !== "(idle)")
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([key, micros]) => {
      const frame = frames.get(key)!;
      return { function: frame.fn, where: frame.where, selfMs: Math.round(micros / 100) / 10, percent: Math.round((micros / busy) * 1000) / 10 };
    });
  return { totalMs: Math.round(total / 1000), idleMs: Math.round(idle / 1000), gcMs: Math.round(gc / 1000), top: rows };
}
