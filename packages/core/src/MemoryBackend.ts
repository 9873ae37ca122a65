/**
 * An in-process `CacheBackend` bounded by entry count and by bytes, with W-TinyLFU admission and
 * eviction (count-min sketch frequency, window LRU, segmented probation/protected main, window size
 * adapted by hill climbing). A one-off scan of new keys does not flush the keys that are hit often:
 * new keys must beat the resident victim's frequency to get in.
 *
 * Time comes from Effect's `Clock`: an entry past its `staleUntil` is a miss when read (and removed),
 * and a sweep fiber removes expired entries every `sweepInterval`, so `TestClock.adjust` expires them.
 *
 * Removal events (evicted, expired, removed, replaced) are offered to a bounded queue that a cleanup
 * fiber drains, calling the listeners registered with `onEviction`. **Queue-full policy: dropping.**
 * The producer is the synchronous write/read path, which must never wait, so a full queue drops the
 * *new* event (`Queue.dropping`) and counts it in `memoryStats.droppedEvents`. Dropping rather than
 * sliding keeps the events already queued in the order they happened, costs nothing when full, and
 * holds at most `eventQueueCapacity` entries alive; a consumer that must not miss anything (disk
 * cleanup) reconciles when the counter moves. Events are only built while at least one listener is
 * registered. Both fibers are forked in the constructor's scope and stop when it closes.
 *
 * @example
 * import { MemoryBackend } from "@cachekit/core"
 * const MemoryLive = MemoryBackend.layer({ maxEntries: 50_000, maxBytes: 128 * 1024 * 1024 })
 *
 * @since 0.1.0
 */
import type { ConfigError, Duration, Scope } from "effect"
import { Config, Context, Effect, Layer, Option, Queue, Schedule } from "effect"
import type { BackendStats, Health, KeyPage, ScanCapability, TagCapability } from "./CacheBackend.js"
import { CacheBackendTag, DEFAULT_MAX_KEY_LENGTH, globToRegExp, validateKey } from "./CacheBackend.js"
import type { CacheBackend } from "./CacheBackend.js"
import type { CacheEntry } from "./CacheEntry.js"
import { EntryTooLarge } from "./CacheError.js"
import type { InvalidKey } from "./CacheError.js"
import type { RemovalReason } from "./internal/wtinylfu.js"
import { WTinyLfu } from "./internal/wtinylfu.js"

export type { RemovalReason } from "./internal/wtinylfu.js"

/**
 * The eviction policy on its own: W-TinyLFU over any keys, synchronous, no Effect and no clock
 * (deadlines are numbers the caller compares). Trace replays, benchmarks and other in-process
 * stores drive it directly.
 *
 * @example
 * const policy = new MemoryBackend.Policy<number, true>({ maxEntries: 1_000 })
 * const hit = policy.access(42) // get, and load on a miss
 */
export { WTinyLfu as Policy } from "./internal/wtinylfu.js"
export type { WTinyLfuOptions as PolicyOptions } from "./internal/wtinylfu.js"

/** An entry that left the backend, and why. */
export interface EvictionEvent {
  readonly key: string
  readonly entry: CacheEntry
  readonly reason: RemovalReason
}

/** Called by the cleanup fiber for every event; its failures and defects are logged, never propagated. */
export type EvictionListener = (event: EvictionEvent) => Effect.Effect<void, unknown>

/** A key and the sketch's frequency estimate for it (0..15, halved periodically). */
export interface HotKey {
  readonly key: string
  readonly frequency: number
}

/** Counters beyond `BackendStats`. */
export interface MemoryStats extends BackendStats {
  readonly expirations: number
  readonly droppedEvents: number
  readonly maxEntries: number
  readonly maxBytes: number
  /** Current share of the window LRU, as moved by the hill climber. */
  readonly windowFraction: number
}

/** The memory backend: a `CacheBackend` with every optional capability it can offer in-process. */
export interface MemoryBackend extends CacheBackend {
  readonly tags: TagCapability
  readonly scan: ScanCapability
  readonly stats: Effect.Effect<BackendStats>
  readonly unsafeGetSync: (key: string, now: number) => CacheEntry | undefined
  readonly unsafePeekSync: (key: string, now: number) => CacheEntry | undefined
  readonly maxEntrySize: number
  /** Registers a listener for removal events; the returned effect unregisters it. */
  readonly onEviction: (listener: EvictionListener) => Effect.Effect<Effect.Effect<void>>
  /** The `limit` most frequently used live keys, hottest first. */
  readonly hotKeys: (limit: number) => Effect.Effect<ReadonlyArray<HotKey>>
  readonly memoryStats: Effect.Effect<MemoryStats>
}

/** The memory backend itself, for callers that need more than `CacheBackend` (hot keys, listeners). */
export class MemoryBackendTag extends Context.Tag("@cachekit/core/MemoryBackend")<MemoryBackendTag, MemoryBackend>() {}

export interface Options {
  /** Most entries kept (default 10,000). */
  readonly maxEntries?: number | undefined
  /** Most bytes kept, as measured by `weigher` (default 64 MiB). */
  readonly maxBytes?: number | undefined
  /** Bytes an entry accounts for (default `entry.size + key.length`). */
  readonly weigher?: ((key: string, entry: CacheEntry) => number) | undefined
  /** How often the sweep fiber removes expired entries (default 30 seconds). */
  readonly sweepInterval?: Duration.DurationInput | undefined
  /** Capacity of the removal-event queue (default 1,024). */
  readonly eventQueueCapacity?: number | undefined
  /** Largest `entry.size` accepted (default `maxBytes`); larger fails with `EntryTooLarge`. */
  readonly maxEntrySize?: number | undefined
  readonly maxKeyLength?: number | undefined
  /** Name in health and errors (default "memory"). */
  readonly name?: string | undefined
}

const defaultWeigher = (key: string, entry: CacheEntry): number => entry.size + key.length

/**
 * Builds a memory backend whose sweep and cleanup fibers live in the current scope. Invalid
 * options (non-positive or fractional bounds) are a defect: they are programming errors.
 */
export const make = (options: Options = {}): Effect.Effect<MemoryBackend, never, Scope.Scope> =>
  Effect.gen(function*() {
    const name = options.name ?? "memory"
    const maxEntries = options.maxEntries ?? 10_000
    const maxBytes = options.maxBytes ?? 64 * 1024 * 1024
    const maxEntrySize = options.maxEntrySize ?? maxBytes
    const eventQueueCapacity = options.eventQueueCapacity ?? 1024
    const maxKeyLength = options.maxKeyLength ?? DEFAULT_MAX_KEY_LENGTH
    const weigher = options.weigher ?? defaultWeigher
    const sweepInterval = options.sweepInterval ?? "30 seconds"
    if (!Number.isSafeInteger(maxEntries) || maxEntries < 1) {
      return yield* Effect.dieMessage(`MemoryBackend: maxEntries must be an integer >= 1, got ${maxEntries}`)
    }
    if (!(maxBytes > 0) || !(maxEntrySize > 0)) {
      return yield* Effect.dieMessage(`MemoryBackend: maxBytes and maxEntrySize must be > 0`)
    }
    if (!Number.isSafeInteger(eventQueueCapacity) || eventQueueCapacity < 1) {
      return yield* Effect.dieMessage(`MemoryBackend: eventQueueCapacity must be an integer >= 1`)
    }

    const events = yield* Effect.acquireRelease(
      Queue.dropping<EvictionEvent>(eventQueueCapacity),
      (queue) => Queue.shutdown(queue)
    )
    const listeners = new Set<EvictionListener>()
    const tagIndex = new Map<string, Set<string>>()
    let droppedEvents = 0

    const unlinkTags = (key: string, tags: ReadonlyArray<string>) => {
      for (let i = 0; i < tags.length; i++) {
        const keys = tagIndex.get(tags[i]!)
        if (keys !== undefined && keys.delete(key) && keys.size === 0) tagIndex.delete(tags[i]!)
      }
    }
    const linkTags = (key: string, tags: ReadonlyArray<string>) => {
      for (let i = 0; i < tags.length; i++) {
        const keys = tagIndex.get(tags[i]!)
        if (keys === undefined) tagIndex.set(tags[i]!, new Set([key]))
        else keys.add(key)
      }
    }

    const policy = new WTinyLfu<string, CacheEntry>({
      maxEntries,
      maxWeight: maxBytes,
      onRemoval: (key, entry, reason) => {
        // On replacement `set` has already moved the tags to the new entry.
        if (reason !== "replaced") unlinkTags(key, entry.tags)
        if (listeners.size > 0 && !events.unsafeOffer({ key, entry, reason })) droppedEvents++
      }
    })

    const deliver = (event: EvictionEvent) =>
      Effect.forEach(
        Array.from(listeners),
        (listener) =>
          Effect.suspend(() => listener(event)).pipe(
            Effect.catchAllCause((cause) =>
              Effect.logWarning(`${name}: eviction listener failed for key "${event.key}"`, cause)
            )
          ),
        { discard: true }
      )
    const cleaner = yield* Queue.takeBetween(events, 1, 256).pipe(
      Effect.flatMap((batch) => Effect.forEach(batch, deliver, { discard: true })),
      Effect.forever,
      Effect.forkScoped
    )
    const sweeper = yield* Effect.clockWith((clock) =>
      Effect.sync(() => policy.expire(clock.unsafeCurrentTimeMillis()))
    ).pipe(
      Effect.repeat(Schedule.spaced(sweepInterval)),
      Effect.forkScoped
    )
    const isRunning = () => cleaner.unsafePoll() === null && sweeper.unsafePoll() === null

    const keyIsValid = (key: string): boolean => typeof key === "string" && key.length > 0 && key.length <= maxKeyLength

    const get = (key: string): Effect.Effect<Option.Option<CacheEntry>, InvalidKey> => {
      if (!keyIsValid(key)) return Effect.as(validateKey(key, maxKeyLength), Option.none())
      return Effect.clockWith((clock) =>
        Effect.sync(() => Option.fromNullable(policy.get(key, clock.unsafeCurrentTimeMillis())))
      )
    }

    const set = (key: string, entry: CacheEntry): Effect.Effect<void, InvalidKey | EntryTooLarge> => {
      if (!keyIsValid(key)) return Effect.asVoid(validateKey(key, maxKeyLength))
      if (entry.size > maxEntrySize) return Effect.fail(tooLarge(key, entry.size, maxEntrySize))
      const weight = weigher(key, entry)
      if (!(weight <= maxBytes)) return Effect.fail(tooLarge(key, weight, maxBytes))
      return Effect.clockWith((clock) =>
        Effect.sync(() => {
          const now = clock.unsafeCurrentTimeMillis()
          if (entry.staleUntil <= now) {
            // Already expired: storing it would only be a later miss; the write still replaces the old value.
            policy.delete(key)
            return
          }
          const old = policy.peek(key, Number.NEGATIVE_INFINITY)
          if (old !== undefined) unlinkTags(key, old.tags)
          linkTags(key, entry.tags)
          policy.set(key, entry, weight, entry.staleUntil)
        })
      )
    }

    const del = (key: string): Effect.Effect<boolean, InvalidKey> => {
      if (!keyIsValid(key)) return Effect.as(validateKey(key, maxKeyLength), false)
      return Effect.sync(() => policy.delete(key))
    }

    const now = Effect.clockWith((clock) => Effect.succeed(clock.unsafeCurrentTimeMillis()))

    const tags: TagCapability = {
      deleteByTags: (tagList) =>
        Effect.sync(() => {
          let removed = 0
          for (const tag of tagList) {
            const keys = tagIndex.get(tag)
            if (keys === undefined) continue
            for (const key of Array.from(keys)) if (policy.delete(key)) removed++
          }
          return removed
        }),
      keysForTag: (tag) =>
        Effect.map(now, (t) => Array.from(tagIndex.get(tag) ?? []).filter((key) => policy.has(key, t))),
      listTags: Effect.sync(() => Array.from(tagIndex.keys()))
    }

    const scan: ScanCapability = {
      // The cursor is a slot position: an entry present for the whole scan is returned exactly once,
      // however the cache changes meanwhile. `count` is the work per page (slots looked at), as in
      // Redis SCAN, so a page may hold fewer keys than `count`, even none, with a cursor to go on.
      keys: (pattern, scanOptions) =>
        Effect.map(now, (t): KeyPage => {
          const regex = globToRegExp(pattern)
          const start = Number.parseInt(scanOptions?.cursor ?? "0", 10)
          const keys: Array<string> = []
          const next = policy.scan(
            Number.isFinite(start) ? start : 0,
            scanOptions?.count ?? 100,
            (key, _, deadline) => {
              if (deadline > t && regex.test(key)) keys.push(key)
            }
          )
          return { keys, cursor: next === -1 ? undefined : String(next) }
        }),
      deletePattern: (pattern) =>
        Effect.sync(() => {
          const regex = globToRegExp(pattern)
          const matching: Array<string> = []
          policy.forEach((key) => {
            if (regex.test(key)) matching.push(key)
          })
          let removed = 0
          for (const key of matching) if (policy.delete(key)) removed++
          return removed
        })
    }

    const stats = Effect.sync((): BackendStats => ({
      entries: policy.size,
      bytes: policy.weightedSize,
      hits: policy.hits,
      misses: policy.misses,
      evictions: policy.evictions
    }))

    const backend: MemoryBackend = {
      name,
      get,
      set,
      delete: del,
      clear: Effect.sync(() => policy.clear()),
      health: Effect.sync((): Health =>
        isRunning()
          ? { backend: name, status: "up", latencyMillis: 0 }
          : { backend: name, status: "down", latencyMillis: 0, detail: "scope closed: background fibers stopped" }
      ),
      tags,
      scan,
      stats,
      unsafeGetSync: (key, t) => policy.get(key, t),
      unsafePeekSync: (key, t) => policy.peek(key, t),
      maxEntrySize,
      onEviction: (listener) =>
        Effect.sync(() => {
          // Wrapped so the same function registered twice is two registrations.
          const registered: EvictionListener = (event) => listener(event)
          listeners.add(registered)
          return Effect.sync(() => {
            listeners.delete(registered)
          })
        }),
      hotKeys: (limit) => Effect.map(now, (t) => policy.hottest(Math.max(0, Math.floor(limit)), t)),
      memoryStats: Effect.sync((): MemoryStats => ({
        entries: policy.size,
        bytes: policy.weightedSize,
        hits: policy.hits,
        misses: policy.misses,
        evictions: policy.evictions,
        expirations: policy.expirations,
        droppedEvents,
        maxEntries,
        maxBytes,
        windowFraction: policy.currentWindowFraction
      }))
    }
    return backend
  })

const tooLarge = (key: string, size: number, maxSize: number) =>
  new EntryTooLarge({
    key: key.slice(0, 64),
    size,
    maxSize,
    message: `entry "${key.slice(0, 64)}" weighs ${size} bytes, more than the limit of ${maxSize}`
  })

/** Provides `CacheBackendTag` (and `MemoryBackendTag`) with a memory backend living as long as the layer. */
export const layer = (options: Options = {}): Layer.Layer<CacheBackendTag | MemoryBackendTag> =>
  Layer.scopedContext(
    Effect.map(make(options), (backend) =>
      Context.make(CacheBackendTag, backend).pipe(Context.add(MemoryBackendTag, backend)))
  )

/**
 * Options from the environment: `CACHEKIT_MEMORY_MAX_ENTRIES`, `CACHEKIT_MEMORY_MAX_BYTES`,
 * `CACHEKIT_MEMORY_SWEEP_INTERVAL` (a duration such as "30 seconds"), `CACHEKIT_MEMORY_EVENT_QUEUE`.
 */
export const config: Config.Config<Options> = Config.all({
  maxEntries: Config.integer("CACHEKIT_MEMORY_MAX_ENTRIES").pipe(Config.withDefault(10_000)),
  maxBytes: Config.integer("CACHEKIT_MEMORY_MAX_BYTES").pipe(Config.withDefault(64 * 1024 * 1024)),
  sweepInterval: Config.duration("CACHEKIT_MEMORY_SWEEP_INTERVAL").pipe(Config.withDefault("30 seconds" as const)),
  eventQueueCapacity: Config.integer("CACHEKIT_MEMORY_EVENT_QUEUE").pipe(Config.withDefault(1024))
}).pipe(
  Config.validate({
    message: "memory backend bounds must be positive",
    validation: (o) => o.maxEntries >= 1 && o.maxBytes >= 1 && o.eventQueueCapacity >= 1
  })
)

/** `layer` with options read through `Config` (see `config`). */
export const layerConfig = (
  options: Config.Config<Options> = config
): Layer.Layer<CacheBackendTag | MemoryBackendTag, ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(options, layer))
