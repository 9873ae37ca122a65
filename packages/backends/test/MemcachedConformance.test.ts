import { MemcachedBackend } from "@cachekit/backends"
import * as BackendConformance from "@cachekit/core/BackendConformance"
import { inject } from "@effect/vitest"
import { Layer } from "effect"

// two servers of their own (clear flushes whole servers), so keys spread over a real ring
const ports = inject("memcachedPorts").slice(0, 2)
let counter = 0

BackendConformance.run("MemcachedBackend", {
  layer: Layer.suspend(() =>
    MemcachedBackend.layer({
      servers: ports.map((p) => `127.0.0.1:${p}`),
      prefix: `conformance:${++counter}:`,
      timeout: "2 seconds",
      // the test servers run with -I 32m
      maxEntrySize: 16 * 1024 * 1024
    })
  ),
  clock: "live",
  skip: ports.length < 2
})
