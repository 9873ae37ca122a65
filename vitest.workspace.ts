import { defineWorkspace } from "vitest/config"

// One vitest project per package; each package's vitest.config.ts names it after package.json.
export default defineWorkspace(["packages/*"])
