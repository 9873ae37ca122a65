import { RedisBackend } from "@cachekit/backends"
import * as BackendConformance from "@cachekit/core/BackendConformance"
import { inject } from "@effect/vitest"
import { Layer } from "effect"

const port = inject("redisPort")
let counter = 0

BackendConformance.run("RedisBackend", {
  // a fresh namespace per test, so tests running in parallel files never see each other's keys
  layer: Layer.suspend(() =>
    RedisBackend.layer({ port, prefix: `conformance:${process.pid}:${++counter}:`, commandTimeout: "2 seconds" })
  ),
  clock: "live",
  skip: port === 0,
  capabilities: { tags: true, scan: true }
})
