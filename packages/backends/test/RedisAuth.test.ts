import { RedisBackend, RedisInvalidationBus, RedisLock } from "@cachekit/backends"
import { CacheEntry } from "@cachekit/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Chunk, Clock, Effect, Either, Exit, Fiber, Option, Redacted, Stream } from "effect"
import { Redis } from "ioredis"
import { hasBinary, type ServerProcess, startRedis } from "./servers.js"

// a server of its own: the default user needs a password, and "alice" is an ACL user with her own
let server: ServerProcess | undefined
beforeAll(async () => {
  server = await startRedis(undefined, [
    "--requirepass",
    "default-secret",
    "--user",
    "alice",
    "on",
    ">alice-secret",
    "~*",
    "&*",
    "+@all"
  ])
}, 10_000)
afterAll(() => server?.kill())

const port = () => server!.port
const alice = () => ({ port: port(), username: "alice", password: Redacted.make("alice-secret"), db: 3 })

/** A raw client logged in as the default user on database `db`. */
const raw = (db: number) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const c = new Redis({ port: port(), host: "127.0.0.1", password: "default-secret", db, lazyConnect: true })
      await c.connect()
      return c
    }),
    (c) => Effect.promise(() => c.quit())
  )

describe.skipIf(!hasBinary("redis-server"))("Redis services on a server that requires a login", () => {
  it.scopedLive("RedisBackend logs in with username and Redacted password and writes into the given db", () =>
    Effect.gen(function*() {
      const backend = yield* RedisBackend.make({ ...alice(), prefix: "auth:" })
      const now = yield* Clock.currentTimeMillis
      yield* backend.set(
        "k",
        CacheEntry.make({ value: new TextEncoder().encode("v"), createdAt: now, expiresAt: now + 60_000 })
      )
      expect(Option.isSome(yield* backend.get("k"))).toBe(true)
      const inDb3 = yield* raw(3)
      expect(yield* Effect.promise(() => inDb3.exists("auth:e{k}"))).toBe(1)
      const inDb0 = yield* raw(0)
      expect(yield* Effect.promise(() => inDb0.exists("auth:e{k}"))).toBe(0)
    }))

  it.scopedLive("RedisBackend with a wrong password fails to start with BackendUnavailable", () =>
    Effect.gen(function*() {
      const result = yield* Effect.either(RedisBackend.make({ ...alice(), password: "wrong", prefix: "auth:" }))
      expect(Either.isLeft(result) && result.left._tag).toBe("BackendUnavailable")
    }))

  it.scopedLive("RedisInvalidationBus logs in on both connections and delivers messages", () =>
    Effect.gen(function*() {
      const a = yield* RedisInvalidationBus.make({ ...alice(), channel: "auth:bus", instanceId: "A" })
      const b = yield* RedisInvalidationBus.make({ ...alice(), channel: "auth:bus", instanceId: "B" })
      const atB = yield* Effect.fork(Stream.runCollect(Stream.take(yield* b.subscribe, 1)))
      yield* a.publish({ _tag: "Invalidate", keys: ["k"] })
      expect(Chunk.toArray(yield* Fiber.join(atB))).toEqual([
        { _tag: "Received", origin: "A", message: { _tag: "Invalidate", keys: ["k"] } }
      ])
      const refused = yield* Effect.exit(RedisInvalidationBus.make({ port: port(), channel: "auth:bus" }))
      expect(Exit.isFailure(refused)).toBe(true)
    }))

  it.scopedLive("RedisLock logs in and keeps its keys in the given db", () =>
    Effect.gen(function*() {
      const lock = yield* RedisLock.make({ ...alice(), prefix: "auth:" })
      expect(Option.isSome(yield* lock.tryAcquire("r"))).toBe(true)
      const inDb3 = yield* raw(3)
      expect(yield* Effect.promise(() => inDb3.exists("auth:lock{r}"))).toBe(1)
      const refused = yield* Effect.exit(RedisLock.make({ ...alice(), password: "wrong", prefix: "auth:" }))
      expect(Exit.isFailure(refused)).toBe(true)
    }))
})
