/**
 * The Cache Layer in an Effect program: Schema-typed values through `getOrCompute` (one compute
 * for concurrent misses), stale-while-revalidate, and tag invalidation.
 *
 * Run: `npx tsx examples/cache-basics.ts`
 */
import { Cache, MemoryBackend } from "@cachekit/core"
import { Console, Effect, Layer, Schema } from "effect"

// --- a Schema-typed value: Dates and classes survive the round trip through the cache's bytes ---
class User extends Schema.Class<User>("User")({
  id: Schema.Number,
  name: Schema.String,
  joined: Schema.Date
}) {}

// A slow "database" that counts its calls.
let queries = 0
const fetchUser = (id: number) =>
  Effect.sync(() => {
    queries++
    return new User({ id, name: `user ${id} (v${queries})`, joined: new Date("2024-05-01T00:00:00Z") })
  }).pipe(Effect.delay("50 millis"))

const program = Effect.gen(function*() {
  // Create the typed view once and keep it (it memoises decoded values).
  const users = (yield* Cache.Cache).typed(User)
  const cache = yield* Cache.Cache

  // 1. getOrCompute: ten concurrent misses of one key run the compute once.
  const ten = yield* Effect.all(
    Array.from({ length: 10 }, () => users.getOrCompute("user:1", fetchUser(1), { tags: ["team:a"] })),
    { concurrency: "unbounded" }
  )
  yield* Console.log(`10 concurrent reads -> ${queries} query; joined is a Date: ${ten[0]!.joined instanceof Date}`)

  // 2. A hit: no query.
  yield* users.getOrCompute("user:1", fetchUser(1))
  yield* Console.log(`a second read is a hit -> still ${queries} query`)

  // 3. Stale-while-revalidate: past its ttl the value is served stale at once while one refresh runs.
  yield* users.getOrCompute("user:2", fetchUser(2), { ttl: "100 millis", grace: "1 minute", tags: ["team:b"] })
  yield* Effect.sleep("150 millis")
  const stale = yield* users.getOrCompute("user:2", fetchUser(2), { ttl: "100 millis", grace: "1 minute" })
  yield* Console.log(`after the ttl: served "${stale.name}" without waiting (refresh runs in the background)`)
  yield* Effect.sleep("100 millis")
  const refreshed = yield* users.get("user:2")
  yield* Console.log(`a moment later: "${refreshed._tag === "Some" ? refreshed.value.name : "none"}"`)

  // 4. Tags: drop every entry tagged team:a.
  const removed = yield* cache.invalidateTags(["team:a"])
  const gone = yield* users.get("user:1")
  yield* Console.log(
    `invalidateTags(["team:a"]) removed ${removed}; user:1 is now ${gone._tag === "None" ? "gone" : "present"}`
  )

  const stats = yield* cache.stats
  yield* Console.log(
    `stats: hits=${stats.hits} misses=${stats.misses} staleServed=${stats.staleServed} computes=${stats.computes}`
  )
})

// The layers: a Cache with defaults (ttl 5 minutes) on an in-process W-TinyLFU memory backend.
const CacheLive = Cache.layer({ name: "example", ttl: "5 minutes" }).pipe(
  Layer.provide(MemoryBackend.layer({ maxEntries: 10_000, maxBytes: 64 * 1024 * 1024 }))
)

Effect.runPromise(program.pipe(Effect.provide(CacheLive))).catch((error) => {
  console.error(error)
  process.exit(1)
})
