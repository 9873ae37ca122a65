import { AutoRefresh, MemoryBackend, TieredCache } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Context, Effect, Layer, Option, TestClock } from "effect"
import { TopK } from "../src/internal/topK.js"
import { bytes, makeEntry, makeMapBackend, str } from "./fixtures/tierFixtures.js"

const SECOND = 1000
const MINUTE = 60 * SECOND

/** Memory L1 + map L2 under a TieredCache, with AutoRefresh on top; returns both services. */
const setup = (config: AutoRefresh.Config, loaders: ReadonlyArray<AutoRefresh.Loader>) =>
  Effect.gen(function*() {
    const l2 = makeMapBackend("l2")
    const tiers = Layer.unwrapScoped(
      Effect.map(
        MemoryBackend.make({ maxEntries: 1000 }),
        (l1) => TieredCache.layer([{ backend: l1 }, { backend: l2 }])
      )
    )
    const context = yield* Layer.build(Layer.provideMerge(AutoRefresh.layer(config, loaders), tiers))
    return {
      l2,
      tiered: Context.get(context, TieredCache.TieredCache),
      refresh: Context.get(context, AutoRefresh.AutoRefresh)
    }
  })

const hit = (tiered: TieredCache.TieredCache, key: string, times: number) => Effect.repeatN(tiered.get(key), times - 1)

const value = (tiered: TieredCache.TieredCache, key: string) => Effect.map(tiered.get(key), Option.map(str))

/** Lets the worker fibers run (they are woken by the queue, not by the clock). */
const drain = Effect.repeatN(Effect.yieldNow(), 50)

describe("AutoRefresh", () => {
  it.scoped("refreshes a hot key inside its refresh window and leaves a cold one alone", () =>
    Effect.gen(function*() {
      const loads: Array<string> = []
      let version = 0
      const { refresh, tiered } = yield* setup(
        { minHitsPerMinute: 10, checkInterval: "10 seconds", refreshWindow: "30 seconds" },
        [
          AutoRefresh.loader("user:", (key) =>
            Effect.sync(() => {
              loads.push(key)
              return bytes(`${key}@v${++version}`)
            }), { ttl: "1 minute" })
        ]
      )
      yield* tiered.set("user:hot", yield* makeEntry("old-hot", MINUTE))
      yield* tiered.set("user:cold", yield* makeEntry("old-cold", MINUTE))
      yield* hit(tiered, "user:hot", 20)
      yield* hit(tiered, "user:cold", 2)

      // 10 s and 20 s: hot but not yet inside the 30 s window before expiry
      yield* TestClock.adjust(20 * SECOND)
      yield* drain
      expect(loads).toEqual([])
      // 30 s: inside the window
      yield* TestClock.adjust(10 * SECOND)
      yield* drain
      expect(loads).toEqual(["user:hot"])
      expect(yield* value(tiered, "user:hot")).toEqual(Option.some("user:hot@v1"))
      const refreshed = Option.getOrThrow(yield* tiered.get("user:hot"))
      expect(refreshed.expiresAt).toBe((yield* Clock.currentTimeMillis) + MINUTE)
      expect(yield* refresh.stats).toMatchObject({ scheduled: 1, refreshed: 1, failed: 0, inFlight: 0 })

      // the cold key expires as it would have without auto-refresh; the hot one (still hot over the
      // minute) was refreshed again at 60 s and never expires
      yield* TestClock.adjust(31 * SECOND)
      yield* drain
      expect(yield* tiered.get("user:cold")).toEqual(Option.none())
      expect(yield* value(tiered, "user:hot")).toEqual(Option.some("user:hot@v2"))
      expect(loads).toEqual(["user:hot", "user:hot"])
    }))

  it.scoped("keeps the old entry when the refresh fails", () =>
    Effect.gen(function*() {
      const { refresh, tiered } = yield* setup(
        { minHitsPerMinute: 1, checkInterval: "10 seconds", refreshWindow: "1 minute" },
        [AutoRefresh.loader("k", () => Effect.fail("origin down"), { ttl: "1 minute" })]
      )
      yield* tiered.set("k1", yield* makeEntry("old", MINUTE))
      yield* hit(tiered, "k1", 5)
      yield* TestClock.adjust(10 * SECOND)
      yield* drain
      expect(yield* refresh.stats).toMatchObject({ scheduled: 1, refreshed: 0, failed: 1 })
      expect(yield* value(tiered, "k1")).toEqual(Option.some("old"))
    }))

  it.scoped("uses the longest matching prefix and skips keys no loader knows", () =>
    Effect.gen(function*() {
      const loads: Array<string> = []
      const tracking = (name: string) =>
        AutoRefresh.loader(name, (key) => Effect.sync(() => (loads.push(`${name}:${key}`), bytes("new"))), {
          ttl: "1 minute"
        })
      const { refresh, tiered } = yield* setup(
        { minHitsPerMinute: 1, checkInterval: "10 seconds", refreshWindow: "1 minute" },
        [tracking("a"), tracking("a:b")]
      )
      for (const key of ["a:b:1", "a:x", "zzz"]) {
        yield* tiered.set(key, yield* makeEntry("old", MINUTE))
        yield* hit(tiered, key, 3)
      }
      const queued = yield* refresh.check
      yield* drain
      expect(queued).toBe(2)
      expect(loads.sort()).toEqual(["a:a:x", "a:b:a:b:1"])
    }))

  it.scoped("never runs more refreshes at once than maxConcurrentRefreshes", () =>
    Effect.gen(function*() {
      let inFlight = 0
      let maxInFlight = 0
      let done = 0
      const { refresh, tiered } = yield* setup(
        { minHitsPerMinute: 1, checkInterval: "10 seconds", refreshWindow: "1 minute", maxConcurrentRefreshes: 3 },
        [
          AutoRefresh.loader("k", () =>
            Effect.gen(function*() {
              inFlight++
              maxInFlight = Math.max(maxInFlight, inFlight)
              yield* Effect.sleep("1 second")
              inFlight--
              done++
              return bytes("new")
            }), { ttl: "10 minutes" })
        ]
      )
      for (let i = 0; i < 10; i++) {
        yield* tiered.set(`k${i}`, yield* makeEntry("old", MINUTE))
        yield* hit(tiered, `k${i}`, 3)
      }
      expect(yield* refresh.check).toBe(10)
      yield* drain
      expect(inFlight).toBe(3)
      expect((yield* refresh.stats).inFlight).toBe(3)
      for (let i = 0; i < 4; i++) {
        yield* TestClock.adjust("1 second")
        yield* drain
      }
      expect(done).toBe(10)
      expect(maxInFlight).toBe(3)
      expect(yield* refresh.stats).toMatchObject({ refreshed: 10, inFlight: 0 })
    }))

  it.scoped("does nothing when disabled", () =>
    Effect.gen(function*() {
      let loads = 0
      const { refresh, tiered } = yield* setup(
        { enabled: false, minHitsPerMinute: 1, refreshWindow: "1 minute" },
        [AutoRefresh.loader("k", () => Effect.sync(() => (loads++, bytes("new"))), { ttl: "1 minute" })]
      )
      yield* tiered.set("k1", yield* makeEntry("old", MINUTE))
      yield* hit(tiered, "k1", 10)
      yield* TestClock.adjust(MINUTE)
      yield* drain
      expect(yield* refresh.check).toBe(0)
      expect(loads).toBe(0)
    }))
})

describe("Hit tracking memory", () => {
  it("keeps at most K keys whatever the number of distinct keys, and keeps the hot ones", () => {
    const topK = new TopK(8, 1024, 4)
    for (let round = 0; round < 50; round++) {
      for (const hot of ["h1", "h2", "h3"]) topK.record(hot, 1, 1)
      for (let i = 0; i < 200; i++) topK.record(`cold-${round}-${i}`, 1, 1)
    }
    expect(topK.size).toBe(8)
    expect(topK.hot(1).slice(0, 3).map((h) => h.key).sort()).toEqual(["h1", "h2", "h3"])
    expect(topK.hot(1)[0]!.count).toBeGreaterThanOrEqual(50)
  })
})
