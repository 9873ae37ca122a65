import { DiskBackend } from "@cachekit/backends"
import * as BackendConformance from "@cachekit/core/BackendConformance"
import { Effect, Layer } from "effect"
import { tempDir } from "./tempDir.js"

BackendConformance.run("DiskBackend", {
  // a temp directory per test; time runs on TestClock (the store reads Clock only)
  layer: Layer.unwrapScoped(
    Effect.map(tempDir, (directory) => DiskBackend.layer({ directory, maxEntrySize: 16 * 1024 * 1024, fsync: false }))
  ),
  clock: "test",
  capabilities: { streaming: true }
})
