import { RedisBackend } from "@cachekit/backends"
import { CacheBackend, CacheEntry } from "@cachekit/core"
import { describe, expect, inject, it } from "@effect/vitest"
import { Clock, ConfigProvider, Context, Effect, Either, Exit, Layer, Option, Schedule, Scope } from "effect"
import { Redis } from "ioredis"
import { freePort, startRedis } from "./servers.js"

const port = inject("redisPort")
let counter = 0
const freshPrefix = () => `redis-test:${process.pid}:${++counter}:`

/** A raw client on the shared server, to look at what the backend wrote. */
const raw = Effect.acquireRelease(
  Effect.promise(async () => {
    const c = new Redis({ port, host: "127.0.0.1", lazyConnect: true })
    await c.connect()
    return c
  }),
  (c) => Effect.promise(() => c.quit())
)

const entry = (value: string, ttl: number | undefined, tags: ReadonlyArray<string> = []) =>
  Effect.map(Clock.currentTimeMillis, (now) =>
    CacheEntry.make({
      value: new TextEncoder().encode(value),
      createdAt: now,
      expiresAt: ttl === undefined ? Number.POSITIVE_INFINITY : now + ttl,
      tags
    }))

/** Redis Cluster's rule: the slot is computed from the first non-empty `{...}` of a key, if any. */
const hashTag = (key: string) => {
  const open = key.indexOf("{")
  const close = open === -1 ? -1 : key.indexOf("}", open + 1)
  return close > open + 1 ? key.slice(open + 1, close) : key
}

const withBackend = <A, E>(prefix: string, body: (backend: CacheBackend.CacheBackend) => Effect.Effect<A, E>) =>
  Effect.flatMap(CacheBackend.CacheBackendTag, body).pipe(Effect.provide(RedisBackend.layer({ port, prefix })))

describe.skipIf(port === 0)("RedisBackend", () => {
  it.scopedLive("stores an entry and its tag links under keys of one hash slot, with PX until staleUntil", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const client = yield* raw
      yield* withBackend(prefix, (b) => Effect.flatMap(entry("v", 60_000, ["red", "blue"]), (e) => b.set("user:1", e)))
      const keys = (yield* Effect.promise(() => client.keys(`${prefix}*`))).sort()
      expect(keys).toEqual([`${prefix}e{user:1}`, `${prefix}l{user:1}`, `${prefix}t{blue}`, `${prefix}t{red}`])
      expect(hashTag(`${prefix}e{user:1}`)).toBe(hashTag(`${prefix}l{user:1}`))
      const entryTtl = yield* Effect.promise(() => client.pttl(`${prefix}e{user:1}`))
      expect(entryTtl).toBeGreaterThan(55_000)
      expect(entryTtl).toBeLessThanOrEqual(60_000)
      expect(yield* Effect.promise(() => client.pttl(`${prefix}l{user:1}`))).toBeGreaterThan(55_000)
      expect(yield* Effect.promise(() => client.pttl(`${prefix}t{red}`))).toBeGreaterThan(55_000)
    }))

  it.scopedLive("tag sets live at least as long as their longest entry and persist for entries without expiry", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const client = yield* raw
      yield* withBackend(prefix, (b) =>
        Effect.gen(function*() {
          yield* b.set("long", yield* entry("v", 600_000, ["t"]))
          yield* b.set("short", yield* entry("v", 10_000, ["t"]))
        }))
      // the shorter entry did not shorten the set's TTL
      expect(yield* Effect.promise(() => client.pttl(`${prefix}t{t}`))).toBeGreaterThan(500_000)
      yield* withBackend(prefix, (b) => Effect.flatMap(entry("v", undefined, ["t"]), (e) => b.set("forever", e)))
      expect(yield* Effect.promise(() => client.pttl(`${prefix}t{t}`))).toBe(-1)
      expect(yield* Effect.promise(() => client.pttl(`${prefix}e{forever}`))).toBe(-1)
    }))

  it.scopedLive("an entry that does not decode is a miss and is deleted", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const client = yield* raw
      yield* Effect.promise(() => client.set(`${prefix}e{bad}`, Buffer.from([0x43, 0x4b, 9, 0, 0])))
      const got = yield* withBackend(prefix, (b) => b.get("bad"))
      expect(Option.isNone(got)).toBe(true)
      expect(yield* Effect.promise(() => client.exists(`${prefix}e{bad}`))).toBe(0)
    }))

  it.scopedLive("unsafeGetPromise deletes an entry that does not decode too, and answers a miss", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const client = yield* raw
      yield* Effect.promise(() => client.set(`${prefix}e{bad}`, Buffer.from([0x43, 0x4b, 9, 0, 0])))
      const got = yield* withBackend(
        prefix,
        (b) => Effect.clockWith((clock) => Effect.promise(() => b.unsafeGetPromise!("bad", clock)))
      )
      expect(got).toBeUndefined()
      expect(yield* Effect.promise(() => client.exists(`${prefix}e{bad}`))).toBe(0)
    }))

  it.scopedLive("clear deletes only keys inside its prefix", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const client = yield* raw
      yield* Effect.promise(() => client.set(`${prefix.slice(0, -1)}x:foreign`, "keep"))
      yield* Effect.promise(() => client.set(`${prefix}*literal-glob-prefix`, "x"))
      const other = `${prefix}other:`
      yield* withBackend(other, (b) => Effect.flatMap(entry("v", 60_000), (e) => b.set("k", e)))
      yield* withBackend(`${prefix}mine:`, (b) =>
        Effect.gen(function*() {
          for (const k of ["a", "b", "c"]) yield* b.set(k, yield* entry(k, 60_000, ["t"]))
          yield* b.clear
        }))
      expect(yield* Effect.promise(() => client.keys(`${prefix}mine:*`))).toEqual([])
      expect(yield* Effect.promise(() => client.get(`${prefix.slice(0, -1)}x:foreign`))).toBe("keep")
      expect(yield* Effect.promise(() => client.exists(`${other}e{k}`))).toBe(1)
    }))

  it.live("a refused connection at start fails with BackendUnavailable saying what to do", () =>
    Effect.gen(function*() {
      const unused = yield* Effect.promise(() => freePort())
      const exit = yield* Effect.exit(Layer.build(RedisBackend.layer({ port: unused })).pipe(Effect.scoped))
      expect(Exit.isFailure(exit)).toBe(true)
      const error = Exit.isFailure(exit) ? exit.cause : undefined
      const text = String(error)
      expect(text).toContain("BackendUnavailable")
      expect(text).toContain(
        `Redis at 127.0.0.1:${unused} refused the connection; set CACHEKIT_REDIS_URL or start redis-server`
      )
    }))

  it.scopedLive("a command Redis does not answer in time fails with BackendTimeout", () =>
    Effect.gen(function*() {
      const client = yield* raw
      const prefix = freshPrefix()
      yield* withBackend(prefix, (b) => Effect.flatMap(entry("v", 60_000), (e) => b.set("k", e)))
      const result = yield* Effect.gen(function*() {
        const backend = yield* CacheBackend.CacheBackendTag
        // CLIENT PAUSE stops the server answering other clients for 600 ms
        yield* Effect.promise(() => client.call("CLIENT", "PAUSE", "600", "ALL"))
        const viaGet = yield* Effect.either(backend.get("k"))
        // the Promise read (TieredCache's L2 path) is bounded by the same command timeout, typed alike
        const viaPromise = yield* Effect.clockWith((clock) =>
          Effect.promise(() =>
            backend.unsafeGetPromise!("k", clock).then(() => "answered", (error: { _tag: string }) => error._tag)
          )
        )
        return { viaGet, viaPromise }
      }).pipe(Effect.provide(RedisBackend.layer({ port, prefix, commandTimeout: "150 millis" })))
      expect(Either.isLeft(result.viaGet) && result.viaGet.left._tag).toBe("BackendTimeout")
      expect(result.viaPromise).toBe("BackendTimeout")
      yield* Effect.sleep("700 millis")
    }))

  it.live("layerConfig reads the URL and prefix through Config", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const provider = ConfigProvider.fromMap(
        new Map([["CACHEKIT_REDIS_URL", `redis://127.0.0.1:${port}`], ["CACHEKIT_REDIS_PREFIX", prefix]])
      )
      const got = yield* Effect.gen(function*() {
        const backend = yield* CacheBackend.CacheBackendTag
        yield* backend.set("k", yield* entry("via config", 60_000))
        return yield* backend.get("k")
      }).pipe(Effect.provide(RedisBackend.layerConfig()), Effect.withConfigProvider(provider))
      expect(Option.map(got, (e) => new TextDecoder().decode(e.value))).toEqual(Option.some("via config"))
      const seen = yield* Effect.scoped(Effect.flatMap(raw, (c) => Effect.promise(() => c.exists(`${prefix}e{k}`))))
      expect(seen).toBe(1)
    }))
})

describe.skipIf(port === 0)("RedisBackend when its server dies and comes back", () => {
  it.live(
    "fails typed while Redis is down, recovers after restart, and leaks no connection",
    () =>
      Effect.gen(function*() {
        let server = yield* Effect.promise(() => startRedis())
        const serverPort = server.port
        const connections = (c: Redis) =>
          Effect.promise(async () => {
            const list = (await c.call("CLIENT", "LIST")) as string
            return list.trim().split("\n").filter((line) => line.length > 0).length - 1 // minus the probe
          })
        const scope = yield* Scope.make()
        const backend = yield* Layer.buildWithScope(RedisBackend.layer({ port: serverPort, prefix: "fault:" }), scope)
          .pipe(Effect.map(Context.get(CacheBackend.CacheBackendTag)))
        yield* backend.set("k", yield* entry("before", 60_000))

        yield* Effect.promise(() => server.kill())
        const startedAt = Date.now()
        const down = yield* Effect.either(backend.get("k"))
        expect(Either.isLeft(down) && down.left._tag).toBe("BackendUnavailable")
        const downViaPromise = yield* Effect.clockWith((clock) =>
          Effect.promise(() =>
            backend.unsafeGetPromise!("k", clock).then(() => "answered", (error: { _tag: string }) => error._tag)
          )
        )
        expect(downViaPromise).toBe("BackendUnavailable")
        // it failed fast instead of queueing until the server came back
        expect(Date.now() - startedAt).toBeLessThan(1500)
        const writeDown = yield* Effect.either(Effect.flatMap(entry("during", 60_000), (e) => backend.set("k2", e)))
        expect(Either.isLeft(writeDown) ? writeDown.left._tag : "succeeded").toBe("BackendUnavailable")
        expect((yield* backend.health).status).toBe("down")

        server = yield* Effect.promise(() => startRedis(serverPort))
        // the client reconnects on its own (backoff up to 1 s); the data is gone with the old process
        const after = yield* backend.get("k").pipe(
          Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo("5 seconds")))
        )
        expect(Option.isNone(after)).toBe(true)
        yield* backend.set("k", yield* entry("after", 60_000))
        expect(Option.map(yield* backend.get("k"), (e) => new TextDecoder().decode(e.value))).toEqual(
          Option.some("after")
        )
        expect((yield* backend.health).status).toBe("up")

        const probe = new Redis({ port: serverPort, host: "127.0.0.1" })
        expect(yield* connections(probe)).toBe(1)
        yield* Scope.close(scope, Exit.void)
        // the backend's connection is gone once its scope is closed
        yield* Effect.sleep("50 millis")
        expect(yield* connections(probe)).toBe(0)
        yield* Effect.promise(() => probe.quit())
        yield* Effect.promise(() => server.kill())
      }),
    20_000
  )
})
