/**
 * Re-runs a bench as plain JavaScript under plain `node`, the way an application runs cachekit.
 *
 * Under tsx (which `npm run bench` uses: bench/run.ts spawns `node --import tsx`) the workspace
 * packages' ESM `dist` is rewritten into CommonJS with a `__name()` call per closure created and
 * Effect's CommonJS build is loaded, while the libraries compared against (in node_modules) run
 * untouched; that made cachekit's rows slower than shipped code is (found by bench/tiers.bench.ts).
 *
 * Plain mode (the default): builds the packages (`npx tsc -b`, so each package's `dist` is current; the
 * workspace links in node_modules point there), transpiles the bench file and every bench/lib/*.ts
 * with `ts.transpileModule` into node_modules/.cache/cachekit-bench/ (lib/ beside it, so the bench's
 * `./lib/*.js` imports resolve; packages resolve from node_modules as for any file in the repo), and
 * runs that under `node --expose-gc`. `CK_BENCH_LOADER=tsx` keeps the old way, to compare.
 *
 * `cpu`: also re-run under `taskset -c <cpu>` (when taskset exists), in either mode.
 *
 * Call it at the top of a bench, before any work: in the parent it runs the child and exits with the
 * child's status (the parent's imports have loaded by then, which costs only start-up time); in the
 * child (`CK_BENCH_PINNED=1`) it returns and the bench runs.
 */
import { execFileSync, spawnSync } from "node:child_process"
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import type TypeScript from "typescript"

export interface PlainNodeOptions {
  /** Pin the bench to this CPU with `taskset -c` (ignored when taskset is missing). */
  readonly cpu?: string
}

/** True when the bench runs as plain JavaScript (the default), false under tsx. */
export const asPlainJs = process.env["CK_BENCH_LOADER"] !== "tsx"

/** Whether `taskset` exists on this machine. */
export const hasTaskset = spawnSync("which", ["taskset"]).status === 0

/** How the running bench was started, for its README section. */
export const describeRun = (options: PlainNodeOptions = {}): string =>
  `${asPlainJs ? "ran as plain JS under node" : "ran under tsx (CK_BENCH_LOADER=tsx)"}, ${
    options.cpu !== undefined && hasTaskset ? `pinned to CPU ${options.cpu}` : "not pinned"
  }`

/** Writes `text` to `file` through a rename, so a bench starting at the same time never reads half a file. */
const writeAtomically = (file: string, text: string) => {
  const tmp = `${file}.${process.pid}.tmp`
  writeFileSync(tmp, text)
  renameSync(tmp, file)
}

export const runAsPlainNode = (importMetaUrl: string, options: PlainNodeOptions = {}): void => {
  if (process.env["CK_BENCH_PINNED"] === "1") return
  const pin = options.cpu !== undefined && hasTaskset
  if (!asPlainJs && !pin) return

  const self = fileURLToPath(importMetaUrl)
  const benchDir = path.dirname(self)
  let argv = [...process.execArgv, ...process.argv.slice(1)]
  if (asPlainJs) {
    const root = path.dirname(benchDir)
    try {
      execFileSync("npx", ["tsc", "-b"], { cwd: root, stdio: "inherit" })
    } catch {
      // another engineer's half-done edit can fail the build; the packages that built are current
      console.error("plainNode: `npx tsc -b` reported errors (above); running with the dist there is")
    }
    // loaded here only: the child does not need the compiler in its heap
    const ts = createRequire(importMetaUrl)("typescript") as typeof TypeScript
    const outDir = path.join(root, "node_modules", ".cache", "cachekit-bench")
    mkdirSync(path.join(outDir, "lib"), { recursive: true })
    writeAtomically(path.join(outDir, "package.json"), "{ \"type\": \"module\" }\n")
    const transpile = (from: string, to: string) =>
      writeAtomically(
        to,
        ts.transpileModule(readFileSync(from, "utf8"), {
          compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
          fileName: from
        }).outputText
      )
    const libDir = path.join(benchDir, "lib")
    for (const f of readdirSync(libDir)) {
      if (f.endsWith(".ts")) transpile(path.join(libDir, f), path.join(outDir, "lib", f.replace(/\.ts$/, ".js")))
    }
    const out = path.join(outDir, path.basename(self).replace(/\.ts$/, ".js"))
    transpile(self, out)
    argv = ["--expose-gc", out, ...process.argv.slice(2)]
  }
  const r = spawnSync(
    pin ? "taskset" : process.execPath,
    pin ? ["-c", options.cpu!, process.execPath, ...argv] : argv,
    {
      stdio: "inherit",
      // CK_BENCH_DIR: where the sources (and bench/README.md) are, for code that runs from the cache dir
      env: { ...process.env, CK_BENCH_PINNED: "1", CK_BENCH_DIR: benchDir }
    }
  )
  process.exit(r.status ?? 1)
}
