/**
 * `npm run bench` runs every `bench/*.bench.ts` one after another (each in its own process, so
 * one library's memory does not skew the next); `npm run bench -- name` runs only the matching ones.
 */
import { spawnSync } from "node:child_process"
import { readdirSync } from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const dir = path.dirname(fileURLToPath(import.meta.url))
const filters = process.argv.slice(2)
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".bench.ts"))
  .filter((f) => filters.length === 0 || filters.some((name) => f.includes(name)))
  .sort()
let failed = 0
for (const file of files) {
  console.log(`\n=== ${file}`)
  const result = spawnSync(process.execPath, ["--import", "tsx", "--expose-gc", path.join(dir, file)], {
    stdio: "inherit",
    cwd: path.join(dir, "..")
  })
  if (result.status !== 0) failed++
}
process.exit(failed === 0 ? 0 : 1)
