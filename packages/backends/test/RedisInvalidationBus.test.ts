import { RedisBackend, RedisInvalidationBus } from "@cachekit/backends"
import { CacheEntry, InvalidationBus, MemoryBackend, TieredCache } from "@cachekit/core"
import { describe, expect, inject, it } from "@effect/vitest"
import { Chunk, Clock, Context, Effect, Fiber, Layer, Option, Stream } from "effect"
import { Redis } from "ioredis"
import { startRedis } from "./servers.js"

const port = inject("redisPort")
let counter = 0
const freshChannel = () => `bus-test:${process.pid}:${++counter}`

const rawClient = (p: number) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const c = new Redis({ port: p, host: "127.0.0.1", lazyConnect: true })
      await c.connect()
      return c
    }),
    (c) => Effect.promise(() => c.quit())
  )

/** Polls (real time) until `done` holds, failing the test after `timeoutMillis`. */
const eventually = (done: () => boolean, timeoutMillis = 5000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMillis
    while (!done() && Date.now() < deadline) yield* Effect.sleep("5 millis")
    expect(done()).toBe(true)
  })

const entry = (value: string, ttlMillis: number) =>
  Effect.map(
    Clock.currentTimeMillis,
    (now) => CacheEntry.make({ value: new TextEncoder().encode(value), createdAt: now, expiresAt: now + ttlMillis })
  )

const text = (e: Option.Option<CacheEntry.CacheEntry>) => Option.map(e, (x) => new TextDecoder().decode(x.value))

describe.skipIf(port === 0)("RedisInvalidationBus", () => {
  it.scopedLive("delivers another instance's messages over Pub/Sub and never an instance's own", () =>
    Effect.gen(function*() {
      const channel = freshChannel()
      const a = yield* RedisInvalidationBus.make({ port, channel, instanceId: "A" })
      const b = yield* RedisInvalidationBus.make({ port, channel, instanceId: "B" })
      const atA = yield* Effect.fork(Stream.runCollect(Stream.take(yield* a.subscribe, 1)))
      const atB = yield* Effect.fork(Stream.runCollect(Stream.take(yield* b.subscribe, 2)))
      yield* a.publish({ _tag: "Invalidate", keys: ["k1"] })
      yield* a.publish({ _tag: "InvalidateTags", tags: ["t"], mode: "expire" })
      yield* b.publish({ _tag: "Clear" })
      expect(Chunk.toArray(yield* Fiber.join(atB))).toEqual([
        { _tag: "Received", origin: "A", message: { _tag: "Invalidate", keys: ["k1"] } },
        { _tag: "Received", origin: "A", message: { _tag: "InvalidateTags", tags: ["t"], mode: "expire" } }
      ])
      expect(Chunk.toArray(yield* Fiber.join(atA))).toEqual([
        { _tag: "Received", origin: "B", message: { _tag: "Clear" } }
      ])
    }))

  it.scopedLive("speaks plain JSON on the channel: drops malformed payloads, accepts a foreign publisher's envelope", () =>
    Effect.gen(function*() {
      const channel = freshChannel()
      const b = yield* RedisInvalidationBus.make({ port, channel, instanceId: "B" })
      const events = yield* Effect.fork(Stream.runCollect(Stream.take(yield* b.subscribe, 1)))
      const client = yield* rawClient(port)
      yield* Effect.promise(() => client.publish(channel, "garbage"))
      yield* Effect.promise(() =>
        client.publish(channel, JSON.stringify({ v: 1, origin: "X", message: { _tag: "Nope" } }))
      )
      yield* Effect.promise(() =>
        client.publish(channel, JSON.stringify({ v: 1, origin: "X", message: { _tag: "Update", keys: ["u"] } }))
      )
      expect(Chunk.toArray(yield* Fiber.join(events))).toEqual([
        { _tag: "Received", origin: "X", message: { _tag: "Update", keys: ["u"] } }
      ])
    }))

  it.scopedLive("keeps two TieredCache instances (memory L1 each, shared Redis L2) coherent", () =>
    Effect.gen(function*() {
      const channel = freshChannel()
      const prefix = `${channel}:`
      const instance = Effect.gen(function*() {
        const l1 = yield* MemoryBackend.make({ maxEntries: 100 })
        const ctx = yield* Layer.build(
          TieredCache.layerWithBus([{ backend: l1 }, { backend: yield* RedisBackend.make({ port, prefix }) }]).pipe(
            Layer.provide(RedisInvalidationBus.layer({ port, channel }))
          )
        )
        return { l1, tiered: Context.get(ctx, TieredCache.TieredCache) }
      })
      const a = yield* instance
      const b = yield* instance
      const has = (l1: MemoryBackend.MemoryBackend, key: string) => l1.unsafeGetSync(key, Date.now()) !== undefined

      // seed the shared tier directly (a write through A would broadcast, and that message could
      // reach B after B's read below and rightly drop what B just promoted)
      const seed = yield* RedisBackend.make({ port, prefix })
      yield* seed.set("k", yield* entry("v1", 60_000))
      expect(text(yield* b.tiered.get("k"))).toEqual(Option.some("v1"))
      expect(has(b.l1, "k")).toBe(true)

      yield* a.tiered.backend.set("k", yield* entry("v2", 60_000))
      yield* eventually(() => !has(b.l1, "k"))
      expect(text(yield* b.tiered.get("k"))).toEqual(Option.some("v2"))

      yield* a.tiered.invalidate("k")
      yield* eventually(() => !has(b.l1, "k"))
      expect(yield* b.tiered.get("k")).toEqual(Option.none())
    }))

  it.scopedLive(
    "reports Disconnected and, once resubscribed after a restart, Reconnected; the tiers then clear L1",
    () =>
      Effect.gen(function*() {
        let server = yield* Effect.promise(() => startRedis())
        yield* Effect.addFinalizer(() => Effect.promise(() => server.kill()))
        const serverPort = server.port
        const channel = freshChannel()
        const busLayer = RedisInvalidationBus.layer({ port: serverPort, channel, instanceId: "B" })
        const l1 = yield* MemoryBackend.make({ maxEntries: 100 })
        const l2 = yield* MemoryBackend.make({ maxEntries: 100, name: "shared" })
        const ctx = yield* Layer.build(
          Layer.provideMerge(TieredCache.layerWithBus([{ backend: l1 }, { backend: l2 }]), busLayer)
        )
        const tiered = Context.get(ctx, TieredCache.TieredCache)
        const bus = Context.get(ctx, InvalidationBus.InvalidationBus)
        const events = yield* bus.subscribe
        const seen: Array<string> = []
        yield* events.pipe(Stream.runForEach((e) => Effect.sync(() => seen.push(e._tag))), Effect.forkScoped)

        yield* tiered.set("k", yield* entry("v", 60_000))
        expect(l1.unsafeGetSync("k", Date.now())).toBeDefined()

        yield* Effect.promise(() => server.kill())
        yield* eventually(() => seen.includes("Disconnected"))
        server = yield* Effect.promise(() => startRedis(serverPort))
        yield* eventually(() => seen.includes("Reconnected"), 10_000)
        yield* eventually(() => l1.unsafeGetSync("k", Date.now()) === undefined)
        expect(seen).toEqual(["Disconnected", "Reconnected"])

        // and messages flow again after the reconnect
        const other = yield* RedisInvalidationBus.make({ port: serverPort, channel, instanceId: "A" })
        yield* tiered.get("k") // promotes into L1 again
        expect(l1.unsafeGetSync("k", Date.now())).toBeDefined()
        yield* other.publish({ _tag: "Invalidate", keys: ["k"] })
        yield* eventually(() => l1.unsafeGetSync("k", Date.now()) === undefined)
      }),
    30_000
  )
})
