/**
 * Refreshes hot keys before they expire, so their readers never see a miss or a stale value.
 * A hit listener on the `TieredCache` counts hits per key in bounded memory (a count-min sketch
 * plus a top-K table, never a map of every key); a fiber forked in the Layer's scope checks them on
 * a `Schedule` and queues the keys above `minHitsPerMinute` that are inside their `refreshWindow`
 * (about to expire, or stale within their grace). A fixed pool of `maxConcurrentRefreshes` workers
 * serves that bounded queue. A failed refresh keeps the old entry.
 *
 * Loaders are registered per key prefix (the longest matching prefix wins): the cache only stores
 * bytes, so it cannot recompute a value without being told how.
 *
 * @example
 * const refresh = AutoRefresh.layer(
 *   { minHitsPerMinute: 120, refreshWindow: "30 seconds" },
 *   [AutoRefresh.loader("user:", (key) => fetchUserBytes(key.slice(5)), { ttl: "5 minutes" })]
 * ) // needs TieredCache
 *
 * @since 0.1.0
 */
import type { Scope } from "effect"
import { Context, Duration, Effect, Layer } from "effect"
import type { CacheEntry } from "./CacheEntry.js"
import * as internal from "./internal/tierAutoRefresh.js"
import { TieredCache } from "./TieredCache.js"

/** How keys under a prefix are recomputed. */
export interface Loader {
  readonly prefix: string
  /** Produces the new entry; `previous` is the entry it replaces (its tags and meta, for instance). */
  readonly load: (key: string, previous: CacheEntry, now: number) => Effect.Effect<CacheEntry, unknown>
}

export interface Config {
  /** Default true; when false, nothing is tracked or refreshed. */
  readonly enabled?: boolean | undefined
  /** Hits per minute above which a key is refreshed. Default 60. */
  readonly minHitsPerMinute?: number | undefined
  /** How often hot keys are checked. Default 10 seconds. */
  readonly checkInterval?: Duration.DurationInput | undefined
  /** Size of the worker pool: refreshes running at once. Default 4. */
  readonly maxConcurrentRefreshes?: number | undefined
  /** A hot key is refreshed once it is this close to expiry (or past it, within its grace). Default 30 seconds. */
  readonly refreshWindow?: Duration.DurationInput | undefined
  /** Keys tracked by the top-K table. Default 256. */
  readonly trackedKeys?: number | undefined
  /** Capacity of the refresh queue; keys beyond it wait for the next check. Default 1024. */
  readonly queueCapacity?: number | undefined
}

export interface HotKey {
  readonly key: string
  readonly hitsPerMinute: number
  readonly expiresAt: number
}

export interface Stats {
  /** Refreshes queued. */
  readonly scheduled: number
  readonly refreshed: number
  /** Refreshes whose loader failed (the old entry was kept). */
  readonly failed: number
  /** Hot keys not queued because the queue was full. */
  readonly dropped: number
  readonly inFlight: number
}

export interface AutoRefresh {
  /** Adds a loader for the lifetime of the scope. */
  readonly register: (loader: Loader) => Effect.Effect<void, never, Scope.Scope>
  /** The keys currently tracked as hot, hottest first. */
  readonly hotKeys: Effect.Effect<ReadonlyArray<HotKey>>
  /** Runs one check now (what the schedule runs); returns how many keys were queued. */
  readonly check: Effect.Effect<number>
  readonly stats: Effect.Effect<Stats>
}

export const AutoRefresh: Context.Tag<AutoRefresh, AutoRefresh> = Context.GenericTag<AutoRefresh>(
  "@cachekit/core/AutoRefresh"
)

/**
 * A loader whose `load` returns the value's bytes; the entry keeps the previous entry's tags and
 * meta and gets a fresh `ttl` (plus `grace`).
 */
export const loader = <E>(
  prefix: string,
  load: (key: string) => Effect.Effect<Uint8Array, E>,
  options: { readonly ttl: Duration.DurationInput; readonly grace?: Duration.DurationInput | undefined }
): Loader => {
  const ttl = Duration.toMillis(options.ttl)
  const grace = options.grace === undefined ? 0 : Duration.toMillis(options.grace)
  return {
    prefix,
    load: (key, previous, now) =>
      Effect.map(load(key), (value) => ({
        value,
        createdAt: now,
        expiresAt: now + ttl,
        staleUntil: now + ttl + grace,
        tags: previous.tags,
        size: value.byteLength,
        meta: previous.meta
      }))
  }
}

/** Starts tracking hits on the tiers and the refresh fibers; everything stops with the scope. */
export const make = (
  config: Config = {},
  loaders: ReadonlyArray<Loader> = []
): Effect.Effect<AutoRefresh, never, TieredCache | Scope.Scope> =>
  Effect.flatMap(TieredCache, (tiered) => internal.make(tiered, config, loaders))

/** Provides `AutoRefresh` on top of the `TieredCache` it refreshes. */
export const layer = (
  config: Config = {},
  loaders: ReadonlyArray<Loader> = []
): Layer.Layer<AutoRefresh, never, TieredCache> => Layer.scoped(AutoRefresh, make(config, loaders))
