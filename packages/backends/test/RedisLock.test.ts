import { RedisLock } from "@cachekit/backends"
import { describe, expect, inject, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Option } from "effect"

const port = inject("redisPort")
// the cluster is only started when a *Cluster* test file runs too (see globalSetup); else skipped
const clusterNodes = inject("redisClusterNodes")
let counter = 0
const freshPrefix = () => `lock-test:${process.pid}:${++counter}:`

const targets = [
  { target: "standalone Redis", options: { port }, skip: port === 0 },
  { target: "Redis Cluster", options: { cluster: clusterNodes }, skip: clusterNodes.length === 0 }
]

describe.each(targets)("RedisLock on $target", ({ options, skip }) => {
  const make = (prefix = freshPrefix()) => RedisLock.make({ ...options, prefix, ttl: "2 seconds" })

  it.scopedLive.skipIf(skip)(
    "grants a resource to one holder at a time and frees it on release",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const a = yield* make(prefix)
        const b = yield* make(prefix)
        const lease = yield* a.tryAcquire("r")
        expect(Option.isSome(lease)).toBe(true)
        expect(Option.isNone(yield* b.tryAcquire("r"))).toBe(true)
        expect(Option.isSome(yield* b.tryAcquire("other"))).toBe(true)
        expect(yield* a.release(Option.getOrThrow(lease))).toBe(true)
        expect(Option.isSome(yield* b.tryAcquire("r"))).toBe(true)
      })
  )

  it.scopedLive.skipIf(skip)(
    "never releases or extends a lock that expired and was taken by someone else",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const a = yield* make(prefix)
        const b = yield* make(prefix)
        const old = Option.getOrThrow(yield* a.tryAcquire("r", "50 millis"))
        yield* Effect.sleep("120 millis")
        const current = Option.getOrThrow(yield* b.tryAcquire("r"))
        expect(yield* a.release(old)).toBe(false)
        expect(yield* a.extend(old, "10 seconds")).toBe(false)
        // b still holds it
        expect(Option.isNone(yield* a.tryAcquire("r"))).toBe(true)
        expect(yield* b.release(current)).toBe(true)
      })
  )

  it.scopedLive.skipIf(skip)("extend keeps a held lock past its first TTL", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const a = yield* make(prefix)
      const b = yield* make(prefix)
      const lease = Option.getOrThrow(yield* a.tryAcquire("r", "150 millis"))
      yield* Effect.sleep("80 millis")
      expect(yield* a.extend(lease, "300 millis")).toBe(true)
      yield* Effect.sleep("120 millis")
      // 200 ms after taking it, past the first 150 ms TTL: still held
      expect(Option.isNone(yield* b.tryAcquire("r"))).toBe(true)
    }))

  it.scopedLive.skipIf(skip)(
    "acquire waits for a release, and gives up with LockNotAcquired after `wait`",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const a = yield* make(prefix)
        const b = yield* make(prefix)
        const lease = Option.getOrThrow(yield* a.tryAcquire("r"))
        const error = yield* Effect.flip(b.acquire("r", { wait: "100 millis", retryEvery: "20 millis" }))
        expect(error._tag).toBe("LockNotAcquired")
        const waiting = yield* Effect.fork(b.acquire("r", { wait: "1 second", retryEvery: "20 millis" }))
        yield* Effect.sleep("100 millis")
        yield* a.release(lease)
        const got = yield* Fiber.join(waiting)
        expect(got.resource).toBe("r")
      })
  )

  it.scopedLive.skipIf(skip)(
    "withLock extends the lock while its effect runs and releases it after, even on failure",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const a = yield* make(prefix)
        const b = yield* make(prefix)
        const work = Effect.gen(function*() {
          // twice the TTL: only the keep-alive keeps b out
          yield* Effect.sleep("300 millis")
          expect(Option.isNone(yield* b.tryAcquire("r"))).toBe(true)
          return "done"
        })
        expect(yield* a.withLock("r", work, { ttl: "150 millis" })).toBe("done")
        const again = Option.getOrThrow(yield* b.tryAcquire("r"))
        yield* b.release(again)
        const failed = yield* Effect.exit(a.withLock("r", Effect.fail("boom" as const)))
        expect(failed).toEqual(Exit.fail("boom"))
        expect(Option.isSome(yield* b.tryAcquire("r"))).toBe(true)
      })
  )

  it.scopedLive.skipIf(skip)("an interrupted withLock releases the lock", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const a = yield* make(prefix)
      const b = yield* make(prefix)
      const fiber = yield* Effect.fork(a.withLock("r", Effect.never))
      yield* Effect.sleep("50 millis")
      expect(Option.isNone(yield* b.tryAcquire("r"))).toBe(true)
      yield* Fiber.interrupt(fiber)
      expect(Option.isSome(yield* b.tryAcquire("r"))).toBe(true)
    }))
})

describe("RedisLock connection", () => {
  it.live("fails with LockUnavailable when Redis cannot be reached", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(RedisLock.make({ port: 1, connectTimeout: "300 millis" })))
      expect(error._tag).toBe("LockUnavailable")
      expect(error.message).toMatch(/cannot connect/)
    }))
})
