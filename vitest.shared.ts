import * as path from "node:path"
import { fileURLToPath } from "node:url"
import type { UserConfig } from "vitest/config"

const root = path.dirname(fileURLToPath(import.meta.url))

// Tests import sibling packages by name; resolve them to source so `vitest run` needs no build first.
// Sub-path imports ("@cachekit/core/testing") map to the module of the same name in src.
const config: UserConfig = {
  resolve: {
    alias: [
      { find: /^@cachekit\/(core|backends|http|admin)$/, replacement: path.join(root, "packages/$1/src/index.ts") },
      { find: /^@cachekit\/(core|backends|http|admin)\/(.+)$/, replacement: path.join(root, "packages/$1/src/$2.ts") }
    ]
  },
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000
  }
}
export default config
