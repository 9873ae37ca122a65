import { Cache, CacheBackend, MemoryBackend, TieredCache } from "@cachekit/core"
import * as TestCache from "@cachekit/core/testing"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, Schema, TestClock } from "effect"

const bytes = (n: number) => new Uint8Array([n])

class User extends Schema.Class<User>("User")({ id: Schema.Number, joined: Schema.Date }) {}

describe("TestCache", () => {
  it.effect("records the second getOrCompute of a key as a cache hit and runs the compute once", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.Cache
      let computes = 0
      const load = cache.getOrCompute("k", Effect.sync(() => bytes(++computes)))
      expect(yield* load).toEqual(bytes(1))
      expect(yield* load).toEqual(bytes(1))
      expect(computes).toBe(1)
      expect(yield* TestCache.outcomes("k")).toEqual(["miss", "hit"])
      const ops = yield* TestCache.operations
      expect(ops.map((op) => op.op)).toEqual(["get", "set", "get"])
    }).pipe(Effect.provide(TestCache.layer())))

  it.effect("shows an entry turning stale after its TTL on the TestClock, then absent after the grace window", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.Cache
      yield* cache.set("k", bytes(1), { ttl: "5 minutes", grace: "1 minute" })
      expect(yield* TestCache.state("k")).toBe("fresh")
      yield* TestClock.adjust("4 minutes")
      const snap = Option.getOrThrow(yield* TestCache.entry("k"))
      expect(snap.ageMillis).toBe(4 * 60_000)
      expect(snap.ttlLeftMillis).toBe(60_000)
      yield* TestClock.adjust("1 minute")
      expect(yield* TestCache.state("k")).toBe("stale")
      yield* TestClock.adjust("1 minute")
      expect(yield* TestCache.state("k")).toBe("absent")
      expect(yield* TestCache.entries).toEqual([])
    }).pipe(Effect.provide(TestCache.layer())))

  it.effect("records a read inside the grace window as stale and the background refresh as a set", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.Cache
      yield* cache.getOrCompute("k", Effect.succeed(bytes(1)))
      yield* TestClock.adjust("61 seconds")
      // Stale-while-revalidate: the old value now, one refresh in the background.
      expect(yield* cache.getOrCompute("k", Effect.succeed(bytes(2)))).toEqual(bytes(1))
      yield* Effect.yieldNow()
      expect(yield* cache.getOrCompute("k", Effect.succeed(bytes(3)))).toEqual(bytes(2))
      expect(yield* TestCache.outcomes("k")).toEqual(["miss", "stale", "hit"])
      const stats = yield* TestCache.stats
      expect(stats.cache.staleServed).toBe(1)
      expect(stats.cache.computes).toBe(2)
      expect(stats.sets).toBe(2)
    }).pipe(Effect.provide(TestCache.layer({ ttl: "1 minute", grace: "10 minutes" }))))

  it.effect("seeds typed values without recording them, and the code under test reads them as hits", () =>
    Effect.gen(function*() {
      const joined = new Date("2024-01-02T03:04:05.000Z")
      yield* TestCache.seedTyped(User, { "user:1": new User({ id: 1, joined }) }, { ttl: "1 hour" })
      expect(yield* TestCache.operations).toEqual([])
      const users = (yield* Cache.Cache).typed(User)
      const user = yield* users.getOrCompute("user:1", Effect.die("the seeded value must be served"))
      expect(user).toEqual(new User({ id: 1, joined }))
      expect(yield* TestCache.outcomes("user:1")).toEqual(["hit"])
      expect((yield* TestCache.stats).cache.computes).toBe(0)
    }).pipe(Effect.provide(TestCache.layer())))

  it.effect("seeds byte values with tags that invalidateTags then removes, recording the deletion", () =>
    Effect.gen(function*() {
      yield* TestCache.seed("a", bytes(1), { tags: ["team:1"] })
      yield* TestCache.seed("b", bytes(2), { tags: ["team:2"] })
      const cache = yield* Cache.Cache
      expect(yield* cache.invalidateTags(["team:1"])).toBe(1)
      expect((yield* TestCache.entries).map((e) => e.key)).toEqual(["b"])
      expect(yield* TestCache.operations).toMatchObject([{ op: "deleteByTags", tags: ["team:1"], removed: 1 }])
    }).pipe(Effect.provide(TestCache.layer())))

  it.effect("lists entries without counting the listing as backend hits", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.Cache
      yield* cache.set("b", bytes(2), { tags: ["t"] })
      yield* cache.set("a", bytes(1))
      const before = (yield* TestCache.stats).backend
      const listed = yield* TestCache.entries
      expect(listed.map((e) => [e.key, e.state, e.entry.tags])).toEqual([["a", "fresh", []], ["b", "fresh", ["t"]]])
      expect((yield* TestCache.stats).backend).toEqual(before)
    }).pipe(Effect.provide(TestCache.layer())))

  it.effect("drops entries the memory backend evicted from the listing", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.Cache
      for (let i = 0; i < 50; i++) yield* cache.set(`k${i}`, bytes(i))
      const listed = yield* TestCache.entries
      const held = (yield* TestCache.stats).backend!.entries
      expect(held).toBeLessThanOrEqual(4)
      expect(listed.length).toBe(held)
    }).pipe(Effect.provide(TestCache.layer({ memory: { maxEntries: 4 } }))))

  it.effect("records deletes and clears, and resetOperations forgets the log but not the entries", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.Cache
      yield* cache.set("a", bytes(1))
      yield* cache.set("b", bytes(2))
      yield* TestCache.resetOperations
      expect(yield* cache.delete("a")).toBe(true)
      expect(yield* cache.delete("a")).toBe(false)
      expect((yield* TestCache.entries).map((e) => e.key)).toEqual(["b"])
      yield* cache.clear
      expect(yield* TestCache.entries).toEqual([])
      expect((yield* TestCache.operations).map((op) => op.op === "delete" ? `delete ${op.removed}` : op.op)).toEqual([
        "delete true",
        "delete false",
        "clear"
      ])
      expect((yield* TestCache.stats).deletes).toBe(2)
    }).pipe(Effect.provide(TestCache.layer())))

  it.effect("keeps at most maxOperations, dropping the oldest", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.Cache
      for (let i = 0; i < 5; i++) yield* cache.get(`k${i}`)
      const ops = yield* TestCache.operations
      expect(ops.map((op) => (op.op === "get" ? op.key : op.op))).toEqual(["k2", "k3", "k4"])
    }).pipe(Effect.provide(TestCache.layer({ maxOperations: 3 }))))

  it.effect("gives each test its own cache: nothing leaks from the previous test's layer", () =>
    Effect.gen(function*() {
      expect(yield* TestCache.entries).toEqual([])
      expect(yield* TestCache.operations).toEqual([])
    }).pipe(Effect.provide(TestCache.layer())))

  it.effect("fails to build with InvalidTtl when a default duration is negative", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.provide(Cache.Cache, TestCache.layer({ ttl: -1 })))
      expect(error._tag).toBe("InvalidTtl")
    }))

  it.scoped("records the operations one tier of a TieredCache receives", () =>
    Effect.gen(function*() {
      const l1 = yield* MemoryBackend.make({ maxEntries: 100 })
      const l2 = yield* MemoryBackend.make({ maxEntries: 100 })
      const recordedL2 = yield* TestCache.recording(l2)
      const tiers = yield* TieredCache.make([{ backend: l1, name: "l1" }, { backend: recordedL2.backend, name: "l2" }])
      const cache = yield* Effect.provideService(Cache.make(), CacheBackend.CacheBackendTag, tiers.backend)
      yield* cache.getOrCompute("k", Effect.succeed(bytes(1)))
      yield* cache.getOrCompute("k", Effect.succeed(bytes(2)))
      // The first read misses both tiers and writes through; the second is served by l1, so l2 sees one get.
      expect(
        (yield* recordedL2.operations).map((op) => op.op === "get" ? `get ${op.outcome}` : op.op)
      ).toEqual(["get miss", "set"])
    }))
})

// The two examples of docs/testing.md, verbatim, so the guide cannot drift from the API.
describe("docs/testing.md", () => {
  it.effect("the second call is a cache hit, and after 5 minutes the entry is stale", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.Cache
      let computes = 0
      const load = cache.getOrCompute("k", Effect.sync(() => new Uint8Array([++computes])), { ttl: "5 minutes" })
      yield* load
      yield* load
      expect(computes).toBe(1)
      expect(yield* TestCache.outcomes("k")).toEqual(["miss", "hit"])

      yield* TestClock.adjust("5 minutes")
      expect(yield* TestCache.state("k")).toBe("stale") // kept for the 1 minute grace
      expect(Option.getOrThrow(yield* TestCache.entry("k")).ageMillis).toBe(5 * 60_000)
      yield* TestClock.adjust("1 minute")
      expect(yield* TestCache.state("k")).toBe("absent")
    }).pipe(Effect.provide(TestCache.layer({ grace: "1 minute" }))))

  it.effect("serves the seeded user without computing", () =>
    Effect.gen(function*() {
      yield* TestCache.seedTyped(User, { "user:1": new User({ id: 1, joined: new Date(0) }) }, { ttl: "1 hour" })
      const users = (yield* Cache.Cache).typed(User)
      const user = yield* users.getOrCompute("user:1", Effect.die("must not compute"))
      expect(user.id).toBe(1)
      expect((yield* TestCache.stats).cache.computes).toBe(0)
    }).pipe(Effect.provide(TestCache.layer())))
})
