import { RedisBackend } from "@cachekit/backends"
import * as BackendConformance from "@cachekit/core/BackendConformance"
import { inject } from "@effect/vitest"
import { Layer } from "effect"

// the 3-master / 3-replica cluster started by globalSetup (test/cluster.ts)
const nodes = inject("redisClusterNodes")
let counter = 0

BackendConformance.run("RedisBackend on Redis Cluster", {
  layer: Layer.suspend(() =>
    RedisBackend.layer({
      cluster: nodes,
      prefix: `conformance:${process.pid}:${++counter}:`,
      commandTimeout: "2 seconds"
    })
  ),
  clock: "live",
  skip: nodes.length === 0,
  capabilities: { tags: true, scan: true }
})
