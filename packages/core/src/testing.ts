/**
 * A cache for your own tests: `TestCache.layer()` provides `Cache.Cache` on an in-memory backend
 * (the real `MemoryBackend`, wrapped by a recorder) together with a `TestCache` inspector, so a
 * test can assert what the cache did without sleeps: the operations it sent to the backend (each
 * `get` with its outcome: hit, stale or miss), the entries it holds and whether they are fresh or
 * stale, the cache's stats, and entries seeded before the code under test runs.
 *
 * Time comes from Effect's `Clock`: under `it.effect` / `it.scoped` of `@effect/vitest` that is the
 * `TestClock`, so `TestClock.adjust("5 minutes")` moves every TTL. Build the layer inside the test
 * (`Effect.provide(TestCache.layer())`) so that each test gets a fresh cache on its own TestClock.
 *
 * @example
 * ```ts
 * import { Cache } from "@cachekit/core"
 * import * as TestCache from "@cachekit/core/testing"
 * import { expect, it } from "@effect/vitest"
 * import { Effect, TestClock } from "effect"
 *
 * it.effect("the second call is a cache hit", () =>
 *   Effect.gen(function*() {
 *     const cache = yield* Cache.Cache
 *     const load = cache.getOrCompute("k", Effect.succeed(new Uint8Array([1])), { ttl: "5 minutes" })
 *     yield* load
 *     yield* load
 *     expect(yield* TestCache.outcomes("k")).toEqual(["miss", "hit"])
 *     yield* TestClock.adjust("5 minutes")
 *     expect(yield* TestCache.state("k")).toBe("stale")
 *   }).pipe(Effect.provide(TestCache.layer({ grace: "1 minute" }))))
 * ```
 *
 * Any backend can be recorded the same way with `TestCache.recording(backend)` (for a tier of a
 * `TieredCache`, say).
 *
 * @module @cachekit/core/testing
 * @since 0.1.0
 */
import type { Schema, Scope } from "effect"
import { Context, Effect, Layer, Option } from "effect"
import * as Cache from "./Cache.js"
import type { BackendStats, CacheBackend, KeyPage } from "./CacheBackend.js"
import { CacheBackendTag } from "./CacheBackend.js"
import type { CacheEntry } from "./CacheEntry.js"
import type { CacheError, InvalidTtl } from "./CacheError.js"
import * as internal from "./internal/testingRecorder.js"
import * as MemoryBackend from "./MemoryBackend.js"

/** What a `get` found: a fresh entry, an entry past its TTL (still kept for grace / fail-safe), or nothing. */
export type Outcome = internal.Outcome

/**
 * One operation the cache sent to the backend, with the `Clock` time it happened at. A `getOrCompute`
 * shows up as a `get` (and, on a miss, a `set` once the compute has stored its value).
 */
export type Operation = internal.Operation

/** An entry held by the backend, as a test sees it. */
export interface EntrySnapshot {
  readonly key: string
  readonly entry: CacheEntry
  /** `fresh` before `expiresAt`, `stale` after it (kept until `staleUntil` for grace / fail-safe). */
  readonly state: "fresh" | "stale"
  /** Milliseconds since the entry was written. */
  readonly ageMillis: number
  /** Milliseconds of freshness left (0 when stale, `Infinity` for "never expires"). */
  readonly ttlLeftMillis: number
}

/** Counters of the cache and of the backend underneath, plus what the recorder saw. */
export interface TestStats {
  readonly cache: Cache.CacheStats
  readonly backend: BackendStats | undefined
  readonly hits: number
  readonly stale: number
  readonly misses: number
  readonly sets: number
  readonly deletes: number
}

/** Options of `seed`: the usual per-call cache options (ttl, grace, tags...). */
export type SeedOptions = Cache.CacheOptions

/** Inspection and seeding of the cache built by `TestCache.layer`. */
export interface TestCache {
  /** Every operation recorded so far, oldest first (bounded by `maxOperations`; older ones are dropped). */
  readonly operations: Effect.Effect<ReadonlyArray<Operation>>
  /** The outcomes of the `get`s of one key, in order: `["miss", "hit"]` after a compute and a cache hit. */
  readonly outcomes: (key: string) => Effect.Effect<ReadonlyArray<Outcome>>
  /** Forgets the recorded operations (entries and stats stay). */
  readonly resetOperations: Effect.Effect<void>
  /** Entries currently held (not past `staleUntil`), sorted by key. Reading them does not count as a hit. */
  readonly entries: Effect.Effect<ReadonlyArray<EntrySnapshot>>
  /** One entry, if held. */
  readonly entry: (key: string) => Effect.Effect<Option.Option<EntrySnapshot>>
  /** `fresh`, `stale` or `absent`, at the current `Clock` time. */
  readonly state: (key: string) => Effect.Effect<"fresh" | "stale" | "absent">
  readonly stats: Effect.Effect<TestStats>
  /** Stores a byte value without recording it, so the code under test starts from a warm cache. */
  readonly seed: (key: string, value: Uint8Array, options?: SeedOptions) => Effect.Effect<void, CacheError>
  /** Stores Schema-typed values (encoded exactly as `cache.typed(schema)` would) without recording them. */
  readonly seedTyped: <A, I>(
    schema: Schema.Schema<A, I, never>,
    entries: Iterable<readonly [string, A]> | Readonly<Record<string, A>>,
    options?: SeedOptions
  ) => Effect.Effect<void, CacheError>
}

/** The inspector tag. */
export const TestCache: Context.Tag<TestCache, TestCache> = Context.GenericTag<TestCache>(
  "@cachekit/core/testing/TestCache"
)

/** Options of `layer`: the cache's defaults (as `Cache.layer`) plus the memory backend's bounds. */
export interface Options extends Cache.CacheLayerOptions {
  /** Bounds of the memory backend (default 10,000 entries; sweep every hour, reads expire lazily). */
  readonly memory?: MemoryBackend.Options | undefined
  /** Most operations kept in the log (default 10,000). */
  readonly maxOperations?: number | undefined
}

/** A recorded backend and the handle that reads what it recorded. */
export interface Recording {
  readonly backend: CacheBackend
  readonly operations: Effect.Effect<ReadonlyArray<Operation>>
  readonly resetOperations: Effect.Effect<void>
}

/**
 * Wraps any backend so that every `get` (with its outcome), `set`, `delete`, `clear` and tag or
 * pattern deletion is recorded, e.g. to watch one tier of a `TieredCache`. Streaming is not passed
 * through (a `Cache` never uses it; HTTP caches then store bodies whole).
 */
export const recording = (
  backend: CacheBackend,
  options: { readonly maxOperations?: number | undefined } = {}
): Effect.Effect<Recording> =>
  Effect.clockWith((clock) =>
    Effect.sync(() => {
      const state = internal.makeState(options.maxOperations ?? 10_000)
      return {
        backend: internal.wrap(backend, state, clock, true),
        operations: Effect.sync(() => state.log.slice()),
        resetOperations: Effect.sync(() => {
          state.log.length = 0
        })
      }
    })
  )

/**
 * Builds the test cache in the current scope: a `Cache` on a recorded `MemoryBackend`, and its
 * inspector. Used by `layer`; call it directly to hold several caches in one test.
 */
export const make = (
  options: Options = {}
): Effect.Effect<
  { readonly cache: Cache.Cache; readonly testCache: TestCache; readonly backend: CacheBackend },
  InvalidTtl,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const { maxOperations, memory, ...cacheOptions } = options
    const clock = yield* Effect.clock
    const inner = yield* MemoryBackend.make({ sweepInterval: "1 hour", ...memory })
    const state = internal.makeState(maxOperations ?? 10_000)
    const recorded = internal.wrap(inner, state, clock, true)
    const silent = internal.wrap(inner, state, clock, false)
    const cache = yield* Effect.provideService(Cache.make({ name: "test", ...cacheOptions }), CacheBackendTag, recorded)
    // Seeds go through a second cache on the silent view: same codecs, no operations, no stats.
    const seeder = yield* Effect.provideService(
      Cache.make({ ...cacheOptions, name: `${cacheOptions.name ?? "test"}-seed` }),
      CacheBackendTag,
      silent
    )

    const now = () => clock.unsafeCurrentTimeMillis()
    const snapshot = (key: string, entry: CacheEntry, t: number): EntrySnapshot => ({
      key,
      entry,
      state: t < entry.expiresAt ? "fresh" : "stale",
      ageMillis: Math.max(0, t - entry.createdAt),
      ttlLeftMillis: Math.max(0, entry.expiresAt - t)
    })

    // The backend's key scan says what is still held (eviction and expiry included) without
    // touching its frequency sketch; `written` has the entry each key was last written with.
    const liveKeys = Effect.gen(function*() {
      const keys: Array<string> = []
      let cursor: string | undefined = "0"
      while (cursor !== undefined) {
        const page: KeyPage = yield* Effect.orDie(inner.scan.keys("*", { cursor, count: 1000 }))
        keys.push(...page.keys)
        cursor = page.cursor
      }
      return keys
    })

    const entries = Effect.map(liveKeys, (keys) => {
      const live = new Set(keys)
      for (const key of Array.from(state.written.keys())) if (!live.has(key)) state.written.delete(key)
      const t = now()
      const out: Array<EntrySnapshot> = []
      for (const [key, entry] of state.written) if (t < entry.staleUntil) out.push(snapshot(key, entry, t))
      return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    })

    const entry = (key: string) => Effect.map(entries, (all) => Option.fromNullable(all.find((e) => e.key === key)))

    const countOps = (predicate: (op: Operation) => boolean) => state.log.filter(predicate).length

    const testCache: TestCache = {
      operations: Effect.sync(() => state.log.slice()),
      outcomes: (key) =>
        Effect.sync(() => state.log.flatMap((op) => (op.op === "get" && op.key === key ? [op.outcome] : []))),
      resetOperations: Effect.sync(() => {
        state.log.length = 0
      }),
      entries,
      entry,
      state: (key) => Effect.map(entry(key), Option.match({ onNone: () => "absent" as const, onSome: (e) => e.state })),
      stats: Effect.gen(function*() {
        const cacheStats = yield* cache.stats
        const backendStats = yield* inner.stats
        return {
          cache: cacheStats,
          backend: backendStats,
          hits: countOps((op) => op.op === "get" && op.outcome === "hit"),
          stale: countOps((op) => op.op === "get" && op.outcome === "stale"),
          misses: countOps((op) => op.op === "get" && op.outcome === "miss"),
          sets: countOps((op) => op.op === "set"),
          deletes: countOps((op) => op.op === "delete")
        }
      }),
      seed: (key, value, seedOptions) => seeder.set(key, value, seedOptions),
      seedTyped: <A, I>(
        schema: Schema.Schema<A, I, never>,
        values: Iterable<readonly [string, A]> | Readonly<Record<string, A>>,
        seedOptions?: SeedOptions
      ) => {
        const typed = seeder.typed(schema)
        const pairs: ReadonlyArray<readonly [string, A]> = isIterable(values)
          ? Array.from(values)
          : Object.entries(values)
        return Effect.forEach(pairs, ([key, value]) => typed.set(key, value, seedOptions), { discard: true })
      }
    }
    return { cache, testCache, backend: recorded }
  })

const isIterable = <A>(
  values: Iterable<readonly [string, A]> | Readonly<Record<string, A>>
): values is Iterable<readonly [string, A]> => Symbol.iterator in values

/**
 * Provides `Cache.Cache`, `CacheBackendTag` (the recorded memory backend) and the `TestCache`
 * inspector. Fails with `InvalidTtl` if a default duration is unusable.
 */
export const layer = (
  options: Options = {}
): Layer.Layer<Cache.Cache | CacheBackendTag | TestCache, InvalidTtl> =>
  Layer.scopedContext(
    Effect.map(make(options), ({ backend, cache, testCache }) =>
      Context.make(Cache.Cache, cache).pipe(
        Context.add(CacheBackendTag, backend),
        Context.add(TestCache, testCache)
      ))
  )

// ---------------------------------------------------------------------------------------------
// Accessors: the inspector's fields as effects on the `TestCache` in context
// ---------------------------------------------------------------------------------------------

/** Operations recorded so far. */
export const operations: Effect.Effect<ReadonlyArray<Operation>, never, TestCache> = Effect.flatMap(
  TestCache,
  (t) => t.operations
)

/** Outcomes of the `get`s of one key, in order. */
export const outcomes = (key: string): Effect.Effect<ReadonlyArray<Outcome>, never, TestCache> =>
  Effect.flatMap(TestCache, (t) => t.outcomes(key))

/** Entries currently held. */
export const entries: Effect.Effect<ReadonlyArray<EntrySnapshot>, never, TestCache> = Effect.flatMap(
  TestCache,
  (t) => t.entries
)

/** One entry, if held. */
export const entry = (key: string): Effect.Effect<Option.Option<EntrySnapshot>, never, TestCache> =>
  Effect.flatMap(TestCache, (t) => t.entry(key))

/** `fresh`, `stale` or `absent`. */
export const state = (key: string): Effect.Effect<"fresh" | "stale" | "absent", never, TestCache> =>
  Effect.flatMap(TestCache, (t) => t.state(key))

/** Stats of the test cache. */
export const stats: Effect.Effect<TestStats, never, TestCache> = Effect.flatMap(TestCache, (t) => t.stats)

/** Forgets the recorded operations. */
export const resetOperations: Effect.Effect<void, never, TestCache> = Effect.flatMap(
  TestCache,
  (t) => t.resetOperations
)

/** Seeds a byte value. */
export const seed = (
  key: string,
  value: Uint8Array,
  options?: SeedOptions
): Effect.Effect<void, CacheError, TestCache> => Effect.flatMap(TestCache, (t) => t.seed(key, value, options))

/** Seeds Schema-typed values. */
export const seedTyped = <A, I>(
  schema: Schema.Schema<A, I, never>,
  values: Iterable<readonly [string, A]> | Readonly<Record<string, A>>,
  options?: SeedOptions
): Effect.Effect<void, CacheError, TestCache> => Effect.flatMap(TestCache, (t) => t.seedTyped(schema, values, options))
