import { CacheBackend, CacheEntry, MemoryBackend } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import {
  Cache,
  Chunk,
  ConfigProvider,
  Deferred,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  Ref,
  Scope,
  TestClock
} from "effect"

const bytes = (n: number) => new Uint8Array(n)

/** An entry created now that lives `ttl` ms (Infinity by default). */
const entry = (now: number, options: { ttl?: number; size?: number; tags?: Array<string>; grace?: number } = {}) =>
  CacheEntry.make({
    value: bytes(options.size ?? 1),
    createdAt: now,
    expiresAt: now + (options.ttl ?? Number.POSITIVE_INFINITY),
    staleUntil: now + (options.ttl ?? Number.POSITIVE_INFINITY) + (options.grace ?? 0),
    tags: options.tags ?? []
  })

const forever = entry(0)

describe("MemoryBackend", () => {
  it.scoped("stores, reads and deletes entries", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make()
      yield* backend.set("a", forever)
      expect(Option.getOrThrow(yield* backend.get("a"))).toBe(forever)
      expect(yield* backend.delete("a")).toBe(true)
      expect(yield* backend.delete("a")).toBe(false)
      expect(Option.isNone(yield* backend.get("a"))).toBe(true)
    }))

  it.scoped("unsafePeekSync reads without counting a hit or a miss, and hides expired entries", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make()
      yield* backend.set("a", entry(0, { ttl: 1000 }))
      const before = yield* backend.stats
      expect(backend.unsafePeekSync("a", 10)?.size).toBe(forever.size)
      expect(backend.unsafePeekSync("missing", 10)).toBeUndefined()
      expect(backend.unsafePeekSync("a", 5000)).toBeUndefined()
      const after = yield* backend.stats
      expect([after.hits, after.misses]).toEqual([before.hits, before.misses])
      backend.unsafeGetSync("a", 10)
      backend.unsafeGetSync("missing", 10)
      const counted = yield* backend.stats
      expect([counted.hits, counted.misses]).toEqual([before.hits + 1, before.misses + 1])
    }))

  it.scoped("is provided as CacheBackendTag by the layer", () =>
    Effect.gen(function*() {
      const backend = yield* CacheBackend.CacheBackendTag
      yield* backend.set("k", forever)
      expect(Option.isSome(yield* backend.get("k"))).toBe(true)
      expect(backend.name).toBe("memory")
    }).pipe(Effect.provide(MemoryBackend.layer({ maxEntries: 10 }))))

  it.scoped("expires an entry lazily on read once TestClock passes staleUntil", () =>
    Effect.gen(function*() {
      // a sweep interval longer than the test so only the lazy path can remove it
      const backend = yield* MemoryBackend.make({ sweepInterval: "1 day" })
      yield* backend.set("k", entry(0, { ttl: 1_000, grace: 500 }))
      yield* TestClock.adjust("1400 millis")
      expect(Option.isSome(yield* backend.get("k"))).toBe(true) // stale but inside grace
      expect(backend.unsafeGetSync("k", 1_499)).toBeDefined()
      yield* TestClock.adjust("100 millis")
      expect(Option.isNone(yield* backend.get("k"))).toBe(true)
      expect((yield* backend.memoryStats).expirations).toBe(1)
      expect((yield* backend.memoryStats).entries).toBe(0)
    }))

  it.scoped("the sweep fiber removes expired entries that nobody reads", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ sweepInterval: "10 seconds" })
      yield* backend.set("short", entry(0, { ttl: 5_000 }))
      yield* backend.set("long", entry(0, { ttl: 60_000 }))
      yield* TestClock.adjust("9 seconds")
      expect((yield* backend.stats).entries).toBe(2)
      yield* TestClock.adjust("1 second")
      expect((yield* backend.stats).entries).toBe(1)
      expect((yield* backend.memoryStats).expirations).toBe(1)
      expect(yield* backend.scan.keys("*")).toEqual({ keys: ["long"], cursor: undefined })
    }))

  it.scoped("does not store an entry that is already past staleUntil, and drops the old value", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make()
      yield* TestClock.adjust("10 seconds")
      yield* backend.set("k", entry(10_000))
      yield* backend.set("k", entry(0, { ttl: 5_000 }))
      expect(Option.isNone(yield* backend.get("k"))).toBe(true)
      expect((yield* backend.stats).entries).toBe(0)
    }))

  it.scoped("keeps keys that are hit often when a one-off scan of new keys passes through", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ maxEntries: 100 })
      const hot = Array.from({ length: 50 }, (_, i) => `hot:${i}`)
      for (const key of hot) yield* backend.set(key, forever)
      for (let round = 0; round < 5; round++) {
        for (const key of hot) yield* backend.get(key)
      }
      for (let i = 0; i < 1_000; i++) {
        const key = `scan:${i}`
        if (Option.isNone(yield* backend.get(key))) yield* backend.set(key, forever)
      }
      let hotLeft = 0
      for (const key of hot) if (backend.unsafeGetSync(key, 0) !== undefined) hotLeft++
      expect(hotLeft).toBe(hot.length)
      expect((yield* backend.stats).entries).toBeLessThanOrEqual(100)
    }))

  it.effect("by contrast, effect's own Cache evicts the hot keys under the same scan (insertion order)", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.make({
        capacity: 100,
        timeToLive: "1 hour",
        lookup: (key: string) => Effect.succeed(key)
      })
      const hot = Array.from({ length: 50 }, (_, i) => `hot:${i}`)
      for (let round = 0; round < 6; round++) {
        for (const key of hot) yield* cache.get(key)
      }
      for (let i = 0; i < 1_000; i++) yield* cache.get(`scan:${i}`)
      let hotLeft = 0
      for (const key of hot) if (yield* cache.contains(key)) hotLeft++
      // This is the property MemoryBackend must not share: every hot key is gone.
      expect(hotLeft).toBe(0)
    }))

  it.scoped("evicts by bytes when the total weight exceeds maxBytes", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ maxEntries: 1_000, maxBytes: 10_000, weigher: (_, e) => e.size })
      for (let i = 0; i < 50; i++) yield* backend.set(`k${i}`, entry(0, { size: 1_000 }))
      const stats = yield* backend.stats
      expect(stats.bytes).toBeLessThanOrEqual(10_000)
      expect(stats.entries).toBeLessThanOrEqual(10)
      expect(stats.evictions).toBe(50 - stats.entries)
    }))

  it.scoped("the default weigher counts the value size plus the key length", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make()
      yield* backend.set("abcd", entry(0, { size: 100 }))
      expect((yield* backend.stats).bytes).toBe(104)
    }))

  it.scoped("rejects an entry heavier than maxBytes or maxEntrySize with EntryTooLarge and keeps the old value", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ maxBytes: 1_000, maxEntrySize: 500 })
      yield* backend.set("k", entry(0, { size: 10 }))
      const tooBig = yield* Effect.flip(backend.set("k", entry(0, { size: 600 })))
      expect(tooBig).toMatchObject({ _tag: "EntryTooLarge", size: 600, maxSize: 500 })
      const heavierThanMax = yield* Effect.flip(
        backend.set("k", entry(0, { size: 400 })).pipe(
          Effect.zipRight(MemoryBackend.make({ maxBytes: 1_000, weigher: () => 1_001 })),
          Effect.flatMap((b) => b.set("x", entry(0)))
        )
      )
      expect(heavierThanMax).toMatchObject({ _tag: "EntryTooLarge", size: 1_001, maxSize: 1_000 })
      expect(Option.getOrThrow(yield* backend.get("k")).size).toBe(400)
    }))

  it.scoped("rejects empty and over-long keys with InvalidKey on every operation", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ maxKeyLength: 8 })
      expect((yield* Effect.flip(backend.get("")))._tag).toBe("InvalidKey")
      expect((yield* Effect.flip(backend.set("123456789", forever)))._tag).toBe("InvalidKey")
      expect((yield* Effect.flip(backend.delete("")))._tag).toBe("InvalidKey")
      expect((yield* backend.stats).entries).toBe(0)
    }))

  it.scoped("keeps the tag index consistent on overwrite, delete, eviction and tag invalidation", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ maxEntries: 20 })
      yield* backend.set("a", entry(0, { tags: ["red", "blue"] }))
      yield* backend.set("b", entry(0, { tags: ["red"] }))
      yield* backend.set("a", entry(0, { tags: ["green"] }))
      expect([...(yield* backend.tags.keysForTag("red"))]).toEqual(["b"])
      expect([...(yield* backend.tags.keysForTag("blue"))]).toEqual([])
      expect([...(yield* backend.tags.listTags)].sort()).toEqual(["green", "red"])
      yield* backend.delete("b")
      expect([...(yield* backend.tags.listTags)]).toEqual(["green"])
      // evict everything tagged by filling the cache with other keys
      for (let i = 0; i < 200; i++) yield* backend.set(`fill:${i}`, entry(0, { tags: ["fill"] }))
      const fill = yield* backend.tags.keysForTag("fill")
      expect(fill.length).toBe((yield* backend.stats).entries - (backend.unsafeGetSync("a", 0) ? 1 : 0))
      for (const key of fill) expect(backend.unsafeGetSync(key, 0)).toBeDefined()
      const before = (yield* backend.stats).entries
      expect(yield* backend.tags.deleteByTags(["fill", "green"])).toBe(before)
      expect((yield* backend.stats).entries).toBe(0)
      expect(yield* backend.tags.listTags).toEqual([])
    }))

  it.scoped("scans keys by glob in pages, every key exactly once, even while others are deleted", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ maxEntries: 1_000 })
      for (let i = 0; i < 300; i++) yield* backend.set(`user:${i}`, forever)
      for (let i = 0; i < 100; i++) yield* backend.set(`order:${i}`, forever)
      const seen: Array<string> = []
      let cursor: string | undefined = undefined
      let pages = 0
      do {
        const page: CacheBackend.KeyPage = yield* backend.scan.keys("user:*", { cursor, count: 50 })
        seen.push(...page.keys)
        cursor = page.cursor
        pages++
        // churn between pages: delete orders, which must not disturb the user keys
        if (pages === 2) yield* backend.scan.deletePattern("order:*")
      } while (cursor !== undefined)
      expect(pages).toBeGreaterThan(2)
      expect(seen.length).toBe(300)
      expect(new Set(seen).size).toBe(300)
      expect((yield* backend.scan.keys("order:*", { count: 10_000 })).keys).toEqual([])
      expect([...(yield* backend.scan.keys("user:1?", { count: 10_000 })).keys].sort()).toEqual(
        Array.from({ length: 10 }, (_, i) => `user:1${i}`).sort()
      )
    }))

  it.scoped("calls registered listeners with evicted, expired, removed and replaced events", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ maxEntries: 2, sweepInterval: "1 second" })
      const seen = yield* Ref.make(Chunk.empty<string>())
      const unregister = yield* backend.onEviction((e) => Ref.update(seen, Chunk.append(`${e.reason}:${e.key}`)))
      yield* backend.set("a", forever)
      yield* backend.set("a", entry(0, { ttl: 500 }))
      yield* backend.set("b", forever)
      yield* backend.delete("b")
      yield* TestClock.adjust("1 second") // sweep expires "a"
      for (const k of ["c", "d", "e"]) yield* backend.set(k, forever)
      yield* Effect.yieldNow()
      const events = Chunk.toReadonlyArray(yield* Ref.get(seen))
      expect(events.slice(0, 3)).toEqual(["replaced:a", "removed:b", "expired:a"])
      expect(events.filter((e) => e.startsWith("evicted:")).length).toBe(1)
      yield* unregister
      yield* backend.delete("c")
      yield* backend.delete("d")
      yield* Effect.yieldNow()
      expect(Chunk.size(yield* Ref.get(seen))).toBe(events.length)
    }))

  it.scoped("drops new events when the queue is full instead of blocking the writer, and counts them", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ maxEntries: 1_000, eventQueueCapacity: 4 })
      const gate = yield* Deferred.make<void>()
      const delivered = yield* Ref.make(0)
      yield* backend.onEviction(() => Deferred.await(gate).pipe(Effect.zipRight(Ref.update(delivered, (n) => n + 1))))
      for (let i = 0; i < 20; i++) yield* backend.set(`k${i}`, forever)
      // the first delete's event is taken by the cleanup fiber, which then waits on the gate
      yield* backend.delete("k0")
      yield* Effect.yieldNow()
      for (let i = 1; i < 20; i++) yield* backend.delete(`k${i}`) // never blocks although nobody drains
      const { droppedEvents } = yield* backend.memoryStats
      expect(droppedEvents).toBe(20 - 1 - 4)
      yield* Deferred.succeed(gate, undefined)
      for (let i = 0; i < 10; i++) yield* Effect.yieldNow()
      expect(yield* Ref.get(delivered)).toBe(20 - droppedEvents)
    }))

  it.effect("closing the scope stops the sweep and cleanup fibers", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const backend = yield* MemoryBackend.make({ sweepInterval: "1 second" }).pipe(Scope.extend(scope))
      const delivered = yield* Ref.make(0)
      yield* backend.onEviction(() => Ref.update(delivered, (n) => n + 1))
      expect((yield* backend.health).status).toBe("up")
      yield* backend.set("k", entry(0, { ttl: 100 }))
      yield* Scope.close(scope, Exit.void)
      expect((yield* backend.health).status).toBe("down")
      yield* TestClock.adjust("10 seconds")
      // no sweep ran: the expired entry is still counted, and nothing was delivered
      expect((yield* backend.stats).entries).toBe(1)
      yield* backend.delete("k")
      yield* Effect.yieldNow()
      expect(yield* Ref.get(delivered)).toBe(0)
    }))

  it.scoped("reports hot keys by frequency estimate", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make()
      for (const k of ["a", "b", "c"]) yield* backend.set(k, forever)
      for (let i = 0; i < 6; i++) yield* backend.get("b")
      for (let i = 0; i < 3; i++) yield* backend.get("c")
      const hot = yield* backend.hotKeys(2)
      expect(hot.map((h) => h.key)).toEqual(["b", "c"])
      expect(hot[0]!.frequency).toBeGreaterThan(hot[1]!.frequency)
    }))

  it.scoped("counts hits and misses and clears everything", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make()
      yield* backend.set("a", forever)
      yield* backend.get("a")
      yield* backend.get("missing")
      yield* backend.clear
      expect(yield* backend.stats).toEqual({ entries: 0, bytes: 0, hits: 1, misses: 1, evictions: 0 })
    }))

  it.scoped("a running layer can be interrupted cleanly", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Effect.scoped(MemoryBackend.make().pipe(Effect.zipRight(Effect.never))))
      yield* Effect.yieldNow()
      const exit = yield* Fiber.interrupt(fiber)
      expect(Exit.isInterrupted(exit)).toBe(true)
    }))

  it.scoped("layerConfig reads its bounds from the environment", () =>
    Effect.gen(function*() {
      const memory = yield* MemoryBackend.MemoryBackendTag
      const stats = yield* memory.memoryStats
      expect(stats.maxEntries).toBe(3)
      expect(stats.maxBytes).toBe(5_000)
      for (const k of ["a", "b", "c", "d", "e"]) yield* memory.set(k, forever)
      expect((yield* memory.stats).entries).toBe(3)
    }).pipe(
      Effect.provide(
        MemoryBackend.layerConfig().pipe(
          Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
            new Map([["CACHEKIT_MEMORY_MAX_ENTRIES", "3"], ["CACHEKIT_MEMORY_MAX_BYTES", "5000"]])
          )))
        )
      )
    ))

  it.scoped("unsafeGetSync treats an entry past staleUntil as a miss and removes it", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ sweepInterval: "1 day" })
      yield* backend.set("k", entry(0, { ttl: 1_000 }))
      expect(backend.unsafeGetSync("k", 999)?.expiresAt).toBe(1_000)
      expect(backend.unsafeGetSync("k", 1_000)).toBeUndefined()
      expect(yield* backend.stats).toMatchObject({ entries: 0, hits: 1, misses: 1 })
    }))

  it.scoped("a failing listener does not stop delivery to the others or of later events", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make()
      const seen = yield* Ref.make(0)
      yield* backend.onEviction(() => Effect.fail("boom"))
      yield* backend.onEviction(() => Effect.die("defect"))
      yield* backend.onEviction(() => Ref.update(seen, (n) => n + 1))
      for (const k of ["a", "b", "c"]) yield* backend.set(k, forever)
      for (const k of ["a", "b", "c"]) yield* backend.delete(k)
      for (let i = 0; i < 5; i++) yield* Effect.yieldNow()
      expect(yield* Ref.get(seen)).toBe(3)
      expect((yield* backend.health).status).toBe("up")
    }))
})
