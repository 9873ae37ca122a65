import { Cache, MemoryBackend } from "@cachekit/core"
import * as CoarseClock from "@cachekit/core/CoarseClock"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Option, Scope } from "effect"
import { makeCells, markStopped, readTime } from "../src/internal/coarseClock.js"

const realNow = () => Date.now()

/** Runs `read` every millisecond until `done` holds for its value (at most 5 s); the last value. */
const pollUntil = <A, E, R>(read: Effect.Effect<A, E, R>, done: (a: A) => boolean) => {
  const loop: Effect.Effect<A, E, R> = Effect.flatMap(
    read,
    (a) => (done(a) ? Effect.succeed(a) : Effect.zipRight(Effect.sleep("1 millis"), loop))
  )
  return Effect.timeout(loop, "5 seconds")
}

describe("CoarseClock: the shared time word", () => {
  it("reads the stored time, whatever its size", () => {
    const cells = makeCells(1_700_000_000_123)
    expect(readTime(cells.time, () => -1)).toBe(1_700_000_000_123)
    cells.time[0] = 8_640_000_000_000_000 // the largest Date
    expect(readTime(cells.time, () => -1)).toBe(8_640_000_000_000_000)
  })

  it("falls back once the writer is marked stopped, instead of returning a frozen time", () => {
    const cells = makeCells(1_000)
    markStopped(cells)
    expect(readTime(cells.time, () => 42)).toBe(42)
  })
})

describe("CoarseClock: the clock", () => {
  // Real time (this is the real clock under test): bounds are generous, and the test waits for a
  // change by polling, not by a fixed sleep.
  it.live("follows the real time and advances", () =>
    Effect.scoped(Effect.gen(function*() {
      const clock = yield* CoarseClock.make({ resolution: "2 millis" })
      expect(clock.isRunning()).toBe(true)
      const first = clock.unsafeCurrentTimeMillis()
      expect(Math.abs(first - realNow())).toBeLessThan(1_000)
      const later = yield* pollUntil(Effect.sync(() => clock.unsafeCurrentTimeMillis()), (t) => t > first)
      expect(later).toBeGreaterThan(first)
      expect(yield* clock.currentTimeMillis).toBeGreaterThanOrEqual(later)
      // nanosecond reads are the precise clock's
      const a = clock.unsafeCurrentTimeNanos()
      const b = clock.unsafeCurrentTimeNanos()
      expect(b >= a).toBe(true)
    })))

  it.live("stops its thread when the scope closes, and then reads the real time", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const clock = yield* Scope.extend(CoarseClock.make(), scope)
      expect(clock.isRunning()).toBe(true)
      yield* Scope.close(scope, Exit.void)
      expect(clock.isRunning()).toBe(false)
      const before = realNow()
      const read = clock.unsafeCurrentTimeMillis()
      const after = realNow()
      expect(read).toBeGreaterThanOrEqual(before)
      expect(read).toBeLessThanOrEqual(after)
    }))

  it.live("is the Clock a Cache captures when provided below its layer, and entries expire by it", () =>
    Effect.gen(function*() {
      const cache = yield* Cache.Cache
      const clock = yield* Effect.clock
      expect("isRunning" in clock && typeof clock.isRunning === "function").toBe(true)
      yield* cache.set("k", new Uint8Array([1]), { ttl: "20 millis" })
      expect(Option.isSome(yield* cache.get("k"))).toBe(true)
      // polls until the entry is gone: it must expire by the coarse clock's time
      const gone = yield* pollUntil(cache.get("k"), Option.isNone)
      expect(Option.isNone(gone)).toBe(true)
    }).pipe(
      Effect.provide(
        Cache.layer({ ttl: "1 minute" }).pipe(
          Layer.provide(MemoryBackend.layer({ maxEntries: 100 })),
          Layer.provide(CoarseClock.layer())
        )
      )
    ))
})
