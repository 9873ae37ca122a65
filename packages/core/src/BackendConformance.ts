/**
 * The conformance suite every `CacheBackend` must pass: one parameterised `@effect/vitest` suite
 * run against memory, Redis, Memcached, disk, and usable for your own backend.
 *
 * ```ts
 * import * as BackendConformance from "@cachekit/core/BackendConformance"
 * BackendConformance.run("MyBackend", { layer: MyBackend.layer(options), clock: "live" })
 * ```
 *
 * Import it from `@cachekit/core/BackendConformance` (it is not re-exported from the package root,
 * so that production code never loads vitest).
 *
 * @since 0.1.0
 */
import { describe, expect, it } from "@effect/vitest"
import type { Layer } from "effect"
import { Chunk, Clock, Duration, Effect, Either, Option, Stream, TestClock } from "effect"
import type { CacheBackend } from "./CacheBackend.js"
import { CacheBackendTag } from "./CacheBackend.js"
import * as CacheEntry from "./CacheEntry.js"

/** How to run the suite against one backend. */
export interface Options<E> {
  /** Builds the backend; it is built afresh for every test (give each test a clean namespace or dir). */
  readonly layer: Layer.Layer<CacheBackendTag, E>
  /**
   * `"test"`: time-based tests move `TestClock` (in-process backends driven by `Clock`).
   * `"live"`: real servers; time-based tests use short real TTLs (a few hundred ms) and real sleeps.
   */
  readonly clock: "test" | "live"
  /** Skip the whole suite (e.g. the server binary is missing). */
  readonly skip?: boolean | undefined
  /** Capabilities the backend must provide; their tests fail (rather than skip) when they are absent. */
  readonly capabilities?: {
    readonly tags?: boolean | undefined
    readonly scan?: boolean | undefined
    readonly streaming?: boolean | undefined
  } | undefined
}

const MiB = 1024 * 1024

/** Registers the suite under `describe(name)`. */
export const run = <E>(name: string, options: Options<E>): void => {
  const test = options.clock === "live" ? it.live : it.effect
  const advance = (millis: number) =>
    options.clock === "live" ? Effect.sleep(Duration.millis(millis)) : TestClock.adjust(Duration.millis(millis))
  const ttlMillis = options.clock === "live" ? 300 : 60_000

  /** Runs `body` against a freshly built backend, cleared first. */
  const withBackend = <A, E2>(body: (backend: CacheBackend) => Effect.Effect<A, E2>) =>
    Effect.gen(function*() {
      const backend = yield* CacheBackendTag
      yield* backend.clear
      return yield* body(backend)
    }).pipe(Effect.provide(options.layer))

  const entry = (value: Uint8Array | string, extra: {
    readonly ttl?: number | undefined
    readonly grace?: number | undefined
    readonly tags?: ReadonlyArray<string> | undefined
    readonly meta?: Record<string, string> | undefined
  } = {}) =>
    Effect.map(Clock.currentTimeMillis, (now) =>
      CacheEntry.make({
        value: typeof value === "string" ? new TextEncoder().encode(value) : value,
        createdAt: now,
        expiresAt: extra.ttl === undefined ? now + 3_600_000 : now + extra.ttl,
        staleUntil: extra.ttl === undefined
          ? now + 3_600_000
          : now + extra.ttl + (extra.grace ?? 0),
        tags: extra.tags,
        meta: extra.meta
      }))

  const text = (e: Option.Option<CacheEntry.CacheEntry>) =>
    Option.match(e, { onNone: () => undefined, onSome: (x) => new TextDecoder().decode(x.value) })

  const sameBytes = (a: Uint8Array, b: Uint8Array) =>
    a.byteLength === b.byteLength && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
      Buffer.from(b.buffer, b.byteOffset, b.byteLength)
    )

  const requireCapability = <K extends "tags" | "scan" | "streaming">(backend: CacheBackend, key: K) => {
    const capability = backend[key]
    if (capability === undefined) {
      expect.fail(`${backend.name} was expected to provide the ${key} capability`)
    }
    return capability as NonNullable<CacheBackend[K]>
  }

  describe.skipIf(options.skip === true)(`${name} conformance`, () => {
    test("returns a miss for a key that was never set", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          expect(Option.isNone(yield* backend.get("never-set"))).toBe(true)
        })
      ))

    test("returns the value and metadata that were set", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          const e = yield* entry("hello", { ttl: ttlMillis * 100, grace: 5000, tags: [], meta: { type: "text/plain" } })
          yield* backend.set("k", e)
          const got = yield* backend.get("k")
          expect(Option.isSome(got)).toBe(true)
          const x = Option.getOrThrow(got)
          expect(text(got)).toBe("hello")
          expect(x.createdAt).toBe(e.createdAt)
          expect(x.expiresAt).toBe(e.expiresAt)
          expect(x.staleUntil).toBe(e.staleUntil)
          expect(x.size).toBe(5)
          expect(x.meta).toEqual({ type: "text/plain" })
        })
      ))

    test("overwrites an entry with the latest value", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          yield* backend.set("k", yield* entry("one"))
          yield* backend.set("k", yield* entry("two"))
          expect(text(yield* backend.get("k"))).toBe("two")
        })
      ))

    test("deletes an entry and says whether one was removed", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          yield* backend.set("k", yield* entry("v"))
          yield* backend.set("other", yield* entry("w"))
          expect(yield* backend.delete("k")).toBe(true)
          expect(Option.isNone(yield* backend.get("k"))).toBe(true)
          expect(yield* backend.delete("k")).toBe(false)
          expect(text(yield* backend.get("other"))).toBe("w")
        })
      ))

    test("clear removes every entry", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          for (const k of ["a", "b", "c"]) yield* backend.set(k, yield* entry(k))
          yield* backend.clear
          for (const k of ["a", "b", "c"]) expect(Option.isNone(yield* backend.get(k))).toBe(true)
        })
      ))

    test("rejects an empty key with InvalidKey", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          const result = yield* Effect.either(backend.set("", yield* entry("v")))
          expect(Either.isLeft(result) && result.left._tag).toBe("InvalidKey")
        })
      ))

    test("unsafeGetPromise, when offered, answers as get does (hit, miss, past staleUntil, InvalidKey)", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          const read = backend.unsafeGetPromise
          if (read === undefined) return
          const viaPromise = (key: string) =>
            Effect.clockWith((clock) =>
              Effect.tryPromise({ try: () => read(key, clock), catch: (error) => error as { readonly _tag: string } })
            )
          const e = yield* entry("hello", { ttl: ttlMillis, meta: { type: "text/plain" } })
          yield* backend.set("k", e)
          const got = yield* viaPromise("k")
          expect(got).toBeDefined()
          expect(new TextDecoder().decode(got!.value)).toBe("hello")
          expect({ ...got!, value: undefined }).toEqual({
            ...Option.getOrThrow(yield* backend.get("k")),
            value: undefined
          })
          expect(yield* viaPromise("never-set")).toBeUndefined()
          expect((yield* Effect.flip(viaPromise("")))._tag).toBe("InvalidKey")
          yield* advance(ttlMillis + 50)
          expect(yield* viaPromise("k")).toBeUndefined()
        })
      ))

    test("an entry is a miss once past staleUntil", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          yield* backend.set("short", yield* entry("v", { ttl: ttlMillis }))
          yield* backend.set("long", yield* entry("w", { ttl: ttlMillis * 100 }))
          expect(text(yield* backend.get("short"))).toBe("v")
          yield* advance(ttlMillis + (options.clock === "live" ? 150 : 1))
          expect(Option.isNone(yield* backend.get("short"))).toBe(true)
          expect(text(yield* backend.get("long"))).toBe("w")
        })
      ))

    test("a stale entry is still returned inside its grace window", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          yield* backend.set("k", yield* entry("v", { ttl: ttlMillis / 3, grace: ttlMillis * 10 }))
          yield* advance(ttlMillis)
          const got = yield* backend.get("k")
          expect(text(got)).toBe("v")
          const now = yield* Clock.currentTimeMillis
          expect(CacheEntry.isFresh(Option.getOrThrow(got), now)).toBe(false)
        })
      ))

    test("an entry without expiry is kept with infinite times", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          yield* backend.set(
            "forever",
            CacheEntry.make({ value: new Uint8Array([1]), createdAt: now, expiresAt: Number.POSITIVE_INFINITY })
          )
          const got = Option.getOrThrow(yield* backend.get("forever"))
          expect(got.expiresAt).toBe(Number.POSITIVE_INFINITY)
          expect(got.staleUntil).toBe(Number.POSITIVE_INFINITY)
        })
      ))

    test("stores all 256 byte values unchanged", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          const bytes = new Uint8Array(512)
          for (let i = 0; i < 512; i++) bytes[i] = i % 256
          yield* backend.set("bytes", yield* entry(bytes))
          const got = Option.getOrThrow(yield* backend.get("bytes"))
          expect(sameBytes(got.value, bytes)).toBe(true)
        })
      ))

    test("stores an empty value as an empty hit, not a miss", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          yield* backend.set("empty", yield* entry(new Uint8Array(0)))
          const got = yield* backend.get("empty")
          expect(Option.isSome(got)).toBe(true)
          expect(Option.getOrThrow(got).value.byteLength).toBe(0)
        })
      ))

    test("stores a 10 MiB value whole, or refuses it with EntryTooLarge when over maxEntrySize", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          const big = new Uint8Array(10 * MiB)
          for (let i = 0; i < big.length; i += 4096) big[i] = (i / 4096) % 251
          big[big.length - 1] = 7
          const result = yield* Effect.either(backend.set("big", yield* entry(big)))
          if (backend.maxEntrySize !== undefined && backend.maxEntrySize < big.byteLength) {
            expect(Either.isLeft(result) && result.left._tag).toBe("EntryTooLarge")
            expect(Option.isNone(yield* backend.get("big"))).toBe(true)
          } else {
            expect(Either.isRight(result)).toBe(true)
            const got = Option.getOrThrow(yield* backend.get("big"))
            expect(sameBytes(got.value, big)).toBe(true)
          }
        })
      ))

    test("keeps unicode, whitespace and glob-like keys apart", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          const keys = ["ключ", "鍵", "🔑-emoji", "a b", "tab\there", "new\nline", "{braces}", "star*?[x]", "é", "é"]
          for (const k of keys) yield* backend.set(k, yield* entry(`v:${k}`))
          for (const k of keys) expect(text(yield* backend.get(k))).toBe(`v:${k}`)
        })
      ))

    test("concurrent writers to one key leave one of the written values, whole", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          const writers = 8
          const size = 64 * 1024
          const values = Array.from({ length: writers }, (_, i) => new Uint8Array(size).fill(i + 1))
          yield* Effect.forEach(values, (v) => Effect.flatMap(entry(v), (e) => backend.set("contended", e)), {
            concurrency: "unbounded"
          })
          const got = Option.getOrThrow(yield* backend.get("contended"))
          expect(got.value.byteLength).toBe(size)
          const first = got.value[0]!
          expect(first >= 1 && first <= writers).toBe(true)
          expect(got.value.every((b) => b === first)).toBe(true)
        })
      ))

    test("health reports the backend up with a latency", () =>
      withBackend((backend) =>
        Effect.gen(function*() {
          const health = yield* backend.health
          expect(health.status).toBe("up")
          expect(health.backend).toBe(backend.name)
          expect(health.latencyMillis).toBeGreaterThanOrEqual(0)
        })
      ))

    const tagsExpected = options.capabilities?.tags === true
    describe.skipIf(!tagsExpected)("tags", () => {
      test("deleteByTags removes exactly the tagged entries", () =>
        withBackend((backend) =>
          Effect.gen(function*() {
            const tags = requireCapability(backend, "tags")
            yield* backend.set("a", yield* entry("a", { tags: ["t1"] }))
            yield* backend.set("b", yield* entry("b", { tags: ["t1", "t2"] }))
            yield* backend.set("c", yield* entry("c", { tags: ["t2"] }))
            yield* backend.set("d", yield* entry("d"))
            expect(yield* tags.deleteByTags(["t1"])).toBe(2)
            expect(Option.isNone(yield* backend.get("a"))).toBe(true)
            expect(Option.isNone(yield* backend.get("b"))).toBe(true)
            expect(text(yield* backend.get("c"))).toBe("c")
            expect(text(yield* backend.get("d"))).toBe("d")
            expect(yield* tags.keysForTag("t2")).toEqual(["c"])
          })
        ))

      test("an overwrite with other tags and a delete unlink the key from its old tags", () =>
        withBackend((backend) =>
          Effect.gen(function*() {
            const tags = requireCapability(backend, "tags")
            yield* backend.set("a", yield* entry("a1", { tags: ["old", "kept"] }))
            yield* backend.set("b", yield* entry("b", { tags: ["kept"] }))
            yield* backend.set("a", yield* entry("a2", { tags: ["kept", "new"] }))
            expect(yield* tags.keysForTag("old")).toEqual([])
            expect([...(yield* tags.keysForTag("kept"))].sort()).toEqual(["a", "b"])
            expect(yield* tags.keysForTag("new")).toEqual(["a"])
            yield* backend.delete("b")
            expect(yield* tags.keysForTag("kept")).toEqual(["a"])
            expect(yield* tags.deleteByTags(["old"])).toBe(0)
            expect(text(yield* backend.get("a"))).toBe("a2")
            const listed = yield* tags.listTags
            expect(listed).toContain("new")
            expect(listed).not.toContain("old")
          })
        ))

      test("expired entries do not stay linked to their tags", () =>
        withBackend((backend) =>
          Effect.gen(function*() {
            const tags = requireCapability(backend, "tags")
            yield* backend.set("gone", yield* entry("x", { ttl: ttlMillis, tags: ["t"] }))
            yield* backend.set("stays", yield* entry("y", { ttl: ttlMillis * 100, tags: ["t"] }))
            yield* advance(ttlMillis + (options.clock === "live" ? 150 : 1))
            expect(yield* tags.keysForTag("t")).toEqual(["stays"])
            expect(yield* tags.deleteByTags(["t"])).toBe(1)
          })
        ))
    })

    const scanExpected = options.capabilities?.scan === true
    describe.skipIf(!scanExpected)("scan", () => {
      test("keys(pattern) pages through exactly the matching keys", () =>
        withBackend((backend) =>
          Effect.gen(function*() {
            const scan = requireCapability(backend, "scan")
            const users = Array.from({ length: 25 }, (_, i) => `user:${i}`)
            for (const k of [...users, "post:1", "post:2", "username"]) yield* backend.set(k, yield* entry(k))
            const found: Array<string> = []
            let cursor: string | undefined = undefined
            let pages = 0
            do {
              const page: { keys: ReadonlyArray<string>; cursor: string | undefined } = yield* scan.keys("user:*", {
                cursor,
                count: 5
              })
              found.push(...page.keys)
              cursor = page.cursor
              pages++
            } while (cursor !== undefined && pages < 1000)
            expect([...new Set(found)].sort()).toEqual([...users].sort())
            expect(pages).toBeGreaterThan(1)
          })
        ))

      test("deletePattern removes the matching keys only", () =>
        withBackend((backend) =>
          Effect.gen(function*() {
            const scan = requireCapability(backend, "scan")
            for (const k of ["user:1", "user:2", "user:3", "post:1"]) yield* backend.set(k, yield* entry(k))
            expect(yield* scan.deletePattern("user:?")).toBe(3)
            expect(Option.isNone(yield* backend.get("user:2"))).toBe(true)
            expect(text(yield* backend.get("post:1"))).toBe("post:1")
          })
        ))
    })

    const streamingExpected = options.capabilities?.streaming === true
    describe.skipIf(!streamingExpected)("streaming", () => {
      const body = (size: number, chunk: number) => {
        const bytes = new Uint8Array(size)
        for (let i = 0; i < size; i++) bytes[i] = (i * 31 + 7) % 256
        const chunks: Array<Uint8Array> = []
        for (let i = 0; i < size; i += chunk) chunks.push(bytes.subarray(i, Math.min(size, i + chunk)))
        return { bytes, stream: Stream.fromIterable(chunks) }
      }
      const concat = (chunks: Chunk.Chunk<Uint8Array>) => Buffer.concat(Chunk.toArray(chunks))

      test("setStream then getStream returns the same bytes and metadata", () =>
        withBackend((backend) =>
          Effect.gen(function*() {
            const streaming = requireCapability(backend, "streaming")
            const { bytes, stream } = body(MiB + 123, 10_000)
            const { size: _size, value: _value, ...meta } = yield* entry("", { tags: [], meta: { type: "bin" } })
            const stored = yield* streaming.setStream("s", meta, stream)
            expect(stored.size).toBe(bytes.byteLength)
            const got = Option.getOrThrow(yield* streaming.getStream("s"))
            expect(got.entry.size).toBe(bytes.byteLength)
            expect(got.entry.meta).toEqual({ type: "bin" })
            const read = concat(yield* Stream.runCollect(got.body))
            expect(sameBytes(read, bytes)).toBe(true)
            expect(sameBytes(Option.getOrThrow(yield* backend.get("s")).value, bytes)).toBe(true)
          })
        ))

      test("getStream of a missing key is a miss", () =>
        withBackend((backend) =>
          Effect.gen(function*() {
            const streaming = requireCapability(backend, "streaming")
            expect(Option.isNone(yield* streaming.getStream("missing"))).toBe(true)
          })
        ))

      test("a failing body leaves no entry and keeps the previous one", () =>
        withBackend((backend) =>
          Effect.gen(function*() {
            const streaming = requireCapability(backend, "streaming")
            yield* backend.set("s", yield* entry("previous"))
            const { stream } = body(200_000, 50_000)
            const failing = Stream.concat(stream, Stream.fail("source broke" as const))
            const { size: _size, value: _value, ...meta } = yield* entry("")
            const result = yield* Effect.either(streaming.setStream("s", meta, failing))
            expect(Either.isLeft(result) && result.left).toBe("source broke")
            expect(text(yield* backend.get("s"))).toBe("previous")
          })
        ))

      test("a body over maxEntrySize fails with EntryTooLarge and leaves no entry", () =>
        withBackend((backend) =>
          Effect.gen(function*() {
            const streaming = requireCapability(backend, "streaming")
            const max = backend.maxEntrySize
            if (max === undefined || max > 64 * MiB) {
              expect.fail(`${backend.name} streams bodies but sets no maxEntrySize (or one over 64 MiB) for this test`)
              return
            }
            const chunk = new Uint8Array(256 * 1024)
            const pulled = { count: 0 }
            const endless = Stream.repeatEffect(Effect.sync(() => {
              pulled.count++
              return chunk
            }))
            const { size: _size, value: _value, ...meta } = yield* entry("")
            const result = yield* Effect.either(streaming.setStream("huge", meta, endless))
            expect(Either.isLeft(result) && (result.left as { _tag: string })._tag).toBe("EntryTooLarge")
            // it stopped reading soon after the limit instead of draining the source
            expect(pulled.count * chunk.byteLength).toBeLessThanOrEqual(max + 2 * chunk.byteLength)
            expect(Option.isNone(yield* backend.get("huge"))).toBe(true)
          })
        ))
    })
  })
}
