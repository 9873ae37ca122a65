import { InvalidationBus } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Either, Fiber, PubSub, Stream } from "effect"

const messages: ReadonlyArray<InvalidationBus.Message> = [
  { _tag: "Invalidate", keys: ["a", "b"] },
  { _tag: "Update", keys: ["c"] },
  { _tag: "InvalidateTags", tags: ["t"], mode: "expire" },
  { _tag: "InvalidatePattern", pattern: "user:*" },
  { _tag: "Clear" }
]

describe("InvalidationBus (memory)", () => {
  it.scoped("delivers every message kind to the other instances with the origin id, never to the sender", () =>
    Effect.gen(function*() {
      const hub = yield* InvalidationBus.makeMemoryHub()
      const a = InvalidationBus.makeMemory(hub, { instanceId: "A" })
      const b = InvalidationBus.makeMemory(hub, { instanceId: "B" })
      const atA = yield* Effect.fork(Stream.runCollect(Stream.take(yield* a.subscribe, 1)))
      const atB = yield* Effect.fork(Stream.runCollect(Stream.take(yield* b.subscribe, messages.length)))
      for (const m of messages) yield* a.publish(m)
      yield* b.publish({ _tag: "Clear" })
      expect(Chunk.toArray(yield* Fiber.join(atB))).toEqual(
        messages.map((message) => ({ _tag: "Received", origin: "A", message }))
      )
      // A only ever sees B's message
      expect(Chunk.toArray(yield* Fiber.join(atA))).toEqual([{
        _tag: "Received",
        origin: "B",
        message: { _tag: "Clear" }
      }])
    }))

  it.scoped("drops a malformed payload and passes connection events through", () =>
    Effect.gen(function*() {
      const hub = yield* InvalidationBus.makeMemoryHub()
      const b = InvalidationBus.makeMemory(hub, { instanceId: "B" })
      const events = yield* Effect.fork(Stream.runCollect(Stream.take(yield* b.subscribe, 3)))
      yield* PubSub.publish(hub.pubsub, {
        _tag: "Payload",
        text: "{\"v\":1,\"origin\":\"A\",\"message\":{\"_tag\":\"Nope\"}}"
      })
      yield* hub.signal("Disconnected")
      yield* hub.signal("Reconnected")
      yield* InvalidationBus.makeMemory(hub, { instanceId: "A" }).publish({ _tag: "Clear" })
      expect(Chunk.toArray(yield* Fiber.join(events)).map((e) => e._tag)).toEqual([
        "Disconnected",
        "Reconnected",
        "Received"
      ])
    }))

  it("encodes messages as versioned JSON and rejects other versions", () => {
    const text = Either.getOrThrow(InvalidationBus.encodeEnvelope("A", { _tag: "Invalidate", keys: ["k"] }))
    expect(JSON.parse(text)).toEqual({ v: 1, origin: "A", message: { _tag: "Invalidate", keys: ["k"] } })
    expect(Either.isLeft(InvalidationBus.decodeEnvelope(text.replace("\"v\":1", "\"v\":2")))).toBe(true)
    expect(Either.isLeft(InvalidationBus.decodeEnvelope("not json"))).toBe(true)
  })

  it.scoped("gives each layerMemory() its own instance id", () =>
    Effect.gen(function*() {
      const hub = yield* InvalidationBus.makeMemoryHub()
      const ids = yield* Effect.all([
        Effect.provide(InvalidationBus.InvalidationBus, InvalidationBus.layerMemory()),
        Effect.provide(InvalidationBus.InvalidationBus, InvalidationBus.layerMemory())
      ]).pipe(Effect.provideService(InvalidationBus.MemoryHub, hub))
      expect(ids[0].instanceId).not.toBe(ids[1].instanceId)
    }))
})
