import type { CacheError } from "@cachekit/core"
import { Cache, CacheBackend, Codec, MemoryBackend } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Deferred, Effect, Either, Exit, Fiber, Layer, Metric, Option, Schema, TestClock } from "effect"
import type { TestBackend } from "./fixtures/cacheBackends.js"
import { makeTestBackend, testBackendLayer } from "./fixtures/cacheBackends.js"

type Body<A, E> = (cache: Cache.Cache, backend: CacheBackend.CacheBackend) => Effect.Effect<A, E, Cache.Cache>

interface Variant {
  readonly name: string
  /** Runs `body` with a cache (layer `options`) on a fresh backend of this variant. */
  readonly withCache: <A, E>(
    body: Body<A, E>,
    options?: Cache.CacheLayerOptions,
    backendOptions?: { readonly maxEntrySize?: number }
  ) => Effect.Effect<A, E | CacheError.InvalidTtl>
}

const runWith = <A, E>(
  backendLayer: Layer.Layer<CacheBackend.CacheBackendTag>,
  body: Body<A, E>,
  options: Cache.CacheLayerOptions
) =>
  Effect.flatMap(
    CacheBackend.CacheBackendTag,
    (backend) => Effect.flatMap(Cache.Cache, (cache) => body(cache, backend))
  )
    .pipe(Effect.provide(Cache.layer(options).pipe(Layer.provideMerge(backendLayer))))

/**
 * Every behaviour runs on the real MemoryBackend (the synchronous hot path) and on a map backend
 * without `unsafeGetSync` (the Effect read path remote backends take).
 */
const variants: ReadonlyArray<Variant> = [
  {
    name: "MemoryBackend (synchronous hot path)",
    // A long sweep interval: TestClock.adjust("29 days") would otherwise run ~80,000 sweeps.
    withCache: (body, options = {}, backendOptions = {}) =>
      runWith(MemoryBackend.layer({ maxEntries: 2000, sweepInterval: "1 day", ...backendOptions }), body, options)
  },
  {
    name: "a map backend without unsafeGetSync (Effect read path)",
    withCache: (body, options = {}, backendOptions = {}) =>
      runWith(testBackendLayer(makeTestBackend({ ...backendOptions, sync: false })), body, options)
  }
]

/** Runs `body` with a cache on the test backend, whose `down` switch simulates an outage. */
const withTestBackend = <A, E>(
  body: (cache: Cache.Cache, backend: TestBackend) => Effect.Effect<A, E, Cache.Cache>,
  options: Cache.CacheLayerOptions = {},
  backendOptions: Parameters<typeof makeTestBackend>[0] = {}
) => {
  const backend = makeTestBackend(backendOptions)
  return Effect.flatMap(Cache.Cache, (cache) => body(cache, backend)).pipe(
    Effect.provide(Cache.layer(options).pipe(Layer.provide(testBackendLayer(backend))))
  )
}

/** The entry a backend holds for `key`, if any. */
const stored = (backend: CacheBackend.CacheBackend, key: string) =>
  Effect.map(Effect.orDie(backend.get(key)), Option.getOrUndefined)

/** Lets forked fibers run until they block. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 5; i++) yield* Effect.yieldNow()
})

class AppError extends Schema.TaggedError<AppError>()("AppError", { reason: Schema.String }) {}

class Account extends Schema.Class<Account>("Account")({
  id: Schema.BigInt,
  openedAt: Schema.Date,
  avatar: Schema.Uint8ArrayFromBase64,
  nickname: Schema.OptionFromNullOr(Schema.String)
}) {
  get label() {
    return `#${this.id}`
  }
}

describe.each(variants)("Cache on $name", ({ withCache }) => {
  describe("Cache: TTL", () => {
    it.effect("returns a set value until its TTL ends, then nothing", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          yield* text.set("k", "v1", { ttl: "1 minute" })
          expect(yield* text.get("k")).toEqual(Option.some("v1"))
          yield* TestClock.adjust("59 seconds")
          expect(yield* text.get("k")).toEqual(Option.some("v1"))
          yield* TestClock.adjust("1 second")
          expect(yield* text.get("k")).toEqual(Option.none())
        })
      ))

    it.effect("keeps a 30-day TTL (longer than any setTimeout) because time comes from Clock", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          yield* text.set("k", "v", { ttl: "30 days" })
          yield* TestClock.adjust("29 days")
          expect(yield* text.get("k")).toEqual(Option.some("v"))
          yield* TestClock.adjust("2 days")
          expect(yield* text.get("k")).toEqual(Option.none())
        })
      ))

    it.effect("uses the layer's default TTL when a call gives none", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          yield* cache.set("k", new Uint8Array([1]))
          yield* TestClock.adjust("9 seconds")
          expect(Option.isSome(yield* cache.get("k"))).toBe(true)
          yield* TestClock.adjust("1 second")
          expect(Option.isNone(yield* cache.get("k"))).toBe(true)
        }), { ttl: "10 seconds" }))

    it.effect("get and getOrCompute read when their effect runs, every time it runs, not when it is built", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          const read = text.get("k")
          const readOrCompute = text.getOrCompute("k", Effect.succeed("computed"))
          expect(yield* read).toEqual(Option.none())
          yield* text.set("k", "v1")
          expect(yield* read).toEqual(Option.some("v1")) // through yield*
          expect(yield* Effect.map(read, (o) => o)).toEqual(Option.some("v1")) // through the run loop
          yield* text.set("k", "v2")
          expect(yield* readOrCompute).toBe("v2")
          yield* text.delete("k")
          expect(yield* Effect.either(read)).toEqual(Either.right(Option.none()))
          expect(yield* readOrCompute).toBe("computed")
        })
      ))

    it.effect("one effect value yielded by several fibers at once, and again after one was interrupted, reads for each", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          const release = yield* Deferred.make<void>()
          const started = yield* Deferred.make<void>()
          const slow = Effect.zipRight(Deferred.succeed(started, undefined), Deferred.await(release)).pipe(
            Effect.as("computed")
          )
          const readOrCompute = text.getOrCompute("k", slow)
          // The first fiber suspends inside `yield*` (awaiting the compute); the same effect value is
          // then yielded by a second fiber and a third, which is interrupted while suspended.
          const first = yield* Effect.fork(Effect.gen(function*() {
            return yield* readOrCompute
          }))
          yield* Deferred.await(started)
          const second = yield* Effect.fork(Effect.gen(function*() {
            return yield* readOrCompute
          }))
          const third = yield* Effect.fork(Effect.gen(function*() {
            return yield* readOrCompute
          }))
          yield* Effect.yieldNow()
          yield* Fiber.interrupt(third)
          yield* Deferred.succeed(release, undefined)
          expect(yield* Fiber.join(first)).toBe("computed")
          expect(yield* Fiber.join(second)).toBe("computed")
          // the interrupted iteration left nothing behind: the same value reads the stored entry
          yield* text.set("k", "later")
          expect(yield* readOrCompute).toBe("later")
          expect(
            yield* Effect.gen(function*() {
              return yield* readOrCompute
            })
          ).toBe("later")
        })
      ))

    it.effect("deletes a key", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          yield* cache.set("k", new Uint8Array([1]))
          expect(yield* cache.delete("k")).toBe(true)
          expect(yield* cache.get("k")).toEqual(Option.none())
        })
      ))
  })

  describe("Cache: getOrCompute", () => {
    it.effect("computes on a miss, stores, and serves the stored value without computing again", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          let computes = 0
          const compute = Effect.sync(() => `v${++computes}`)
          expect(yield* text.getOrCompute("k", compute, { ttl: "1 minute" })).toBe("v1")
          expect(yield* text.getOrCompute("k", compute, { ttl: "1 minute" })).toBe("v1")
          expect(computes).toBe(1)
          yield* TestClock.adjust("61 seconds")
          expect(yield* text.getOrCompute("k", compute, { ttl: "1 minute" })).toBe("v2")
          expect(computes).toBe(2)
        })
      ))

    it.effect("serves stale inside the grace window while exactly one refresh runs, and readers never wait", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          let computes = 0
          const slow = Effect.sleep("10 seconds").pipe(Effect.zipRight(Effect.sync(() => `v${++computes + 1}`)))
          const options = { ttl: "1 minute", grace: "10 minutes" } as const
          yield* text.set("k", "v1", options)
          yield* TestClock.adjust("2 minutes")
          // No clock adjustment happens between these reads: if a reader waited for the 10 s refresh it would hang.
          for (let i = 0; i < 5; i++) expect(yield* text.getOrCompute("k", slow, options)).toBe("v1")
          yield* settle
          expect(computes).toBe(0)
          yield* TestClock.adjust("10 seconds")
          yield* settle
          expect(computes).toBe(1)
          expect(yield* text.getOrCompute("k", slow, options)).toBe("v2")
          const stats = yield* cache.stats
          expect(stats.staleServed).toBe(5)
          expect(stats.backgroundRefreshes).toBe(1)
        })
      ))

    it.effect("a failed background refresh keeps the stale value in service and is counted", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          const options = { ttl: "1 minute", grace: "10 minutes" } as const
          yield* text.set("k", "v1", options)
          yield* TestClock.adjust("2 minutes")
          const failing = Effect.fail(new AppError({ reason: "refresh failed" }))
          expect(yield* text.getOrCompute("k", failing, options)).toBe("v1")
          yield* settle
          expect(yield* text.getOrCompute("k", failing, options)).toBe("v1")
          yield* settle
          const stats = yield* cache.stats
          expect(stats.computeErrors).toBe(2)
          expect(stats.staleServed).toBe(2)
        })
      ))

    it.effect("past the grace window a reader waits for the fresh value", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          yield* text.set("k", "v1", { ttl: "1 minute", grace: "1 minute", failSafe: true })
          yield* TestClock.adjust("3 minutes")
          const fiber = yield* Effect.fork(text.getOrCompute("k", Effect.sleep("1 second").pipe(Effect.as("v2"))))
          yield* settle
          expect(fiber.unsafePoll()).toBeNull()
          yield* TestClock.adjust("1 second")
          expect(yield* Fiber.join(fiber)).toBe("v2")
        })
      ))

    it.effect("refreshes in the background when a hit falls inside the refresh-ahead window", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          let computes = 0
          const compute = Effect.sleep("1 second").pipe(Effect.zipRight(Effect.sync(() => `v${++computes}`)))
          const options = { ttl: "1 minute", refreshAhead: "10 seconds" } as const
          const first = yield* Effect.fork(text.getOrCompute("k", compute, options))
          yield* TestClock.adjust("1 second")
          expect(yield* Fiber.join(first)).toBe("v1")
          yield* TestClock.adjust("40 seconds") // 19 s before expiry: outside the window
          expect(yield* text.getOrCompute("k", compute, options)).toBe("v1")
          yield* settle
          expect(computes).toBe(1)
          yield* TestClock.adjust("15 seconds") // 4 s before expiry: inside
          expect(yield* text.getOrCompute("k", compute, options)).toBe("v1")
          expect(yield* text.getOrCompute("k", compute, options)).toBe("v1")
          yield* TestClock.adjust("1 second")
          yield* settle
          expect(computes).toBe(2)
          // The refreshed value has a new TTL: it is still fresh long after the first one would have expired.
          yield* TestClock.adjust("50 seconds")
          expect(yield* text.get("k")).toEqual(Option.some("v2"))
        })
      ))
  })

  describe("Cache: single-flight", () => {
    it.effect("1,000 concurrent misses of one key run the compute exactly once", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          const gate = yield* Deferred.make<void>()
          let computes = 0
          let started = 0
          const compute = Effect.sync(() => computes++).pipe(Effect.zipRight(Deferred.await(gate)), Effect.as("value"))
          const callers = yield* Effect.fork(
            Effect.all(
              Array.from({ length: 1000 }, () =>
                Effect.sync(() => started++).pipe(Effect.zipRight(text.getOrCompute("k", compute)))),
              { concurrency: "unbounded" }
            )
          )
          while (started < 1000) {
            yield* Effect.yieldNow()
          }
          yield* settle
          yield* Deferred.succeed(gate, undefined)
          const results = yield* Fiber.join(callers)
          expect(computes).toBe(1)
          expect(results.length).toBe(1000)
          expect(results.every((r) =>
            r === "value"
          )).toBe(true)
          expect((yield* cache.stats).computes).toBe(1)
        })
      ))

    it.effect("an awaited compute starts in the first caller's turn, before fibers already queued; a refresh does not", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          const order: Array<string> = []
          const compute = (label: string) =>
            Effect.sync(() => order.push(`${label} compute starts`)).pipe(
              Effect.zipRight(Effect.sleep("1 second")),
              Effect.as(label)
            )
          // Both fibers are queued before either runs: the compute must not wait for the second.
          const caller = yield* Effect.fork(
            text.getOrCompute("k", compute("miss"), { ttl: "1 minute", grace: "1 hour" })
          )
          const other = yield* Effect.fork(Effect.sync(() => order.push("other fiber runs")))
          yield* settle
          expect(order).toEqual(["miss compute starts", "other fiber runs"])
          yield* TestClock.adjust("1 second")
          expect(yield* Fiber.join(caller)).toBe("miss")
          yield* Fiber.join(other)
          // Stale inside grace: the reader gets the stale value and the refresh runs later, never in its turn.
          yield* TestClock.adjust("2 minutes")
          order.length = 0
          const value = yield* text.getOrCompute("k", compute("refresh"), { grace: "1 hour" })
          order.push(`reader has ${value}`)
          yield* settle
          expect(order).toEqual(["reader has miss", "refresh compute starts"])
        })
      ))

    it.effect("interrupting one waiter does not interrupt the compute the others wait for", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          let interrupted = false
          const compute = Effect.sleep("5 seconds").pipe(
            Effect.as("done"),
            Effect.onInterrupt(() => Effect.sync(() => (interrupted = true)))
          )
          const first = yield* Effect.fork(text.getOrCompute("k", compute))
          const second = yield* Effect.fork(text.getOrCompute("k", compute))
          yield* settle
          yield* Fiber.interrupt(first)
          yield* TestClock.adjust("5 seconds")
          expect(yield* Fiber.join(second)).toBe("done")
          expect(interrupted).toBe(false)
          expect(yield* text.get("k")).toEqual(Option.some("done"))
        })
      ))

    it.effect("interrupting the only waiter still lets the compute finish and store its value", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          const fiber = yield* Effect.fork(text.getOrCompute("k", Effect.sleep("1 second").pipe(Effect.as("v"))))
          yield* settle
          yield* Fiber.interrupt(fiber)
          yield* TestClock.adjust("1 second")
          yield* settle
          expect(yield* text.get("k")).toEqual(Option.some("v"))
        })
      ))

    it.effect("a failed compute releases every waiter with the same typed failure and leaves no stuck entry", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          let computes = 0
          const failing = Effect.sleep("1 second").pipe(
            Effect.zipRight(Effect.sync(() => computes++)),
            Effect.zipRight(Effect.fail(new AppError({ reason: "boom" })))
          )
          const waiters = yield* Effect.fork(
            Effect.all(Array.from({ length: 10 }, () => Effect.either(text.getOrCompute("k", failing))), {
              concurrency: "unbounded"
            })
          )
          yield* settle
          yield* TestClock.adjust("1 second")
          const results = yield* Fiber.join(waiters)
          expect(computes).toBe(1)
          const errors = results.map((r) => (r._tag === "Left" ? r.left : undefined))
          expect(errors.every((e) => e instanceof AppError && e.reason === "boom")).toBe(true)
          expect(errors[0]).toBe(errors[9]) // the very same failure value
          // Not cached, not stuck: the next call computes again, successfully.
          expect(yield* text.getOrCompute("k", Effect.succeed("ok"))).toBe("ok")
          expect((yield* cache.stats).computeErrors).toBe(1)
        })
      ))

    it.effect("a compute that dies releases every waiter with the defect and leaves no stuck entry", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          const dying = Effect.sleep("1 second").pipe(Effect.zipRight(Effect.dieMessage("bug in compute")))
          const waiters = yield* Effect.fork(
            Effect.all(Array.from({ length: 3 }, () => Effect.exit(text.getOrCompute("k", dying))), {
              concurrency: "unbounded"
            })
          )
          yield* settle
          yield* TestClock.adjust("1 second")
          const exits = yield* Fiber.join(waiters)
          expect(exits.every((e) => Exit.isFailure(e) && e.cause._tag === "Die")).toBe(true)
          expect(yield* text.getOrCompute("k", Effect.succeed("ok"))).toBe("ok")
        })
      ))

    it.effect("closing the cache's layer interrupts computes still running", () =>
      Effect.gen(function*() {
        let interrupted = false
        const backend = makeTestBackend()
        yield* Effect.scoped(
          Effect.gen(function*() {
            const context = yield* Layer.build(Cache.layer().pipe(Layer.provide(testBackendLayer(backend))))
            const cache = (yield* Effect.provide(Cache.Cache, context)).typed(Schema.String)
            const compute = Effect.never.pipe(Effect.onInterrupt(() => Effect.sync(() => (interrupted = true))))
            const caller = yield* Effect.fork(cache.getOrCompute("k", compute))
            yield* settle
            yield* Fiber.interrupt(caller)
            expect(interrupted).toBe(false)
          })
        )
        expect(interrupted).toBe(true)
      }))
  })

  describe("Cache: negative caching", () => {
    it.effect("does not cache failures unless a negative TTL is asked for", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          let computes = 0
          const failing = Effect.suspend(() => {
            computes++
            return Effect.fail(new AppError({ reason: "nope" }))
          })
          yield* Effect.flip(text.getOrCompute("k", failing, { errorCodec: Codec.schema(AppError) }))
          yield* Effect.flip(text.getOrCompute("k", failing))
          expect(computes).toBe(2)
        })
      ))

    it.effect("stores a failure for the negative TTL and re-raises it as the same typed error", () =>
      withCache((cache, backend) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          let computes = 0
          const failing = Effect.suspend(() => {
            computes++
            return Effect.fail(new AppError({ reason: "not found" }))
          })
          const options = { negativeTtl: "5 seconds", errorCodec: Codec.schema(AppError) } as const
          const first = yield* Effect.flip(text.getOrCompute("k", failing, options))
          const second = yield* Effect.flip(text.getOrCompute("k", failing, options))
          expect(computes).toBe(1)
          expect(second).toBeInstanceOf(AppError)
          expect(second).toEqual(first)
          // A stored failure is not a value.
          expect(yield* text.get("k")).toEqual(Option.none())
          expect((yield* stored(backend, "k"))?.meta).toEqual({ "cachekit.failure": "1" })
          yield* TestClock.adjust("5 seconds")
          expect(yield* text.getOrCompute("k", Effect.succeed("found"), options)).toBe("found")
        })
      ))

    it.effect("stores empty results with the negative TTL instead of the TTL", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const maybe = cache.typed(Schema.OptionFromNullOr(Schema.String))
          const options = {
            ttl: "1 hour",
            negativeTtl: "10 seconds",
            isEmpty: (o: Option.Option<string>) => Option.isNone(o)
          } as const
          expect(yield* maybe.getOrCompute("missing", Effect.succeed(Option.none()), options)).toEqual(Option.none())
          expect(yield* maybe.getOrCompute("present", Effect.succeed(Option.some("x")), options)).toEqual(
            Option.some("x")
          )
          yield* TestClock.adjust("10 seconds")
          expect(yield* maybe.get("missing")).toEqual(Option.none())
          expect(yield* maybe.get("present")).toEqual(Option.some(Option.some("x")))
        })
      ))
  })

  describe("Cache: timeouts", () => {
    it.effect("a soft timeout returns the stale value and lets the compute finish and store in the background", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          const options = { ttl: "1 minute", softTimeout: "1 second" } as const
          // Written with a soft timeout in force, the entry is kept `maxStale` past its TTL as a fallback.
          yield* text.getOrCompute("k", Effect.succeed("old"), options)
          yield* TestClock.adjust("2 minutes")
          const slow = Effect.sleep("5 seconds").pipe(Effect.as("new"))
          const fiber = yield* Effect.fork(text.getOrCompute("k", slow, options))
          yield* settle
          yield* TestClock.adjust("1 second")
          expect(yield* Fiber.join(fiber)).toBe("old")
          yield* TestClock.adjust("4 seconds")
          yield* settle
          expect(yield* text.get("k")).toEqual(Option.some("new"))
        }), { maxStale: "1 hour" }))

    it.effect("without a stale value a soft timeout waits for the compute", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          const fiber = yield* Effect.fork(
            text.getOrCompute("k", Effect.sleep("5 seconds").pipe(Effect.as("v")), { softTimeout: "1 second" })
          )
          yield* settle
          yield* TestClock.adjust("1 second")
          expect(fiber.unsafePoll()).toBeNull()
          yield* TestClock.adjust("4 seconds")
          expect(yield* Fiber.join(fiber)).toBe("v")
        })
      ))

    it.effect("a hard timeout interrupts the compute and fails with ComputeTimeout", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          let interrupted = false
          const slow = Effect.sleep("10 seconds").pipe(
            Effect.as("late"),
            Effect.onInterrupt(() => Effect.sync(() => (interrupted = true)))
          )
          const fiber = yield* Effect.fork(Effect.flip(text.getOrCompute("k", slow, { hardTimeout: "2 seconds" })))
          yield* settle
          yield* TestClock.adjust("2 seconds")
          const error = yield* Fiber.join(fiber)
          expect(error).toBeInstanceOf(Cache.ComputeTimeout)
          expect((error as Cache.ComputeTimeout).timeoutMillis).toBe(2000)
          expect(interrupted).toBe(true)
          expect(yield* text.getOrCompute("k", Effect.succeed("next"))).toBe("next")
        })
      ))
  })

  describe("Cache: fail-safe and backend failures", () => {
    it.effect("fail-safe serves the stale value when the compute fails", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          yield* text.set("k", "stale", { ttl: "1 minute", failSafe: true })
          yield* TestClock.adjust("5 minutes")
          const failing = Effect.fail(new AppError({ reason: "down" }))
          expect(yield* text.getOrCompute("k", failing, { failSafe: true })).toBe("stale")
          // Without fail-safe the same failure reaches the caller.
          const error = yield* Effect.flip(text.getOrCompute("k", failing, { failSafe: false }))
          expect(error).toBeInstanceOf(AppError)
        })
      ))

    it.effect("fail-safe serves the stale value when the compute hits its hard timeout", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          yield* text.set("k", "stale", { ttl: "1 minute" })
          yield* TestClock.adjust("2 minutes")
          const fiber = yield* Effect.fork(text.getOrCompute("k", Effect.never, { hardTimeout: "1 second" }))
          yield* settle
          yield* TestClock.adjust("1 second")
          expect(yield* Fiber.join(fiber)).toBe("stale")
        }), { failSafe: true }))
  })

  describe("Cache: bad inputs are typed errors", () => {
    it.effect("rejects empty and over-long keys with InvalidKey", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          expect((yield* Effect.flip(cache.get("")))._tag).toBe("InvalidKey")
          expect((yield* Effect.flip(cache.set("", new Uint8Array()))).constructor.name).toBe("InvalidKey")
          expect((yield* Effect.flip(cache.getOrCompute("", Effect.succeed(new Uint8Array()))))._tag).toBe("InvalidKey")
          expect((yield* Effect.flip(cache.get("x".repeat(101))))._tag).toBe("InvalidKey")
        }), { maxKeyLength: 100 }))

    it.effect("rejects negative, NaN and unparsable TTLs with InvalidTtl", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const bytes = new Uint8Array([1])
          for (const ttl of [-1, Number.NaN, "-5 seconds", "soon"] as const) {
            const error = yield* Effect.flip(cache.set("k", bytes, { ttl: ttl as never }))
            expect(error._tag).toBe("InvalidTtl")
          }
          const grace = yield* Effect.flip(cache.getOrCompute("k", Effect.succeed(bytes), { grace: -5 }))
          expect(grace).toMatchObject({ _tag: "InvalidTtl", field: "grace" })
        })
      ))

    it.effect("fails to build a layer whose defaults are not usable durations", () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(
          Effect.provide(Cache.Cache, Cache.layer({ ttl: -3 }).pipe(Layer.provide(testBackendLayer(makeTestBackend()))))
        )
        expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error._tag).toBe("InvalidTtl")
      }))

    it.effect("rejects a value the Schema cannot encode with EncodeError, in set and in getOrCompute", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const positive = cache.typed(Schema.Number.pipe(Schema.positive()))
          expect((yield* Effect.flip(positive.set("k", -1)))._tag).toBe("EncodeError")
          expect((yield* Effect.flip(positive.getOrCompute("k", Effect.succeed(-1))))._tag).toBe("EncodeError")
        })
      ))

    it.effect("rejects a value over the maximum size with EntryTooLarge", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const error = yield* Effect.flip(cache.set("k", new Uint8Array(17)))
          expect(error).toMatchObject({ _tag: "EntryTooLarge", size: 17, maxSize: 16 })
          yield* cache.set("k", new Uint8Array(16))
          const computed = yield* Effect.flip(cache.getOrCompute("big", Effect.succeed(new Uint8Array(100))))
          expect(computed._tag).toBe("EntryTooLarge")
        }), { maxEntrySize: 16 }))

    it.effect("takes the maximum size from the backend when the layer sets none", () =>
      withCache(
        (cache) =>
          Effect.gen(function*() {
            expect((yield* Effect.flip(cache.set("k", new Uint8Array(9))))._tag).toBe("EntryTooLarge")
          }),
        {},
        { maxEntrySize: 8 }
      ))
  })

  describe("Cache: Schema-typed values", () => {
    it.effect("round-trips Date, BigInt, Uint8Array, Option and Schema classes through the stored bytes", () =>
      withCache((cache, backend) =>
        Effect.gen(function*() {
          const account = new Account({
            id: 12345678901234567890n,
            openedAt: new Date("2024-02-29T12:00:00.000Z"),
            avatar: new Uint8Array([0, 255, 7]),
            nickname: Option.some("al")
          })
          yield* cache.typed(Account).set("a", account)
          yield* Cache.makeTyped(Schema.DateFromString).pipe(Effect.flatMap((dates) => dates.set("d", new Date(0))))
          yield* cache.typed(Schema.BigInt).set("n", -5n)
          yield* cache.typed(Schema.Option(Schema.Uint8ArrayFromBase64)).set("o", Option.some(new Uint8Array([9])))
          // Fresh views have no decoded-value memo, so these reads decode the stored bytes.
          const read = yield* cache.typed(Account).get("a")
          expect(Option.isSome(read)).toBe(true)
          const value = Option.getOrThrow(read)
          expect(value).toBeInstanceOf(Account)
          expect(value).toEqual(account)
          expect(value.label).toBe("#12345678901234567890")
          expect(yield* cache.typed(Schema.DateFromString).get("d")).toEqual(Option.some(new Date(0)))
          expect(yield* cache.typed(Schema.BigInt).get("n")).toEqual(Option.some(-5n))
          expect(yield* cache.typed(Schema.Option(Schema.Uint8ArrayFromBase64)).get("o")).toEqual(
            Option.some(Option.some(new Uint8Array([9])))
          )
          expect((yield* stored(backend, "a"))!.value).toBeInstanceOf(Uint8Array)
        })
      ))

    it.effect("raw bytes are stored as they are", () =>
      withCache((cache, backend) =>
        Effect.gen(function*() {
          yield* cache.set("b", new Uint8Array([1, 2, 3]))
          expect((yield* stored(backend, "b"))!.value).toEqual(new Uint8Array([1, 2, 3]))
          expect(yield* cache.get("b")).toEqual(Option.some(new Uint8Array([1, 2, 3])))
        })
      ))

    it.effect("an entry that no longer decodes is a miss and is deleted", () =>
      withCache((cache, backend) =>
        Effect.gen(function*() {
          yield* cache.set("k", new TextEncoder().encode("{not json"))
          const numbers = cache.typed(Schema.Number)
          expect(yield* numbers.get("k")).toEqual(Option.none())
          expect(yield* stored(backend, "k")).toBeUndefined()
          yield* cache.set("k", new TextEncoder().encode("\"text\""))
          expect(yield* numbers.getOrCompute("k", Effect.succeed(42))).toBe(42)
          expect(yield* numbers.get("k")).toEqual(Option.some(42))
        })
      ))

    it.effect("a hit decodes an entry once and then serves the memoised value", () =>
      withCache((cache, backend) =>
        Effect.gen(function*() {
          let decodes = 0
          const counting: Codec.Codec<string> = {
            id: "counting",
            encode: Codec.string.encode,
            decode: (key, bytes) => Effect.sync(() => decodes++).pipe(Effect.zipRight(Codec.string.decode(key, bytes)))
          }
          const text = cache.withCodec(counting)
          yield* text.set("k", "v")
          for (let i = 0; i < 3; i++) expect(yield* text.getOrCompute("k", Effect.succeed("x"))).toBe("v")
          expect(decodes).toBe(0) // set remembered the value it stored
          // A new entry object (as another process would write it) is decoded once.
          const entry = (yield* stored(backend, "k"))!
          yield* backend.set("k", { ...entry })
          for (let i = 0; i < 3; i++) expect(yield* text.get("k")).toEqual(Option.some("v"))
          expect(decodes).toBe(1)
        })
      ))

    it.effect("each typed view serves its own decoding of one entry, and a copy with other bytes is decoded anew", () =>
      withCache((cache, backend) =>
        Effect.gen(function*() {
          const numbers = cache.typed(Schema.NumberFromString)
          const text = cache.typed(Schema.String)
          yield* numbers.set("n", 42) // stored as the JSON string "42"; `numbers` remembers 42
          for (let i = 0; i < 2; i++) {
            expect(yield* numbers.get("n")).toEqual(Option.some(42))
            expect(yield* text.get("n")).toEqual(Option.some("42"))
            expect(yield* text.getOrCompute("n", Effect.succeed("x"))).toBe("42")
            expect(yield* cache.typed(Schema.NumberFromString).get("n")).toEqual(Option.some(42))
            expect(yield* cache.get("n")).toEqual(Option.some(new TextEncoder().encode("\"42\"")))
          }
          // The remembered value is not a field of the entry: it is neither listed nor copied.
          const entry = (yield* stored(backend, "n"))!
          expect(Object.keys(entry).sort()).toEqual(
            ["createdAt", "expiresAt", "meta", "size", "staleUntil", "tags", "value"].filter((k) => k in entry)
          )
          yield* backend.set("n", { ...entry, value: new TextEncoder().encode("\"7\"") })
          expect(yield* numbers.get("n")).toEqual(Option.some(7))
          expect(yield* numbers.getOrCompute("n", Effect.succeed(0))).toBe(7)
          expect(yield* text.get("n")).toEqual(Option.some("7"))
        })
      ))
  })

  describe("Cache: tags", () => {
    it.effect("a computed value is stored before any caller gets it, so an invalidation right after cannot be overtaken", () =>
      Effect.gen(function*() {
        const inner = makeTestBackend({ sync: false })
        // A backend whose writes take a second (of TestClock time), like a slow remote store.
        const slow: TestBackend = Object.assign(Object.create(inner) as TestBackend, {
          set: (key: string, entry: Parameters<TestBackend["set"]>[1]) =>
            Effect.delay(inner.set(key, entry), "1 second")
        })
        const result = yield* Effect.gen(function*() {
          const cache = yield* Cache.Cache
          const fiber = yield* Effect.fork(cache.getOrCompute("k", Effect.succeed(new Uint8Array([1]))))
          yield* settle
          const beforeWrite = yield* Fiber.poll(fiber)
          yield* TestClock.adjust("1 second")
          const value = yield* Fiber.join(fiber)
          const storedWhenReturned = yield* stored(inner, "k")
          yield* cache.delete("k")
          yield* TestClock.adjust("5 seconds")
          return { beforeWrite, value, storedWhenReturned, afterDelete: yield* stored(inner, "k") }
        }).pipe(Effect.provide(Cache.layer({}).pipe(Layer.provide(testBackendLayer(slow)))))
        expect(Option.isNone(result.beforeWrite)).toBe(true)
        expect([...result.value]).toEqual([1])
        expect(result.storedWhenReturned).toBeDefined()
        expect(result.afterDelete).toBeUndefined()
      }))

    it.effect("invalidateTags removes every entry carrying one of the tags", () =>
      withCache((cache) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          yield* text.set("a", "1", { tags: ["user:1"] })
          yield* text.getOrCompute("b", Effect.succeed("2"), { tags: ["user:1", "team:9"] })
          yield* text.set("c", "3", { tags: ["team:9"] })
          yield* text.set("d", "4")
          expect(yield* cache.invalidateTags(["user:1"])).toBe(2)
          expect(yield* text.get("a")).toEqual(Option.none())
          expect(yield* text.get("b")).toEqual(Option.none())
          expect(yield* text.get("c")).toEqual(Option.some("3"))
          expect(yield* text.get("d")).toEqual(Option.some("4"))
        })
      ))

    it.effect("invalidateTags on a backend without a tag index fails with TagsUnsupported", () =>
      Effect.gen(function*() {
        const backend = { ...makeTestBackend(), tags: undefined }
        const error = yield* Effect.flip(
          Effect.flatMap(Cache.Cache, (cache) => cache.invalidateTags(["t"])).pipe(
            Effect.provide(Cache.layer().pipe(Layer.provide(testBackendLayer(backend))))
          )
        )
        expect(error._tag).toBe("TagsUnsupported")
      }))
  })
})

describe("Cache: backend failures", () => {
  it.effect("a backend that is down falls back to the compute and a failing store does not fail the caller", () =>
    withTestBackend(
      (cache, backend) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          backend.down = true
          expect(yield* text.getOrCompute("k", Effect.succeed("computed"))).toBe("computed")
          const stats = yield* cache.stats
          expect(stats.backendErrors).toBe(2) // the read and the store
          expect(stats.computes).toBe(1)
          // Plain reads and writes report the backend failure as a typed CacheError.
          expect((yield* Effect.flip(text.get("k")))._tag).toBe("BackendUnavailable")
          expect((yield* Effect.flip(text.set("k", "v")))._tag).toBe("BackendUnavailable")
          backend.down = false
          expect(yield* text.getOrCompute("k", Effect.succeed("again"))).toBe("again")
          expect(yield* text.get("k")).toEqual(Option.some("again"))
        }),
      {},
      { sync: false }
    ))

  it.effect("keeps compute errors and backend errors apart", () =>
    withTestBackend(
      (cache, backend) =>
        Effect.gen(function*() {
          const text = cache.typed(Schema.String)
          backend.down = true
          const error = yield* Effect.flip(text.getOrCompute("k", Effect.fail(new AppError({ reason: "x" }))))
          expect(error).toBeInstanceOf(AppError)
        }),
      {},
      { sync: false }
    ))
})

describe("Cache: stats and metrics", () => {
  it.effect("counts hits, misses, stale serves, computes and compute errors, as a value and as metrics", () =>
    withTestBackend((cache) =>
      Effect.gen(function*() {
        const text = cache.typed(Schema.String)
        yield* text.getOrCompute("a", Effect.succeed("1"), { ttl: "1 minute", grace: "1 hour" }) // miss + compute
        yield* text.getOrCompute("a", Effect.succeed("1")) // hit
        yield* text.get("a") // hit
        yield* text.get("zzz") // miss
        yield* Effect.either(text.getOrCompute("e", Effect.fail("bad"))) // miss + compute + error
        yield* TestClock.adjust("2 minutes")
        yield* text.getOrCompute("a", Effect.succeed("2"), { grace: "1 hour" }) // stale
        yield* settle
        const stats = yield* cache.stats
        expect(stats).toEqual({
          name: "stats-test",
          hits: 2,
          misses: 3,
          staleServed: 1,
          computes: 3,
          computeErrors: 1,
          backgroundRefreshes: 1,
          backendErrors: 0,
          evictions: 7
        })
        const value = (metric: typeof Cache.metrics.hits) =>
          Metric.value(metric.pipe(Metric.tagged("cache", "stats-test"))).pipe(Effect.map((s) => s.count))
        expect(yield* value(Cache.metrics.hits)).toBe(2)
        expect(yield* value(Cache.metrics.misses)).toBe(3)
        expect(yield* value(Cache.metrics.staleServed)).toBe(1)
        expect(yield* value(Cache.metrics.computeErrors)).toBe(1)
        const evictions = yield* Metric.value(Cache.metrics.evictions.pipe(Metric.tagged("cache", "stats-test")))
        expect(evictions.value).toBe(7)
      }), { name: "stats-test" }))

  it.effect("on the synchronous hit path the metrics equal the stats after every read, for two caches apart", () =>
    Effect.gen(function*() {
      const counted = (name: string) =>
        Effect.gen(function*() {
          const cache = yield* Cache.Cache
          const text = cache.typed(Schema.String)
          const metric = (m: typeof Cache.metrics.hits) =>
            Metric.value(m.pipe(Metric.tagged("cache", name))).pipe(Effect.map((s) => s.count))
          yield* text.set("k", "v")
          for (let i = 1; i <= 300; i++) {
            yield* text.get("k")
            yield* text.getOrCompute("k", Effect.succeed("x"))
            yield* text.get(`missing-${i}`)
            if (i % 100 === 0) {
              const stats = yield* cache.stats
              expect([stats.hits, stats.misses]).toEqual([2 * i, i])
              expect([yield* metric(Cache.metrics.hits), yield* metric(Cache.metrics.misses)]).toEqual([2 * i, i])
            }
          }
        }).pipe(Effect.provide(Cache.layer({ name }).pipe(Layer.provide(MemoryBackend.layer()))))
      yield* counted("metrics-sync-a")
      yield* counted("metrics-sync-b")
      // Reads through a second layer of the same name add to the same metric (one registry entry
      // per name), while each layer's stats start at zero.
      yield* Effect.gen(function*() {
        const cache = yield* Cache.Cache
        yield* cache.get("nothing")
        expect((yield* cache.stats).misses).toBe(1)
        const misses = yield* Metric.value(Cache.metrics.misses.pipe(Metric.tagged("cache", "metrics-sync-a")))
        expect(misses.count).toBe(301)
      }).pipe(Effect.provide(Cache.layer({ name: "metrics-sync-a" }).pipe(Layer.provide(MemoryBackend.layer()))))
    }))
})

describe("Cache: evictions", () => {
  it.effect("reports the evictions the backend counts", () =>
    runWith(
      MemoryBackend.layer({ maxEntries: 10, sweepInterval: "1 day" }),
      (cache) =>
        Effect.gen(function*() {
          for (let i = 0; i < 50; i++) yield* cache.set(`k${i}`, new Uint8Array([i]))
          const stats = yield* cache.stats
          expect(stats.evictions).toBeGreaterThanOrEqual(40)
          const gauge = yield* Metric.value(Cache.metrics.evictions.pipe(Metric.tagged("cache", "evict-test")))
          expect(gauge.value).toBe(stats.evictions)
        }),
      { name: "evict-test" }
    ))
})

describe("Cache: configuration", () => {
  it.effect("layerConfig reads its defaults from the ConfigProvider", () =>
    Effect.gen(function*() {
      const backend = makeTestBackend()
      const layer = Cache.layerConfig().pipe(
        Layer.provide(testBackendLayer(backend)),
        Layer.provide(
          Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["CACHE_TTL", "3 seconds"], ["CACHE_NAME", "cfg"]])))
        )
      )
      yield* Effect.gen(function*() {
        const cache = yield* Cache.Cache
        expect(cache.name).toBe("cfg")
        yield* cache.set("k", new Uint8Array([1]))
        expect(backend.store.get("k")!.expiresAt - backend.store.get("k")!.createdAt).toBe(3000)
      }).pipe(Effect.provide(layer))
    }))
})
