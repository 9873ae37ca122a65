import { MemoryBackend } from "@cachekit/core"
import * as BackendConformance from "@cachekit/core/BackendConformance"

BackendConformance.run("MemoryBackend", {
  layer: MemoryBackend.layer({ maxBytes: 64 * 1024 * 1024 }),
  clock: "test",
  capabilities: { tags: true, scan: true }
})
