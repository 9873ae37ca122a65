/**
 * `npm run bench -- soak`: the long versions of the reliability tests (test/reliability in each package),
 * run by vitest with bigger numbers from the environment:
 * - 20,000 mixed requests at 128 connections through the caching proxy, RSS sampled every 1,000
 *   requests after a forced GC and checked flat after warm-up (CACHEKIT_SOAK_REQUESTS);
 * - Redis killed and restarted under 3 x 2,000 requests (CACHEKIT_SOAK_FAULT_PHASE);
 * - 5 SIGKILL / restart cycles of the disk-backed proxy (CACHEKIT_SOAK_CRASH_CYCLES);
 * - 1,000 fuzz runs per property (CACHEKIT_SOAK_FUZZ_RUNS).
 * Each suite prints `reliability/<name> {json}` lines with its figures; docs/reliability.md quotes them.
 * `CACHEKIT_SOAK_QUICK=1 npm run bench -- soak` runs only the 20k load.
 */
import { spawnSync } from "node:child_process"

const env = {
  ...process.env,
  // workers inherit it: the load test forces a GC before each RSS sample
  NODE_OPTIONS: `${process.env["NODE_OPTIONS"] ?? ""} --expose-gc`.trim(),
  CACHEKIT_SOAK_REQUESTS: process.env["CACHEKIT_SOAK_REQUESTS"] ?? "20000",
  CACHEKIT_SOAK_FAULT_PHASE: process.env["CACHEKIT_SOAK_FAULT_PHASE"] ?? "2000",
  CACHEKIT_SOAK_CRASH_CYCLES: process.env["CACHEKIT_SOAK_CRASH_CYCLES"] ?? "5",
  CACHEKIT_SOAK_FUZZ_RUNS: process.env["CACHEKIT_SOAK_FUZZ_RUNS"] ?? "1000"
}

const suites: Array<[project: string, files: Array<string>]> =
  process.env["CACHEKIT_SOAK_QUICK"] === "1" || process.argv.includes("quick")
    ? [["@cachekit/http", ["test/reliability/ProxyLoad"]]]
    : [
      ["@cachekit/http", ["test/reliability/"]],
      ["@cachekit/backends", ["test/reliability/"]],
      ["@cachekit/admin", ["test/reliability/"]],
      ["@cachekit/core", ["test/reliability/"]]
    ]

let failed = 0
for (const [project, files] of suites) {
  const started = Date.now()
  const result = spawnSync(
    process.execPath,
    [
      "node_modules/vitest/vitest.mjs",
      "run",
      "--project",
      project,
      "--testTimeout",
      "1800000",
      ...files
    ],
    { stdio: "inherit", env }
  )
  console.log(
    `soak: ${project} ${files.join(" ")} ${result.status === 0 ? "passed" : "FAILED"} in ${
      ((Date.now() - started) / 1000).toFixed(0)
    } s`
  )
  if (result.status !== 0) failed++
}
process.exit(failed === 0 ? 0 : 1)
