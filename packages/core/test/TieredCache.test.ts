import type { CacheBackend } from "@cachekit/core"
import { Cache, CacheEntry, CacheError, InvalidationBus, MemoryBackend, TieredCache } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Context, Effect, Fiber, Layer, Metric, Option, TestClock } from "effect"
import type { MapBackend } from "./fixtures/tierFixtures.js"
import { entryAt, makeEntry, makeMapBackend, str } from "./fixtures/tierFixtures.js"

const SECOND = 1000
const MINUTE = 60 * SECOND

const twoTiers = (l2Options?: Partial<TieredCache.Tier>, l1Options?: Partial<TieredCache.Tier>) => {
  const l1 = makeMapBackend("l1", { sync: true })
  const l2 = makeMapBackend("l2")
  return {
    l1,
    l2,
    make: TieredCache.make([{ backend: l1, ...l1Options }, { backend: l2, ...l2Options }])
  }
}

const getValue = (tiered: TieredCache.TieredCache, key: string) => Effect.map(tiered.get(key), Option.map(str))

/** Lets the bus deliver what was published so far (the subscriber fibers run between yields). */
const quiesce = Effect.repeatN(Effect.yieldNow(), 50)

/** Lets forked fibers (the bus subscriber) run until `done` holds, at most `rounds` scheduler turns. */
const settle = (done: () => boolean, rounds = 200) =>
  Effect.gen(function*() {
    for (let i = 0; i < rounds && !done(); i++) yield* Effect.yieldNow()
    expect(done()).toBe(true)
  })

/** Calls that read L2, through `get` or `unsafeGetPromise`. */
const reads = (backend: MapBackend) => backend.calls.get + backend.calls.getPromise

// The reads, stats and failure handling hold whichever way L2 is read: through its `get` (an Effect),
// or through its `unsafeGetPromise` (the network backends' one-step read path).
describe.each(["get", "unsafeGetPromise"] as const)("L2 read through %s", (via) => {
  const twoTiers = (l2Options?: Partial<TieredCache.Tier>, l1Options?: Partial<TieredCache.Tier>) => {
    const l1 = makeMapBackend("l1", { sync: true })
    const l2 = makeMapBackend("l2", { promise: via === "unsafeGetPromise" })
    return {
      l1,
      l2,
      make: TieredCache.make([{ backend: l1, ...l1Options }, { backend: l2, ...l2Options }])
    }
  }

  describe("TieredCache reads and writes", () => {
    it.scoped("fills an L1 miss from L2 and promotes it with the original expiry, not L2's longer one", () =>
      Effect.gen(function*() {
        const { l1, l2, make } = twoTiers({ ttlScale: 2 })
        const tiered = yield* make
        yield* TestClock.adjust(5 * SECOND)
        const entry = yield* makeEntry("v1", MINUTE)
        yield* tiered.set("k", entry)
        expect(l2.store.get("k")!.expiresAt).toBe(entry.createdAt + 2 * MINUTE)
        l1.store.delete("k")
        yield* TestClock.adjust(30 * SECOND)

        expect(yield* getValue(tiered, "k")).toEqual(Option.some("v1"))
        const promoted = l1.store.get("k")!
        expect(promoted.expiresAt).toBe(entry.createdAt + MINUTE)
        expect(promoted.createdAt).toBe(entry.createdAt)
        const stats = yield* tiered.stats
        expect(stats.map((s) => [s.name, s.hits, s.misses, s.promotions])).toEqual([["l1#1", 0, 1, 1], [
          "l2#2",
          1,
          0,
          0
        ]])
      }))

    it.scoped("scales TTL per tier: L2 keeps an entry twice as long as L1", () =>
      Effect.gen(function*() {
        const { l1, l2, make } = twoTiers({ ttlScale: 2 })
        const tiered = yield* make
        yield* tiered.set("k", yield* makeEntry("v", MINUTE))
        yield* TestClock.adjust(90 * SECOND)
        expect(l1.unsafeGetSync!("k", yield* Clock.currentTimeMillis)).toBeUndefined()
        expect(yield* getValue(tiered, "k")).toEqual(Option.some("v"))
        // nothing servable is promoted past its original expiry
        expect(l1.store.has("k")).toBe(false)
        yield* TestClock.adjust(31 * SECOND)
        expect(yield* tiered.get("k")).toEqual(Option.none())
        expect(reads(l2)).toBe(2)
      }))

    it.scoped("takes a TTL per tier per call (1 minute in L1, 1 hour in L2)", () =>
      Effect.gen(function*() {
        const { l1, l2, make } = twoTiers()
        const tiered = yield* make
        const now = yield* Clock.currentTimeMillis
        yield* tiered.set("k", entryAt(now, "v", 5 * MINUTE, { graceMillis: MINUTE }), { ttl: ["1 minute", "1 hour"] })
        expect(l1.store.get("k")!.expiresAt).toBe(now + MINUTE)
        expect(l1.store.get("k")!.staleUntil).toBe(now + 2 * MINUTE)
        expect(l2.store.get("k")!.expiresAt).toBe(now + 60 * MINUTE)
        yield* TestClock.adjust(10 * MINUTE)
        // found in L2 but L1 gets no more than the entry's own lifetime (5 min + 1 min grace): already over
        expect(yield* getValue(tiered, "k")).toEqual(Option.some("v"))
        expect(l1.store.has("k")).toBe(false)
      }))

    it.scoped("promotes into L1 only after N hits within the window", () =>
      Effect.gen(function*() {
        const { l1, l2, make } = twoTiers(undefined, { promote: { afterHits: 3, window: "1 minute" } })
        const tiered = yield* make
        l2.store.set("k", yield* makeEntry("v", 10 * MINUTE))
        yield* tiered.get("k")
        yield* TestClock.adjust(2 * MINUTE) // the window ends: counting starts again
        yield* tiered.get("k")
        yield* tiered.get("k")
        expect(l1.store.has("k")).toBe(false)
        yield* tiered.get("k")
        expect(l1.store.has("k")).toBe(true)
        const before = reads(l2)
        expect(yield* getValue(tiered, "k")).toEqual(Option.some("v"))
        expect(reads(l2)).toBe(before) // served by L1 now
      }))

    it.scoped("keeps large entries out of L1 (and drops the small value L1 had for the key)", () =>
      Effect.gen(function*() {
        const { l1, l2, make } = twoTiers(undefined, { maxEntrySize: 8 })
        const tiered = yield* make
        yield* tiered.set("k", yield* makeEntry("small", MINUTE))
        expect(l1.store.has("k")).toBe(true)
        yield* tiered.set("k", yield* makeEntry("a value far too large for L1", MINUTE))
        expect(l1.store.has("k")).toBe(false)
        expect(yield* getValue(tiered, "k")).toEqual(Option.some("a value far too large for L1"))
        expect(l1.store.has("k")).toBe(false)
        expect(str(l2.store.get("k")!)).toBe("a value far too large for L1")
      }))

    it.scoped("rejects an empty key with InvalidKey instead of calling the tiers", () =>
      Effect.gen(function*() {
        const { l2, make } = twoTiers()
        const tiered = yield* make
        const error = yield* Effect.flip(tiered.get(""))
        expect(error._tag).toBe("InvalidKey")
        expect(reads(l2)).toBe(0)
      }))
  })

  describe("TieredCache stats", () => {
    it.scoped("publishes per-tier hits, misses, promotions and errors as Metrics, and a latency histogram", () =>
      Effect.gen(function*() {
        const tag = `metrics-${Math.random().toString(36).slice(2)}`
        const l1 = makeMapBackend("l1", { sync: true })
        const l2 = makeMapBackend("l2", { promise: via === "unsafeGetPromise" })
        const tiered = yield* TieredCache.make([{ backend: l1, name: `${tag}-l1` }, { backend: l2, name: `${tag}-l2` }])
        l2.store.set("k", yield* makeEntry("v", MINUTE))
        yield* tiered.get("k") // L1 miss, L2 hit, promotion
        yield* tiered.get("k") // L1 hit
        l2.mode = "fail"
        yield* tiered.get("nope") // L1 miss, L2 error
        yield* tiered.stats // flushes the counters
        const snapshot = yield* Metric.snapshot
        const valueOf = (name: string, tier: string) =>
          snapshot.find((p) =>
            p.metricKey.name === name && p.metricKey.tags.some((t) => t.key === "tier" && t.value === tier)
          )?.metricState
        expect(valueOf("cachekit_tier_hits_total", `${tag}-l1`)).toMatchObject({ count: 1 })
        expect(valueOf("cachekit_tier_misses_total", `${tag}-l1`)).toMatchObject({ count: 2 })
        expect(valueOf("cachekit_tier_hits_total", `${tag}-l2`)).toMatchObject({ count: 1 })
        expect(valueOf("cachekit_tier_promotions_total", `${tag}-l1`)).toMatchObject({ count: 1 })
        expect(valueOf("cachekit_tier_errors_total", `${tag}-l2`)).toMatchObject({ count: 1 })
        // one successful call timed on L2 (the failed one is counted as an error, not timed)
        expect(valueOf("cachekit_tier_latency_ms", `${tag}-l2`)).toMatchObject({ count: 1 })
      }))
  })

  describe("TieredCache with a dead tier", () => {
    it.scoped("answers reads from L1 and misses cleanly while L2 fails, then the breaker stops calling L2", () =>
      Effect.gen(function*() {
        const { l2, make } = twoTiers({ breaker: { failureThreshold: 2, resetAfter: "10 seconds" } })
        const tiered = yield* make
        yield* tiered.set("hot", yield* makeEntry("v", 10 * MINUTE))
        l2.mode = "fail"
        expect(yield* getValue(tiered, "hot")).toEqual(Option.some("v"))
        expect(yield* tiered.get("cold1")).toEqual(Option.none())
        expect(yield* tiered.get("cold2")).toEqual(Option.none())
        expect(reads(l2)).toBe(2)
        // open: L2 is not called any more
        expect(yield* tiered.get("cold3")).toEqual(Option.none())
        expect(reads(l2)).toBe(2)
        const [, s2] = yield* tiered.stats
        expect(s2).toMatchObject({ errors: 2, skipped: 1, breaker: "open", breakerOpened: 1 })

        // after the reset delay one probe goes through; it succeeds and closes the circuit
        l2.mode = "ok"
        l2.store.set("cold4", yield* makeEntry("from-l2", 10 * MINUTE))
        yield* TestClock.adjust(10 * SECOND)
        expect(yield* getValue(tiered, "cold4")).toEqual(Option.some("from-l2"))
        expect((yield* tiered.stats)[1]!.breaker).toBe("closed")
      }))

    it.scoped("a failed probe opens the circuit again", () =>
      Effect.gen(function*() {
        const { l2, make } = twoTiers({ breaker: { failureThreshold: 1, resetAfter: "10 seconds" } })
        const tiered = yield* make
        l2.mode = "fail"
        yield* tiered.get("a")
        yield* TestClock.adjust(10 * SECOND)
        yield* tiered.get("b") // the probe
        expect(reads(l2)).toBe(2)
        const [, s2] = yield* tiered.stats
        expect(s2).toMatchObject({ breaker: "open", breakerOpened: 2 })
        yield* tiered.get("c")
        expect(reads(l2)).toBe(2)
      }))

    it.scoped("times out a hanging L2 and still answers the read (a miss), without failing it", () =>
      Effect.gen(function*() {
        const { l2, make } = twoTiers({
          timeout: "100 millis",
          breaker: { failureThreshold: 1, resetAfter: "1 minute" }
        })
        const tiered = yield* make
        l2.mode = "hang"
        const fiber = yield* Effect.fork(tiered.get("k"))
        yield* TestClock.adjust("100 millis")
        expect(yield* Fiber.join(fiber)).toEqual(Option.none())
        const [, s2] = yield* tiered.stats
        expect(s2).toMatchObject({ timeouts: 1, errors: 1, breaker: "open" })
        // skipped now: returns at once without the clock moving
        expect(yield* tiered.get("k")).toEqual(Option.none())
      }))

    it.scoped("serves from L2 when L1 is the tier that fails", () =>
      Effect.gen(function*() {
        const { l1, make } = twoTiers(undefined, { breaker: false })
        const tiered = yield* make
        yield* tiered.set("k", yield* makeEntry("v", MINUTE))
        l1.mode = "fail"
        expect(yield* getValue(tiered, "k")).toEqual(Option.some("v"))
      }))

    it.scoped("a write succeeds if some tier took it, and fails with the tier's error if none did", () =>
      Effect.gen(function*() {
        const { l1, l2, make } = twoTiers()
        const tiered = yield* make
        l2.mode = "fail"
        yield* tiered.set("k", yield* makeEntry("v", MINUTE))
        expect(l1.store.has("k")).toBe(true)
        l1.mode = "fail"
        const error = yield* Effect.flip(tiered.set("k", yield* makeEntry("v", MINUTE)))
        expect(error._tag).toBe("BackendUnavailable")
      }))
  })
})

describe("TieredCache over an L2 that reads as a Promise (unsafeGetPromise)", () => {
  const promised = (l2Options?: Partial<TieredCache.Tier>) => {
    const l1 = makeMapBackend("l1", { sync: true })
    const l2 = makeMapBackend("l2", { promise: true })
    return { l1, l2, make: TieredCache.make([{ backend: l1 }, { backend: l2, ...l2Options }]) }
  }

  it.scoped("reads L2 through unsafeGetPromise, and through get when the tier has a timeout of its own", () =>
    Effect.gen(function*() {
      const plain = promised()
      const tiered = yield* plain.make
      plain.l2.store.set("k", yield* makeEntry("v", MINUTE))
      expect(yield* getValue(tiered, "k")).toEqual(Option.some("v"))
      expect(yield* getValue(tiered, "k")).toEqual(Option.some("v")) // now from L1
      expect(plain.l2.calls).toMatchObject({ get: 0, getPromise: 1 })

      const timed = promised({ timeout: "1 second" })
      const timedTiers = yield* timed.make
      timed.l2.store.set("k", yield* makeEntry("v", MINUTE))
      expect(yield* getValue(timedTiers, "k")).toEqual(Option.some("v"))
      expect(timed.l2.calls).toMatchObject({ get: 1, getPromise: 0 })
    }))

  it.scoped("a rejection that is not a CacheError is a defect: counted, fed to the breaker, the read misses", () =>
    Effect.gen(function*() {
      const l1 = makeMapBackend("l1", { sync: true })
      const l2: CacheBackend.CacheBackend = {
        ...makeMapBackend("l2"),
        unsafeGetPromise: () => Promise.reject(new TypeError("boom"))
      }
      const tiered = yield* TieredCache.make([{ backend: l1 }, {
        backend: l2,
        breaker: { failureThreshold: 1, resetAfter: "1 minute" }
      }])
      expect(yield* tiered.get("k")).toEqual(Option.none())
      const [, s2] = yield* tiered.stats
      expect(s2).toMatchObject({ errors: 1, breaker: "open" })
    }))

  it.scoped("an InvalidKey rejection is an answer, not an outage: counted as an error, the circuit stays closed", () =>
    Effect.gen(function*() {
      const { l2, make } = promised({ breaker: { failureThreshold: 1, resetAfter: "1 minute" } })
      const tiered = yield* make
      expect(yield* tiered.get("x".repeat(5000))).toEqual(Option.none())
      const [, s2] = yield* tiered.stats
      expect(s2).toMatchObject({ errors: 1, breaker: "closed" })
      expect(l2.calls.getPromise).toBe(1)
    }))

  it.scoped("concurrent misses of one key share one Promise read of L2; a miss there is shared too", () =>
    Effect.gen(function*() {
      const { l2, make } = promised()
      const tiered = yield* make
      l2.store.set("k", yield* makeEntry("v", MINUTE))
      l2.mode = "hang"
      const readers = yield* Effect.forEach(["k", "k", "k", "nope", "nope"], (key) => Effect.fork(tiered.get(key)))
      yield* settle(() => l2.calls.getPromise === 2)
      yield* quiesce
      l2.releaseHeld()
      const answers = yield* Effect.forEach(readers, Fiber.join)
      expect(answers.map(Option.map(str))).toEqual([
        Option.some("v"),
        Option.some("v"),
        Option.some("v"),
        Option.none(),
        Option.none()
      ])
      expect(l2.calls.getPromise).toBe(2)
      // the walk is over: the next miss of the key reads L2 again
      l2.mode = "ok"
      yield* tiered.invalidate("k")
      expect(yield* tiered.get("k")).toEqual(Option.none())
      expect(l2.calls.getPromise).toBe(3)
    }))

  it.scoped("a reader interrupted while its L2 read is out: the readers sharing its walk get the reply, nothing is promoted", () =>
    Effect.gen(function*() {
      const { l1, l2, make } = promised({ breaker: { failureThreshold: 1, resetAfter: "1 minute" } })
      const tiered = yield* make
      l2.store.set("k", yield* makeEntry("v", MINUTE))
      l2.mode = "hang"
      const first = yield* Effect.fork(tiered.get("k"))
      yield* settle(() => l2.calls.getPromise === 1)
      const second = yield* Effect.fork(tiered.get("k"))
      yield* quiesce
      yield* Fiber.interrupt(first)
      l2.releaseHeld()
      expect(Option.map(yield* Fiber.join(second), str)).toEqual(Option.some("v"))
      expect(l2.calls.getPromise).toBe(1) // the read already out answered the waiter
      expect(l1.store.has("k")).toBe(false) // promoting was the interrupted reader's part
      const [, s2] = yield* tiered.stats
      // the one read L2 answered is counted once (the waiter's answer came from it)
      expect(s2).toMatchObject({ hits: 1, errors: 0, breaker: "closed" })
      // the walk is over: the next read reads L2 again
      l2.mode = "ok"
      expect(Option.map(yield* tiered.get("k"), str)).toEqual(Option.some("v"))
      expect(l2.calls.getPromise).toBe(2)
      expect((yield* tiered.stats)[1]).toMatchObject({ hits: 2 })
    }))

  it.scoped("a Promise read that raced a write does not promote the old value into L1", () =>
    Effect.gen(function*() {
      const { l1, l2, make } = promised()
      const tiered = yield* make
      l2.store.set("k", yield* makeEntry("old", MINUTE))
      l2.mode = "hang"
      const reader = yield* Effect.fork(tiered.get("k"))
      yield* settle(() => l2.calls.getPromise === 1)
      l2.mode = "ok"
      yield* tiered.invalidate("k")
      l2.releaseHeld()
      yield* Fiber.join(reader)
      expect(l1.store.has("k")).toBe(false)
    }))

  it.scoped("an interrupted half-open probe frees the probe: the next read probes again", () =>
    Effect.gen(function*() {
      const { l2, make } = promised({ breaker: { failureThreshold: 1, resetAfter: "10 seconds" } })
      const tiered = yield* make
      l2.mode = "fail"
      yield* tiered.get("a") // opens the circuit
      yield* TestClock.adjust(10 * SECOND)
      l2.mode = "hang"
      const probe = yield* Effect.fork(tiered.get("b"))
      yield* settle(() => l2.calls.getPromise === 2)
      yield* Fiber.interrupt(probe)
      l2.mode = "ok"
      l2.releaseHeld()
      l2.store.set("c", yield* makeEntry("v", MINUTE))
      expect(Option.map(yield* tiered.get("c"), str)).toEqual(Option.some("v"))
      expect(l2.calls.getPromise).toBe(3)
      expect((yield* tiered.stats)[1]!.breaker).toBe("closed")
    }))
})

describe("TieredCache invalidation", () => {
  it.scoped("invalidate(key) removes the key from every tier; a dead tier makes it fail loudly", () =>
    Effect.gen(function*() {
      const { l1, l2, make } = twoTiers()
      const tiered = yield* make
      yield* tiered.set("k", yield* makeEntry("v", MINUTE))
      expect(yield* tiered.invalidate("k")).toBe(true)
      expect(l1.store.has("k") || l2.store.has("k")).toBe(false)
      yield* tiered.set("k", yield* makeEntry("v", MINUTE))
      l2.mode = "fail"
      const error = yield* Effect.flip(tiered.invalidate("k"))
      expect(error._tag).toBe("BackendUnavailable")
      expect(l1.store.has("k")).toBe(false)
    }))

  it.scoped("invalidateTags deletes tagged entries in every tier", () =>
    Effect.gen(function*() {
      const { l1, l2, make } = twoTiers()
      const tiered = yield* make
      yield* tiered.set("a", yield* makeEntry("1", MINUTE, { tags: ["user:1"] }))
      yield* tiered.set("b", yield* makeEntry("2", MINUTE, { tags: ["user:2"] }))
      const report = yield* tiered.invalidateTags(["user:1"])
      expect(report).toEqual({ affected: 2, skippedTiers: [] })
      expect([...l1.store.keys(), ...l2.store.keys()]).toEqual(["b", "b"])
    }))

  it.scoped("soft tag expiry makes entries stale but servable inside their grace window", () =>
    Effect.gen(function*() {
      const { make } = twoTiers()
      const tiered = yield* make
      yield* tiered.set("a", yield* makeEntry("1", 10 * MINUTE, { graceMillis: 5 * MINUTE, tags: ["t"] }))
      yield* TestClock.adjust(MINUTE)
      const report = yield* tiered.invalidateTags(["t"], { mode: "expire" })
      expect(report.affected).toBe(2)
      const now = yield* Clock.currentTimeMillis
      const stale = Option.getOrThrow(yield* tiered.get("a"))
      expect(CacheEntry.isFresh(stale, now)).toBe(false)
      expect(CacheEntry.isServable(stale, now)).toBe(true)
      expect(str(stale)).toBe("1")
      // the grace window still ends where it did
      yield* TestClock.adjust(14 * MINUTE)
      expect(yield* tiered.get("a")).toEqual(Option.none())
    }))

  it.scoped("invalidatePattern deletes matching keys in every tier and reports tiers that cannot scan", () =>
    Effect.gen(function*() {
      const l1 = makeMapBackend("l1", { sync: true })
      const l2 = { ...makeMapBackend("l2"), scan: undefined }
      const tiered = yield* TieredCache.make([{ backend: l1 }, { backend: l2, name: "noscan" }])
      yield* tiered.set("user:1", yield* makeEntry("1", MINUTE))
      yield* tiered.set("post:1", yield* makeEntry("2", MINUTE))
      const report = yield* tiered.invalidatePattern("user:*")
      expect(report).toEqual({ affected: 1, skippedTiers: ["noscan"] })
      expect([...l1.store.keys()]).toEqual(["post:1"])
    }))
})

describe("TieredCache across instances (shared L2, memory bus)", () => {
  const twoInstances = Effect.gen(function*() {
    const hub = yield* InvalidationBus.makeMemoryHub()
    const shared = makeMapBackend("shared")
    const l1a = makeMapBackend("l1a", { sync: true })
    const l1b = makeMapBackend("l1b", { sync: true })
    // two Layers, as two processes would build them; only the hub is shared
    const instance = (l1: typeof l1a) =>
      TieredCache.layerWithBus([{ backend: l1 }, { backend: shared }]).pipe(
        Layer.provide(InvalidationBus.layerMemory()),
        Layer.provide(Layer.succeed(InvalidationBus.MemoryHub, hub)),
        Layer.build,
        Effect.map(Context.get(TieredCache.TieredCache))
      )
    const a = yield* instance(l1a)
    const b = yield* instance(l1b)
    return { hub, shared, l1a, l1b, a, b }
  })

  it.scoped("an update on A is never served stale from B's L1", () =>
    Effect.gen(function*() {
      const { a, b, l1b } = yield* twoInstances
      yield* a.set("k", yield* makeEntry("v1", MINUTE))
      yield* quiesce
      expect(yield* getValue(b, "k")).toEqual(Option.some("v1"))
      expect(l1b.store.has("k")).toBe(true)

      yield* a.backend.set("k", yield* makeEntry("v2", MINUTE)) // the face the Cache service uses
      yield* settle(() => !l1b.store.has("k"))
      expect(yield* getValue(b, "k")).toEqual(Option.some("v2"))
    }))

  it.scoped("invalidate, tag and clear messages reach the other instance; its own are ignored", () =>
    Effect.gen(function*() {
      const { a, b, l1a, l1b } = yield* twoInstances
      for (const key of ["x", "y", "z"]) {
        yield* a.set(key, yield* makeEntry(key, MINUTE, { tags: [key === "y" ? "ty" : "other"] }))
        yield* quiesce
        yield* b.get(key)
      }
      yield* a.invalidate("x")
      yield* settle(() => !l1b.store.has("x"))
      yield* a.invalidateTags(["ty"])
      yield* settle(() => !l1b.store.has("y"))
      expect(l1b.store.has("z")).toBe(true)
      // B's clear empties A's L1 too (A's own messages never come back to A)
      yield* a.set("w", yield* makeEntry("w", MINUTE))
      yield* b.clearLocal
      yield* b.clear
      yield* settle(() => l1a.store.size === 0)
    }))

  it.scoped("clears the local tier after the bus reconnects (messages may have been missed)", () =>
    Effect.gen(function*() {
      const { a, hub, l1a } = yield* twoInstances
      yield* a.set("k", yield* makeEntry("v", MINUTE))
      expect(l1a.store.has("k")).toBe(true)
      yield* hub.signal("Disconnected")
      yield* Effect.yieldNow()
      expect(l1a.store.has("k")).toBe(true)
      yield* hub.signal("Reconnected")
      yield* settle(() => l1a.store.size === 0)
      // still served, from the shared tier
      expect(yield* getValue(a, "k")).toEqual(Option.some("v"))
    }))

  it.scoped("setWithBroadcast and updateEverywhere write through and drop the other L1s", () =>
    Effect.gen(function*() {
      const hub = yield* InvalidationBus.makeMemoryHub()
      const shared = makeMapBackend("shared")
      const l1a = makeMapBackend("l1a", { sync: true })
      const l1b = makeMapBackend("l1b", { sync: true })
      const a = yield* TieredCache.make([{ backend: l1a }, { backend: shared }], {
        broadcast: "explicit",
        bus: InvalidationBus.makeMemory(hub)
      })
      const b = yield* TieredCache.make([{ backend: l1b }, { backend: shared }], {
        broadcast: "explicit",
        bus: InvalidationBus.makeMemory(hub)
      })
      yield* a.set("k", yield* makeEntry("v1", MINUTE))
      yield* b.get("k")
      yield* quiesce
      expect(l1b.store.has("k")).toBe(true)
      yield* a.set("k", yield* makeEntry("v2", MINUTE)) // explicit mode: no broadcast
      for (let i = 0; i < 20; i++) yield* Effect.yieldNow()
      expect(yield* getValue(b, "k")).toEqual(Option.some("v1"))

      yield* a.setWithBroadcast("k", yield* makeEntry("v3", MINUTE))
      yield* settle(() => !l1b.store.has("k"))
      expect(yield* getValue(b, "k")).toEqual(Option.some("v3"))

      yield* a.updateEverywhere("k", (current) =>
        Effect.map(
          makeEntry(Option.match(current, { onNone: () => "", onSome: str }) + "+1", MINUTE),
          Option.some
        ))
      yield* settle(() => !l1b.store.has("k"))
      expect(yield* getValue(b, "k")).toEqual(Option.some("v3+1"))
    }))
})

describe("TieredCache under the Cache service", () => {
  it.scoped("N concurrent misses cost one walk of the lower tiers and one compute", () =>
    Effect.gen(function*() {
      const l1 = yield* MemoryBackend.make({ maxEntries: 100 })
      const l2 = makeMapBackend("l2", { readLatency: "10 millis" })
      const ctx = yield* Layer.build(
        Cache.layer().pipe(Layer.provideMerge(TieredCache.layer([{ backend: l1 }, { backend: l2 }])))
      )
      const cache = Context.get(ctx, Cache.Cache)
      const tiered = Context.get(ctx, TieredCache.TieredCache)
      let computes = 0
      const compute = Effect.sleep("50 millis").pipe(
        Effect.as(new TextEncoder().encode("computed")),
        Effect.tap(() => {
          computes++
        })
      )
      const readers = yield* Effect.fork(
        Effect.all(Array.from({ length: 10 }, () => cache.getOrCompute("k", compute, { ttl: "1 minute" })), {
          concurrency: "unbounded"
        })
      )
      yield* TestClock.adjust("10 millis")
      yield* TestClock.adjust("50 millis")
      const values = yield* Fiber.join(readers)
      expect(values.map((v) => new TextDecoder().decode(v))).toEqual(Array(10).fill("computed"))
      expect(l2.calls.get).toBe(1)
      expect(computes).toBe(1)
      // the computed value went through every tier
      expect(l2.store.has("k")).toBe(true)
      expect(l1.unsafeGetSync("k", yield* Clock.currentTimeMillis)).toBeDefined()
      expect((yield* tiered.stats)[0]!.misses).toBe(10)
    }))

  it.scoped("a walk that raced an invalidation does not promote the old value into L1", () =>
    Effect.gen(function*() {
      const l1 = makeMapBackend("l1", { sync: true })
      const l2 = makeMapBackend("l2", { readLatency: "10 millis" })
      const tiered = yield* TieredCache.make([{ backend: l1 }, { backend: l2 }])
      l2.store.set("k", yield* makeEntry("old", MINUTE))
      const reader = yield* Effect.fork(tiered.get("k"))
      yield* settle(() => l2.calls.get === 1) // L2 has read "old" and answers in 10 ms
      yield* tiered.invalidate("k")
      yield* TestClock.adjust("10 millis")
      yield* Fiber.join(reader)
      expect(l1.store.has("k")).toBe(false)
    }))

  it.scoped("a reader interrupted mid-walk does not strand the readers sharing its walk", () =>
    Effect.gen(function*() {
      const l1 = makeMapBackend("l1", { sync: true })
      const l2 = makeMapBackend("l2", { readLatency: "10 millis" })
      const tiered = yield* TieredCache.make([{ backend: l1 }, { backend: l2 }])
      l2.store.set("k", yield* makeEntry("v", MINUTE))
      const first = yield* Effect.fork(tiered.get("k"))
      yield* settle(() => l2.calls.get === 1)
      const second = yield* Effect.fork(tiered.get("k"))
      yield* quiesce
      yield* Fiber.interrupt(first)
      yield* TestClock.adjust("10 millis")
      expect(Option.map(yield* Fiber.join(second), str)).toEqual(Option.some("v"))
      expect(l2.calls.get).toBe(2) // it walked again on its own
    }))

  it.scoped("after a soft tag expiry the Cache serves the stale value while exactly one refresh runs", () =>
    Effect.gen(function*() {
      const l1 = yield* MemoryBackend.make({ maxEntries: 100 })
      const l2 = makeMapBackend("l2")
      const ctx = yield* Layer.build(
        Cache.layer().pipe(Layer.provideMerge(TieredCache.layer([{ backend: l1 }, { backend: l2 }])))
      )
      const cache = Context.get(ctx, Cache.Cache)
      const tiered = Context.get(ctx, TieredCache.TieredCache)
      const utf8 = (s: string) => new TextEncoder().encode(s)
      const options = { ttl: "10 minutes", grace: "5 minutes", tags: ["t"] } as const
      yield* cache.set("k", utf8("v1"), options)
      yield* TestClock.adjust(MINUTE)
      yield* tiered.invalidateTags(["t"], { mode: "expire" })
      let computes = 0
      const compute = Effect.sleep("1 second").pipe(
        Effect.as(utf8("v2")),
        Effect.tap(() => {
          computes++
        })
      )
      const decode = (b: Uint8Array) => new TextDecoder().decode(b)
      expect(decode(yield* cache.getOrCompute("k", compute, options))).toBe("v1")
      expect(decode(yield* cache.getOrCompute("k", compute, options))).toBe("v1")
      yield* TestClock.adjust("1 second")
      yield* quiesce
      expect(computes).toBe(1)
      expect(decode(yield* cache.getOrCompute("k", compute, options))).toBe("v2")
    }))
})

describe("TieredCache synchronous reads (the face's unsafePeekSync / unsafeGetSync)", () => {
  /** A memory L1 (it can peek and read synchronously) over a map L2. */
  const memoryOverMap = (l1Options?: Partial<TieredCache.Tier>) =>
    Effect.gen(function*() {
      const memory = yield* MemoryBackend.make({ maxEntries: 100 })
      const l2 = makeMapBackend("l2")
      const tiered = yield* TieredCache.make([{ backend: memory, name: "l1", ...l1Options }, {
        backend: l2,
        name: "l2"
      }])
      const face = tiered.backend
      if (face.unsafeGetSync === undefined || face.unsafePeekSync === undefined) {
        return expect.fail("expected the tiers' face to read synchronously over a memory L1")
      }
      const counts = Effect.map(
        Effect.zip(tiered.stats, memory.stats),
        ([tiers, own]) => ({ tiers: tiers.map((t) => [t.name, t.hits, t.misses]), memory: [own.hits, own.misses] })
      )
      return { memory, l2, tiered, face, getSync: face.unsafeGetSync, peekSync: face.unsafePeekSync, counts }
    })

  it.scoped("answers an L1 hit synchronously, counted once in the tier stats, L1's own stats and the hit listeners; a peek counts nothing", () =>
    Effect.gen(function*() {
      const { counts, face, getSync, peekSync, tiered } = yield* memoryOverMap()
      expect(face.unsafeSyncMissIsFinal).toBe(false)
      const heard: Array<[string, number]> = []
      yield* tiered.observeHits((key, _entry, tier) => heard.push([key, tier]))
      yield* tiered.set("k", yield* makeEntry("v", MINUTE))
      const now = yield* Clock.currentTimeMillis

      expect(str(peekSync("k", now)!)).toBe("v")
      expect(yield* counts).toEqual({ tiers: [["l1", 0, 0], ["l2", 0, 0]], memory: [0, 0] })
      expect(heard).toEqual([])

      expect(str(getSync("k", now)!)).toBe("v")
      expect(yield* counts).toEqual({ tiers: [["l1", 1, 0], ["l2", 0, 0]], memory: [1, 0] })
      expect(heard).toEqual([["k", 0]])
    }))

  it.scoped("an L1 miss is not final: the sync read answers undefined and counts nothing, the get after it finds L2 and counts once", () =>
    Effect.gen(function*() {
      const { counts, getSync, memory, peekSync, tiered } = yield* memoryOverMap()
      yield* tiered.set("k", yield* makeEntry("v", MINUTE))
      yield* memory.delete("k")
      const now = yield* Clock.currentTimeMillis

      expect(peekSync("k", now)).toBeUndefined()
      expect(getSync("k", now)).toBeUndefined()
      expect(yield* counts).toEqual({ tiers: [["l1", 0, 0], ["l2", 0, 0]], memory: [0, 0] })

      expect(yield* getValue(tiered, "k")).toEqual(Option.some("v"))
      expect(yield* counts).toEqual({ tiers: [["l1", 0, 1], ["l2", 1, 0]], memory: [0, 1] })
      // promoted: the next sync read answers from L1
      expect(str(getSync("k", now)!)).toBe("v")
      expect((yield* counts).tiers).toEqual([["l1", 1, 1], ["l2", 1, 0]])
    }))

  it.scoped("follows L1's own lifetime: an entry past its L1 expiry is not answered synchronously, L2's longer copy still is by get", () =>
    Effect.gen(function*() {
      const { getSync, peekSync, tiered } = yield* TieredCache.make([
        { backend: yield* MemoryBackend.make({ maxEntries: 100 }) },
        { backend: makeMapBackend("l2"), ttlScale: 2 }
      ]).pipe(
        Effect.map((t) => ({ tiered: t, getSync: t.backend.unsafeGetSync!, peekSync: t.backend.unsafePeekSync! }))
      )
      yield* tiered.set("k", yield* makeEntry("v", MINUTE))
      yield* TestClock.adjust(MINUTE - 1)
      expect(getSync("k", yield* Clock.currentTimeMillis)).toBeDefined()
      yield* TestClock.adjust(1)
      expect(peekSync("k", yield* Clock.currentTimeMillis)).toBeUndefined()
      expect(getSync("k", yield* Clock.currentTimeMillis)).toBeUndefined()
      expect(yield* getValue(tiered, "k")).toEqual(Option.some("v"))
    }))

  it.scoped("does not read L1 while its circuit is open: undefined (ask get), and get serves from L2", () =>
    Effect.gen(function*() {
      const memory = yield* MemoryBackend.make({ maxEntries: 100 })
      let failSets = false
      const flaky: CacheBackend.CacheBackend = {
        ...memory,
        set: (key, entry) =>
          failSets ? Effect.fail(CacheError.backendUnavailable("l1", "set", "down")) : memory.set(key, entry)
      }
      const l2 = makeMapBackend("l2")
      const tiered = yield* TieredCache.make([
        { backend: flaky, name: "l1", breaker: { failureThreshold: 1, resetAfter: "10 seconds" } },
        { backend: l2, name: "l2" }
      ])
      yield* tiered.set("k", yield* makeEntry("v", 10 * MINUTE))
      failSets = true
      yield* tiered.set("other", yield* makeEntry("w", 10 * MINUTE)) // L1 fails: its circuit opens
      expect((yield* tiered.stats)[0]!.breaker).toBe("open")
      const now = yield* Clock.currentTimeMillis
      expect(memory.unsafePeekSync("k", now)).toBeDefined()
      expect(tiered.backend.unsafePeekSync!("k", now)).toBeUndefined()
      expect(tiered.backend.unsafeGetSync!("k", now)).toBeUndefined()
      expect(yield* getValue(tiered, "k")).toEqual(Option.some("v"))
      // L1 skipped twice: the read, then the promotion of what L2 found
      expect((yield* tiered.stats).map((s) => [s.name, s.hits, s.skipped])).toEqual([["l1", 0, 2], ["l2", 1, 0]])
    }))

  it.scoped("an L1 that cannot peek gives the face no synchronous reads", () =>
    Effect.gen(function*() {
      const { make } = twoTiers()
      const tiered = yield* make
      expect(tiered.backend.unsafeGetSync).toBeUndefined()
      expect(tiered.backend.unsafePeekSync).toBeUndefined()
      expect(tiered.backend.unsafeSyncMissIsFinal).toBeUndefined()
    }))

  it.scoped("a Cache over the tiers reads a key only L2 holds from L2 (no compute) and L1 hits without a walk", () =>
    Effect.gen(function*() {
      const memory = yield* MemoryBackend.make({ maxEntries: 100 })
      const l2 = makeMapBackend("l2")
      const ctx = yield* Layer.build(
        Cache.layer().pipe(Layer.provideMerge(TieredCache.layer([{ backend: memory }, { backend: l2 }])))
      )
      const cache = Context.get(ctx, Cache.Cache)
      const tiered = Context.get(ctx, TieredCache.TieredCache)
      yield* cache.set("k", new TextEncoder().encode("stored"), { ttl: "1 minute" })
      yield* memory.delete("k")
      let computes = 0
      const compute = Effect.sync(() => {
        computes++
        return new TextEncoder().encode("computed")
      })
      const decode = (b: Uint8Array) => new TextDecoder().decode(b)
      expect(decode(yield* cache.getOrCompute("k", compute))).toBe("stored")
      expect(Option.map(yield* cache.get("k"), decode)).toEqual(Option.some("stored"))
      expect(computes).toBe(0)
      expect(l2.calls.get).toBe(1)
      expect((yield* tiered.stats).map((s) => [s.hits, s.misses])).toEqual([[1, 1], [1, 0]])
      expect(yield* cache.stats).toMatchObject({ hits: 2, misses: 0 })
    }))
})
