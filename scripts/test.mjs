// Runs every package's vitest project and ends with the line CI reads: "N passed, N failed".
// Extra arguments are passed to vitest (e.g. `npm run test:only -- --project @cachekit/core`).
import { spawnSync } from "node:child_process"
import { existsSync, readFileSync, rmSync } from "node:fs"

const report = ".vitest-report.json"
rmSync(report, { force: true })
const result = spawnSync(
  process.execPath,
  [
    "node_modules/vitest/vitest.mjs",
    "run",
    "--reporter=default",
    "--reporter=json",
    `--outputFile.json=${report}`,
    ...process.argv.slice(2)
  ],
  { stdio: "inherit" }
)
let passed = 0
let failed = 0
let skipped = 0
if (existsSync(report)) {
  const json = JSON.parse(readFileSync(report, "utf8"))
  passed = json.numPassedTests
  // a file that failed without a failed test (a beforeAll that threw or timed out, an import error)
  // reports its tests as skipped: count each such file as a failure, or the line would say 0 failed
  const failedFilesWithoutFailedTests = json.testResults.filter((file) =>
    file.status === "failed" && !file.assertionResults.some((test) => test.status === "failed")
  ).length
  failed = json.numFailedTests + (json.numRuntimeErrorTestSuites ?? 0) + failedFilesWithoutFailedTests
  skipped = json.numPendingTests + json.numTodoTests
} else {
  failed = 1
}
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`)
process.exit(result.status === 0 && failed === 0 ? 0 : 1)
