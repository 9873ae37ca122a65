/**
 * A memory cache with the admin API and dashboard on http://127.0.0.1:9464/admin/ and some traffic
 * to watch. Run: `CACHEKIT_ADMIN_TOKEN=$(openssl rand -hex 16) npx tsx examples/admin.ts`
 * then open the dashboard and paste the token. `CACHEKIT_ADMIN_PORT` picks another port.
 */
import { AdminAuth, AdminServer, AdminTarget, OperationLog } from "@cachekit/admin"
import { Cache, MemoryBackend } from "@cachekit/core"
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer, Random, Schedule, Schema } from "effect"

// Reads a random product every 20 ms; a fifth of the keys are hot, so the hit ratio climbs.
const traffic = Effect.gen(function*() {
  const cache = yield* Cache.Cache
  const products = cache.typed(Schema.Struct({ id: Schema.Number, name: Schema.String }))
  yield* Effect.gen(function*() {
    const hot = (yield* Random.nextIntBetween(0, 10)) < 8
    const id = hot ? yield* Random.nextIntBetween(0, 20) : yield* Random.nextIntBetween(20, 2000)
    yield* products.getOrCompute(
      `product:${id}`,
      Effect.succeed({ id, name: `product ${id}` }).pipe(Effect.delay("2 millis")),
      { ttl: "30 seconds", tags: [hot ? "hot" : "cold"] }
    )
  }).pipe(Effect.repeat(Schedule.spaced("20 millis")))
})

const port = Number(process.env["CACHEKIT_ADMIN_PORT"] ?? 9464)

const AdminLive = AdminServer.layer({ port, prefix: "/admin" }).pipe(
  Layer.provide(AdminTarget.layerFromCache()),
  Layer.provide(AdminAuth.layerConfig),
  Layer.provide(OperationLog.layer({ sampleRate: 0.01, hashKeys: true }))
)

const MainLive = Layer.mergeAll(AdminLive, Layer.scopedDiscard(Effect.forkScoped(traffic))).pipe(
  Layer.provideMerge(Cache.layer({ name: "example" })),
  Layer.provideMerge(MemoryBackend.layer({ maxEntries: 500 }))
)

Console.log(`dashboard: http://127.0.0.1:${port}/admin/  (token: $CACHEKIT_ADMIN_TOKEN)`).pipe(
  Effect.zipRight(Layer.launch(MainLive)),
  NodeRuntime.runMain
)
