import { RedisBackend, RedisLock, RedisSingleFlight } from "@cachekit/backends"
import { Cache, Codec } from "@cachekit/core"
import { describe, expect, inject, it } from "@effect/vitest"
import { Context, Deferred, Effect, Fiber, Layer, Option } from "effect"
import { startRedis } from "./servers.js"

/** `compute` that first signals `started`: a flight's compute runs only once its lock is held. */
const signalling = <A, E>(compute: Effect.Effect<A, E>) =>
  Effect.map(Deferred.make<void>(), (started) => ({
    started: Deferred.await(started),
    compute: Effect.zipRight(Deferred.succeed(started, undefined), compute)
  }))

const port = inject("redisPort")
// the cluster is only started when a *Cluster* test file runs too (see globalSetup); else skipped
const clusterNodes = inject("redisClusterNodes")
let counter = 0
const freshPrefix = () => `sf-test:${process.pid}:${++counter}:`
const text = (s: string) => new TextEncoder().encode(s)
const untext = (b: Uint8Array) => new TextDecoder().decode(b)

const targets = [
  { target: "standalone Redis", options: { port }, skip: port === 0 },
  { target: "Redis Cluster", options: { cluster: clusterNodes }, skip: clusterNodes.length === 0 }
]

/**
 * One call each on `key`, so that the connection to the node serving its slot is up (a cluster
 * client opens node connections lazily; a slow first connect would make a caller arrive after the
 * flight it should join). The handoff it leaves is never served to the test's calls: they did not
 * see that flight.
 */
const warmUp = (key: string, ...instances: Array<RedisSingleFlight.RedisSingleFlight>) =>
  Effect.forEach(instances, (i) => i.wrap(key, Effect.succeed(text("warm-up"))), { discard: true })

// independent prefixes per test, so the cases run concurrently (most of their time is waiting)
describe.concurrent.each(targets)("RedisSingleFlight on $target", ({ options, skip }) => {
  /** One "instance": its own connections, sharing the keyspace (prefix) with the others. */
  const instance = (prefix: string, extra: Partial<RedisSingleFlight.Options> = {}) =>
    RedisSingleFlight.make({ ...options, prefix, lockTtl: "1 second", pollInterval: "50 millis", ...extra })

  it.scopedLive.skipIf(skip)(
    "two instances with 50 concurrent misses each through Cache run one compute",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        let computes = 0
        const instanceLayer = Layer.merge(
          Cache.layer({ ttl: "1 minute" }).pipe(Layer.provide(RedisBackend.layer({ ...options, prefix }))),
          RedisSingleFlight.layer({ ...options, prefix, lockTtl: "1 second", pollInterval: "50 millis" })
        )
        const a = yield* Layer.build(instanceLayer)
        const b = yield* Layer.build(instanceLayer)
        yield* warmUp(
          "hot",
          Context.get(a, RedisSingleFlight.RedisSingleFlight),
          Context.get(b, RedisSingleFlight.RedisSingleFlight)
        )
        const misses = (ctx: Context.Context<Cache.Cache | RedisSingleFlight.RedisSingleFlightTag>) =>
          Effect.forEach(Array.from({ length: 50 }), () =>
            Effect.gen(function*() {
              const cache = yield* Cache.Cache
              const flight = yield* RedisSingleFlight.RedisSingleFlight
              const compute = Effect.sync(() => ++computes).pipe(
                Effect.delay("300 millis"),
                Effect.map((n) => text(`value ${n}`))
              )
              return untext(yield* cache.getOrCompute("hot", flight.wrap("hot", compute)))
            }).pipe(Effect.provide(ctx)), { concurrency: "unbounded" })
        const [fromA, fromB] = yield* Effect.all([misses(a), misses(b)], { concurrency: 2 })
        expect(computes).toBe(1)
        expect(new Set([...fromA, ...fromB])).toEqual(new Set(["value 1"]))
        // and both caches now hold it
        const cached = yield* Effect.provide(Effect.flatMap(Cache.Cache, (c) => c.get("hot")), b)
        expect(Option.map(cached, untext)).toEqual(Option.some("value 1"))
      })
  )

  it.scopedLive.skipIf(skip)(
    "coalesces bare wrap calls across instances too (no Cache in front)",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const a = yield* instance(prefix)
        const b = yield* instance(prefix)
        // the first command on a cluster node opens its connection: do that before the race
        yield* warmUp("k", a, b)
        let computes = 0
        const compute = Effect.sync(() => ++computes).pipe(Effect.delay("300 millis"), Effect.map(String))
        const calls = [a, b].flatMap((i) => Array.from({ length: 10 }, () => i.wrap("k", compute, Codec.string)))
        const results = yield* Effect.all(calls, { concurrency: "unbounded" })
        expect(computes).toBe(1)
        expect(new Set(results)).toEqual(new Set(["1"]))
      })
  )

  it.scopedLive.skipIf(skip)(
    "keeps the lock of a compute that runs longer than lockTtl, so nobody takes over",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        // the compute outlives the TTL 2.5 times over; a TTL under 1 s lets a loaded machine's stalls expire it
        const a = yield* instance(prefix, { lockTtl: "1 second" })
        const b = yield* instance(prefix, { lockTtl: "1 second" })
        yield* warmUp("k", a, b)
        let computes = 0
        const slow = Effect.sync(() => text(`slow ${++computes}`)).pipe(Effect.delay("2500 millis"))
        const first = yield* signalling(slow)
        const holder = yield* Effect.fork(a.wrap("k", first.compute))
        yield* first.started
        expect(untext(yield* b.wrap("k", slow))).toBe("slow 1")
        expect(untext(yield* Fiber.join(holder))).toBe("slow 1")
        expect(computes).toBe(1)
      })
  )

  it.scopedLive.skipIf(skip)(
    "wakes waiters with the holder's Pub/Sub message, not only by polling",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        // polling every 10 s: only the message can end the wait in time
        const a = yield* instance(prefix, { pollInterval: "10 seconds" })
        const b = yield* instance(prefix, { pollInterval: "10 seconds" })
        yield* warmUp("k", a, b)
        const first = yield* signalling(Effect.succeed(text("from a")).pipe(Effect.delay("200 millis")))
        const holder = yield* Effect.fork(a.wrap("k", first.compute))
        yield* first.started
        const started = Date.now()
        expect(untext(yield* b.wrap("k", Effect.succeed(text("from b"))))).toBe("from a")
        expect(Date.now() - started).toBeLessThan(1000)
        yield* Fiber.join(holder)
      })
  )

  it.scopedLive.skipIf(skip)(
    "a holder that died (lock never released) is replaced by a waiter after the lock TTL",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const b = yield* instance(prefix, { lockTtl: "400 millis" })
        yield* warmUp("k", b)
        // the dead instance: it took the single-flight lock of "k" and will never release or extend it
        const dead = yield* RedisLock.make({ ...options, prefix: `${prefix}sf:` })
        expect(Option.isSome(yield* dead.tryAcquire("k", "400 millis"))).toBe(true)
        let computes = 0
        const started = Date.now()
        const value = yield* b.wrap("k", Effect.sync(() => text(`computed ${++computes}`)))
        const waited = Date.now() - started
        expect(untext(value)).toBe("computed 1")
        expect(waited).toBeGreaterThanOrEqual(300)
        expect(waited).toBeLessThan(1500)
      })
  )

  it.scopedLive.skipIf(skip)(
    "an interrupted holder frees the lock at once: a waiter computes well before the TTL",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const a = yield* instance(prefix, { lockTtl: "5 seconds" })
        const b = yield* instance(prefix, { lockTtl: "5 seconds" })
        const first = yield* signalling(Effect.never)
        const holder = yield* Effect.fork(a.wrap("k", first.compute))
        yield* first.started
        const waiter = yield* Effect.fork(b.wrap("k", Effect.succeed(text("from b"))))
        yield* Effect.sleep("100 millis")
        // still waiting for a
        expect(Option.isNone(yield* Fiber.poll(waiter))).toBe(true)
        const started = Date.now()
        yield* Fiber.interrupt(holder)
        expect(untext(yield* Fiber.join(waiter))).toBe("from b")
        expect(Date.now() - started).toBeLessThan(1000)
      })
  )

  it.scopedLive.skipIf(skip)(
    "a failing holder fails alone; a waiter computes for itself",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const a = yield* instance(prefix)
        const b = yield* instance(prefix)
        const first = yield* signalling(Effect.fail("origin down" as const).pipe(Effect.delay("150 millis")))
        const holder = yield* Effect.fork(a.wrap("k", first.compute))
        yield* first.started
        const fromB = yield* b.wrap("k", Effect.succeed(text("from b")))
        expect(untext(fromB)).toBe("from b")
        expect(yield* Effect.flip(Fiber.join(holder))).toBe("origin down")
      })
  )

  it.scopedLive.skipIf(skip)("a waiter computes by itself once waitTimeout is over", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const a = yield* instance(prefix)
      const b = yield* instance(prefix, { waitTimeout: "200 millis" })
      const first = yield* signalling(Effect.succeed(text("slow")).pipe(Effect.delay("4 seconds")))
      yield* Effect.fork(a.wrap("k", first.compute))
      yield* first.started
      const started = Date.now()
      expect(untext(yield* b.wrap("k", Effect.succeed(text("impatient"))))).toBe("impatient")
      // well before the holder's 4 s, with room for a loaded machine
      expect(Date.now() - started).toBeLessThan(2500)
    }))

  it.scopedLive.skipIf(skip)(
    "never hands over a result from a flight that ended before the caller came",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const a = yield* instance(prefix)
        const b = yield* instance(prefix)
        expect(untext(yield* a.wrap("k", Effect.succeed(text("v1"))))).toBe("v1")
        // v1 is still in the handoff key, but b did not see that flight: it may predate an invalidation
        expect(untext(yield* b.wrap("k", Effect.succeed(text("v2"))))).toBe("v2")
      })
  )
})

describe.skipIf(port === 0)("RedisSingleFlight without Redis", () => {
  it.scopedLive("computes alone when Redis goes away", () =>
    Effect.gen(function*() {
      const server = yield* Effect.acquireRelease(Effect.promise(() => startRedis()), (s) => Effect.promise(s.kill))
      const flight = yield* RedisSingleFlight.make({ port: server.port, commandTimeout: "300 millis" })
      yield* Effect.promise(server.kill)
      expect(untext(yield* flight.wrap("k", Effect.succeed(text("computed anyway"))))).toBe("computed anyway")
    }))

  it.live("fails to connect with LockUnavailable", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(RedisSingleFlight.make({ port: 1, connectTimeout: "300 millis" })))
      expect(error._tag).toBe("LockUnavailable")
    }))
})
