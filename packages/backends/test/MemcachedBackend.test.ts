import { MemcachedBackend } from "@cachekit/backends"
import { CacheBackend, CacheEntry } from "@cachekit/core"
import { describe, expect, inject, it } from "@effect/vitest"
import { Clock, Effect, Either, Option } from "effect"
import memjs from "memjs"
import * as HashRing from "../src/internal/hashRing.js"
import { startMemcached } from "./servers.js"

const port = inject("memcachedPorts")[2] ?? 0
const address = `127.0.0.1:${port}`
let counter = 0
const freshPrefix = () => `mc-test:${++counter}:`

const raw = Effect.acquireRelease(
  Effect.sync(() => memjs.Client.create(address, { logger: { log: () => {} } })),
  (c) => Effect.sync(() => c.close())
)

const entry = (value: string | Uint8Array, ttlMillis: number | undefined) =>
  Effect.map(Clock.currentTimeMillis, (now) =>
    CacheEntry.make({
      value: typeof value === "string" ? new TextEncoder().encode(value) : value,
      createdAt: now,
      expiresAt: ttlMillis === undefined ? Number.POSITIVE_INFINITY : now + ttlMillis
    }))

const text = (e: Option.Option<CacheEntry.CacheEntry>) => Option.map(e, (x) => new TextDecoder().decode(x.value))

const withBackend = <A, E>(
  options: MemcachedBackend.Options,
  body: (backend: CacheBackend.CacheBackend) => Effect.Effect<A, E>
) => Effect.flatMap(CacheBackend.CacheBackendTag, body).pipe(Effect.provide(MemcachedBackend.layer(options)))

describe("Memcached expiration", () => {
  it("sends TTLs up to 30 days as seconds, rounded up", () => {
    expect(MemcachedBackend.expiration(undefined, 1_700_000_000_000)).toBe(0)
    expect(MemcachedBackend.expiration(1, 1_700_000_000_000)).toBe(1)
    expect(MemcachedBackend.expiration(1500, 1_700_000_000_000)).toBe(2)
    expect(MemcachedBackend.expiration(30 * 86_400_000, 1_700_000_000_000)).toBe(2_592_000)
  })

  it("sends TTLs over 30 days as an absolute unix time", () => {
    expect(MemcachedBackend.expiration(31 * 86_400_000, 1_700_000_000_000)).toBe(1_700_000_000 + 31 * 86_400)
  })
})

describe("Memcached storage keys", () => {
  it("keeps printable short keys and digests long, spaced, control and non-ASCII ones", () => {
    expect(MemcachedBackend.storageKey("p:", "user:1")).toBe("p:user:1")
    for (const k of ["x".repeat(300), "a b", "tab\t", "ключ"]) {
      const stored = MemcachedBackend.storageKey("p:", k)
      expect(stored).toMatch(/^p:#[A-Za-z0-9_-]{43}$/)
    }
    expect(MemcachedBackend.storageKey("p:", "x".repeat(300) + "a")).not.toBe(
      MemcachedBackend.storageKey("p:", "x".repeat(300) + "b")
    )
  })
})

describe("HashRing", () => {
  const keys = Array.from({ length: 5000 }, (_, i) => `key:${i}`)

  it("spreads keys evenly over the servers", () => {
    const ring = HashRing.make(["a:1", "b:1", "c:1"], (s) => s)
    const counts = new Map<string, number>()
    for (const k of keys) counts.set(ring.locate(k), (counts.get(ring.locate(k)) ?? 0) + 1)
    for (const s of ["a:1", "b:1", "c:1"]) {
      expect(counts.get(s)! / keys.length).toBeGreaterThan(0.25)
      expect(counts.get(s)! / keys.length).toBeLessThan(0.42)
    }
  })

  it("moves only the removed server's keys when a server leaves", () => {
    const before = HashRing.make(["a:1", "b:1", "c:1"], (s) => s)
    const after = HashRing.make(["a:1", "b:1"], (s) => s)
    for (const k of keys) {
      const owner = before.locate(k)
      if (owner !== "c:1") expect(after.locate(k)).toBe(owner)
    }
  })
})

describe.skipIf(port === 0)("MemcachedBackend", () => {
  it.scopedLive("keeps an entry with a 40-day TTL (sent as absolute time, not expired at once)", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const got = yield* withBackend({ servers: [address], prefix }, (b) =>
        Effect.gen(function*() {
          yield* b.set("long-lived", yield* entry("v", 40 * 86_400_000))
          return yield* b.get("long-lived")
        }))
      expect(text(got)).toEqual(Option.some("v"))
      const client = yield* raw
      const stored = yield* Effect.promise(() => client.get(`${prefix}long-lived`))
      expect(stored.value).not.toBeNull()
    }))

  it.scopedLive("the server itself drops an entry after its TTL", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      yield* withBackend(
        { servers: [address], prefix },
        (b) => Effect.flatMap(entry("v", 900), (e) => b.set("short", e))
      )
      const client = yield* raw
      expect((yield* Effect.promise(() => client.get(`${prefix}short`))).value).not.toBeNull()
      yield* Effect.sleep("2100 millis")
      expect((yield* Effect.promise(() => client.get(`${prefix}short`))).value).toBeNull()
    }), 10_000)

  it.scopedLive("stores a long key under its digest and reads it back", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const key = "k".repeat(400) + " with spaces"
      const got = yield* withBackend({ servers: [address], prefix }, (b) =>
        Effect.gen(function*() {
          yield* b.set(key, yield* entry("long", 60_000))
          yield* b.set("k".repeat(400), yield* entry("other", 60_000))
          return yield* b.get(key)
        }))
      expect(text(got)).toEqual(Option.some("long"))
      const client = yield* raw
      const stored = yield* Effect.promise(() => client.get(MemcachedBackend.storageKey(prefix, key)))
      expect(stored.value).not.toBeNull()
    }))

  it.live("refuses an entry over maxEntrySize (default under memcached's 1 MiB items) with EntryTooLarge", () =>
    withBackend({ servers: [address], prefix: freshPrefix() }, (b) =>
      Effect.gen(function*() {
        const result = yield* Effect.either(
          Effect.flatMap(entry(new Uint8Array(1_100_000), 60_000), (e) => b.set("big", e))
        )
        expect(Either.isLeft(result) && result.left._tag).toBe("EntryTooLarge")
        expect(b.maxEntrySize).toBe(1_000_000)
      })))

  it.scopedLive("an entry that does not decode is a miss and is deleted", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const client = yield* raw
      yield* Effect.promise(() => client.set(`${prefix}bad`, Buffer.from("not an entry"), {}))
      const got = yield* withBackend({ servers: [address], prefix }, (b) => b.get("bad"))
      expect(Option.isNone(got)).toBe(true)
      expect((yield* Effect.promise(() => client.get(`${prefix}bad`))).value).toBeNull()
    }))
})

describe.skipIf(port === 0)("MemcachedBackend with one of two servers down", () => {
  it.live(
    "fails the dead server's keys with BackendUnavailable while the other server keeps serving",
    () =>
      Effect.gen(function*() {
        const a = yield* Effect.promise(() => startMemcached())
        const b = yield* Effect.promise(() => startMemcached())
        const servers = [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`]
        const ring = HashRing.make(servers, (s) => s)
        const keys = Array.from({ length: 40 }, (_, i) => `k${i}`)
        const onB = keys.filter((k) => ring.locate(MemcachedBackend.storageKey("f:", k)) === servers[1])
        const onA = keys.filter((k) => !onB.includes(k))
        expect(onA.length).toBeGreaterThan(0)
        expect(onB.length).toBeGreaterThan(0)
        yield* withBackend({ servers, prefix: "f:", timeout: "300 millis" }, (backend) =>
          Effect.gen(function*() {
            for (const k of keys) yield* backend.set(k, yield* entry(k, 60_000))
            yield* Effect.promise(() => b.kill())
            const startedAt = Date.now()
            for (const k of onB) {
              const result = yield* Effect.either(backend.get(k))
              expect(Either.isLeft(result) ? result.left._tag : "served").toMatch(/^Backend(Unavailable|Timeout)$/)
            }
            const failedWithin = Date.now() - startedAt
            expect(failedWithin / onB.length).toBeLessThan(400)
            for (const k of onA) expect(text(yield* backend.get(k))).toEqual(Option.some(k))
            const health = yield* backend.health
            expect(health.status).toBe("degraded")
            expect(health.detail).toContain(servers[1])
          }))
        yield* Effect.promise(() => a.kill())
      }),
    20_000
  )
})
