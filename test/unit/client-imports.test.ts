/**
 * The gateway client must be able to leave the house as its own package: every
 * file under src/client/ imports only its own files, the generated code
 * (gen/), node built-ins and npm packages — never the service's code.
 */
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const clientDir = join(root, "src", "client");
const genDir = join(root, "gen");

/** Every module specifier in a TypeScript file: static imports, re-exports, dynamic `import()` and `require()`. */
function specifiersOf(source: string): string[] {
  const found: string[] = [];
  const patterns = [
    /^\s*(?:import|export)\s+(?:type\s+)?(?:[^'";]*?\s+from\s+)?["']([^"']+)["']/gm,
    /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g,
    /\brequire\s*\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const pattern of patterns) for (const match of source.matchAll(pattern)) found.push(match[1]!);
  return found;
}

/** Why a specifier imported from `file` breaks the rule, or undefined when it is allowed. */
function violation(file: string, specifier: string): string | undefined {
  if (!specifier.startsWith(".") && !specifier.startsWith("/")) return undefined; // node: built-in or npm package
  const target = resolve(dirname(file), specifier);
  const inside = (dir: string) => target === dir || target.startsWith(dir + sep);
  if (inside(clientDir) || inside(genDir)) return undefined;
  return `${relative(root, file)} imports ${specifier} (${relative(root, target)})`;
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? filesUnder(join(dir, entry.name)) : /\.(c|m)?tsx?$/.test(entry.name) ? [join(dir, entry.name)] : [],
  );
}

describe("src/client stands alone", () => {
  it("finds every kind of import line", () => {
    const source = [
      'import { a } from "../domain/x.js";',
      'import type { B } from "../server/y.js";',
      'export { c } from "./c.js";',
      'import "../storage/side-effect.js";',
      "import * as grpc from '@grpc/grpc-js';",
      'const m = await import("../rpc/z.js");',
      "import {\n  d,\n  e,\n} from \"../../gen/tokens/v1/token_service_pb.js\";",
    ].join("\n");
    expect(specifiersOf(source)).toEqual(
      expect.arrayContaining(["../domain/x.js", "../server/y.js", "./c.js", "../storage/side-effect.js", "@grpc/grpc-js", "../rpc/z.js", "../../gen/tokens/v1/token_service_pb.js"]),
    );
    const file = join(clientDir, "example.ts");
    expect(violation(file, "../domain/x.js")).toMatch(/src\/domain\/x\.js/);
    expect(violation(file, "./c.js")).toBeUndefined();
    expect(violation(file, "../../gen/tokens/v1/token_service_pb.js")).toBeUndefined();
    expect(violation(file, "@grpc/grpc-js")).toBeUndefined();
    expect(violation(file, "node:crypto")).toBeUndefined();
  });

  it("imports nothing outside src/client/, gen/ and packages", () => {
    const files = filesUnder(clientDir);
    expect(files.length).toBeGreaterThan(0);
    const problems = files.flatMap((file) => specifiersOf(readFileSync(file, "utf8")).flatMap((specifier) => violation(file, specifier) ?? []));
    expect(problems).toEqual([]);
  });
});
