import { RedisStreams } from "@cachekit/backends"
import { describe, expect, inject, it } from "@effect/vitest"
import { Chunk, Context, Effect, Exit, Fiber, Layer, Scope, Stream } from "effect"
import { Redis } from "ioredis"

const port = inject("redisPort")
// the cluster is only started when a *Cluster* test file runs too (see globalSetup); else skipped
const clusterNodes = inject("redisClusterNodes")
let counter = 0
const freshPrefix = () => `streams-test:${process.pid}:${++counter}:`

/** Counts the server's client connections whose name is `name` (CLIENT LIST). */
const connectionsNamed = (name: string) =>
  Effect.acquireUseRelease(
    Effect.promise(async () => {
      const c = new Redis({ port, host: "127.0.0.1", lazyConnect: true })
      await c.connect()
      return c
    }),
    (c) =>
      Effect.promise(async () => {
        const list = (await c.client("LIST")) as string
        return list.split("\n").filter((line) => line.includes(` name=${name} `)).length
      }),
    (c) => Effect.promise(() => c.quit())
  )

const targets = [
  { target: "standalone Redis", options: { port }, skip: port === 0 },
  { target: "Redis Cluster", options: { cluster: clusterNodes }, skip: clusterNodes.length === 0 }
]

describe.each(targets)("RedisStreams on $target", ({ options, skip }) => {
  const make = () => RedisStreams.make({ ...options, prefix: freshPrefix(), commandTimeout: "1 second" })

  it.scopedLive.skipIf(skip)("publishes entries and reads the latest N oldest first", () =>
    Effect.gen(function*() {
      const streams = yield* make()
      const ids: Array<string> = []
      for (let i = 0; i < 5; i++) ids.push(yield* streams.publish("s", { n: String(i), kind: "test" }))
      expect(new Set(ids).size).toBe(5)
      const latest = yield* streams.latest("s", 3)
      expect(latest).toEqual([
        { id: ids[2], fields: { n: "2", kind: "test" } },
        { id: ids[3], fields: { n: "3", kind: "test" } },
        { id: ids[4], fields: { n: "4", kind: "test" } }
      ])
      expect(yield* streams.latest("missing", 3)).toEqual([])
    }))

  it.scopedLive.skipIf(skip)(
    "trims with MAXLEN ~ to about maxLen entries, and keeps everything without it",
    () =>
      Effect.gen(function*() {
        const streams = yield* make()
        yield* Effect.forEach(
          Array.from({ length: 600 }, (_, i) => i),
          (i) => streams.publish("trimmed", { n: String(i) }, { maxLen: 50 }),
          { concurrency: 20, discard: true }
        )
        yield* Effect.forEach(
          Array.from({ length: 600 }, (_, i) => i),
          (i) => streams.publish("untrimmed", { n: String(i) }),
          { concurrency: 20, discard: true }
        )
        const trimmed = yield* streams.length("trimmed")
        // approximate trimming removes whole radix-tree nodes (100 entries by default): never below maxLen
        expect(trimmed).toBeGreaterThanOrEqual(50)
        expect(trimmed).toBeLessThanOrEqual(50 + 100)
        expect(yield* streams.length("untrimmed")).toBe(600)
        // the newest entries are the ones kept
        const [newest] = yield* streams.latest("trimmed", 1)
        expect(newest?.fields).toEqual({ n: expect.any(String) })
      })
  )

  it.scopedLive.skipIf(skip)(
    "a read from $ sees only entries published after it started, in order",
    () =>
      Effect.gen(function*() {
        const streams = yield* make()
        yield* streams.publish("live", { n: "before" })
        const reader = yield* Effect.fork(
          Stream.runCollect(Stream.take(streams.read("live", { block: "200 millis" }), 3))
        )
        // let the reader resolve "$" before publishing
        yield* Effect.sleep("100 millis")
        for (const n of ["a", "b", "c"]) yield* streams.publish("live", { n })
        const got = Chunk.toArray(yield* Fiber.join(reader)).map((e) => e.fields["n"])
        expect(got).toEqual(["a", "b", "c"])
      })
  )

  it.scopedLive.skipIf(skip)(
    "a read from an id replays what follows it, then keeps following",
    () =>
      Effect.gen(function*() {
        const streams = yield* make()
        const first = yield* streams.publish("replay", { n: "1" })
        yield* streams.publish("replay", { n: "2" })
        yield* streams.publish("replay", { n: "3" })
        const reader = yield* Effect.fork(
          Stream.runCollect(Stream.take(streams.read("replay", { from: first, block: "200 millis", count: 1 }), 3))
        )
        yield* Effect.sleep("100 millis")
        yield* streams.publish("replay", { n: "4" })
        const got = Chunk.toArray(yield* Fiber.join(reader)).map((e) => e.fields["n"])
        expect(got).toEqual(["2", "3", "4"])
        const all = yield* Stream.runCollect(Stream.take(streams.read("replay", { from: "0", block: "200 millis" }), 4))
        expect(Chunk.toArray(all).map((e) => e.fields["n"])).toEqual(["1", "2", "3", "4"])
      })
  )

  it.scopedLive.skipIf(skip)(
    "fails with StreamRejected when the key is not a stream, and for an empty entry",
    () =>
      Effect.gen(function*() {
        const prefix = freshPrefix()
        const streams = yield* RedisStreams.make({ ...options, prefix })
        const raw = options.cluster === undefined
          ? new Redis({ port, host: "127.0.0.1" })
          : new Redis.Cluster([...options.cluster])
        yield* Effect.promise(() => raw.set(`${prefix}plain`, "x"))
        yield* Effect.promise(() => raw.quit())
        const publish = yield* Effect.flip(streams.publish("plain", { n: "1" }))
        expect(publish._tag).toBe("StreamRejected")
        expect(publish.message).toMatch(/WRONGTYPE/)
        const read = yield* Effect.flip(Stream.runCollect(streams.read("plain", { from: "0", block: "100 millis" })))
        expect(read._tag).toBe("StreamRejected")
        expect((yield* Effect.flip(streams.publish("s", {})))._tag).toBe("StreamRejected")
      })
  )
})

describe.skipIf(port === 0)("RedisStreams connections", () => {
  const eventuallyCount = (name: string, expected: number) =>
    Effect.gen(function*() {
      // the server drops closed connections asynchronously
      let count = yield* connectionsNamed(name)
      for (let i = 0; i < 50 && count !== expected; i++) {
        yield* Effect.sleep("20 millis")
        count = yield* connectionsNamed(name)
      }
      return count
    })

  it.scopedLive("a blocking read holds its own connection, closed when the reading fiber is interrupted", () =>
    Effect.gen(function*() {
      const name = `streams-reader-${process.pid}-${++counter}`
      const streams = yield* RedisStreams.make({ port, prefix: freshPrefix(), connectionName: name })
      expect(yield* connectionsNamed(name)).toBe(1)
      const fiber = yield* Effect.fork(Stream.runDrain(streams.read("quiet", { block: "300 millis" })))
      expect(yield* eventuallyCount(name, 2)).toBe(2)
      // the shared connection is not blocked by the reader
      yield* streams.publish("other", { n: "1" })
      yield* Fiber.interrupt(fiber)
      expect(yield* eventuallyCount(name, 1)).toBe(1)
    }))

  it.live("closing the layer ends a blocked read (no failure) and closes every connection", () =>
    Effect.gen(function*() {
      const name = `streams-layer-${process.pid}-${++counter}`
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        RedisStreams.layer({ port, prefix: freshPrefix(), connectionName: name }),
        scope
      )
      const streams = Context.get(context, RedisStreams.RedisStreams)
      const fiber = yield* Effect.fork(Stream.runCollect(streams.read("idle", { block: "5 seconds" })))
      expect(yield* eventuallyCount(name, 2)).toBe(2)
      yield* Scope.close(scope, Exit.void)
      const exit = yield* Fiber.await(fiber).pipe(Effect.timeout("1 second"))
      expect(Exit.isSuccess(exit)).toBe(true)
      expect(yield* eventuallyCount(name, 0)).toBe(0)
    }))

  it.live("fails to connect with StreamUnavailable", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(RedisStreams.make({ port: 1, connectTimeout: "300 millis" })))
      expect(error._tag).toBe("StreamUnavailable")
      expect(error.message).toMatch(/cannot connect/)
    }))
})
