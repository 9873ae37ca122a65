/**
 * A `CacheBackend` made of tiers L1..LN (each a `CacheBackend`, fastest first), so the `Cache`
 * service runs on it unchanged. Reads walk down the tiers and promote what they find upward with
 * the entry's original expiry; writes go through every tier; a failing or slow tier is skipped
 * (per-tier timeout + circuit breaker) instead of failing a read another tier can answer.
 * With an `InvalidationBus` the instance-local tiers of other instances drop what this one changes.
 *
 * After the bus reconnects (or a subscriber overflows) the local tiers are CLEARED rather than
 * resynchronised: Pub/Sub does not replay what was published while we were away, and a resync would
 * re-read every local entry from the shared tier (one round trip each) and still miss tag and
 * pattern deletes. Local tiers are small and short-lived; they refill from the shared tier.
 *
 * Concurrent misses of one key share one walk below L1; under the `Cache` service's single-flight
 * compute that makes N concurrent misses cost one walk and one compute.
 *
 * @example
 * const tiers = TieredCache.layer([
 *   { backend: memory, promote: { afterHits: 2, window: "1 minute" }, maxEntrySize: 64 * 1024 },
 *   { backend: redis, ttlScale: 2, timeout: "50 millis" }
 * ])
 * // `Cache.layer(...)` on top of it, or use the TieredCache tag for invalidations and stats.
 *
 * @since 0.1.0
 */
import type { Duration, Option, Scope } from "effect"
import { Context, Effect, Layer } from "effect"
import type { CacheBackend } from "./CacheBackend.js"
import { CacheBackendTag } from "./CacheBackend.js"
import type { CacheEntry } from "./CacheEntry.js"
import type { CacheError } from "./CacheError.js"
import * as internal from "./internal/tiered.js"
import type { InvalidationBusError } from "./InvalidationBus.js"
import { InvalidationBus } from "./InvalidationBus.js"

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/**
 * When an entry found in a lower tier is copied into this tier: on every read (`"always"`), never,
 * or once it was read `afterHits` times within `window` (so one-off reads do not churn a small L1).
 */
export type PromotionRule =
  | "always"
  | "never"
  | { readonly afterHits: number; readonly window: Duration.DurationInput }

/** One tier. Only `backend` is required. */
export interface Tier {
  readonly backend: CacheBackend
  /** Name in stats, metrics and logs (default: the backend's name, suffixed with its position). */
  readonly name?: string | undefined
  /** Multiplies an entry's lifetime in this tier (2 = keep twice as long). Default 1. */
  readonly ttlScale?: number | undefined
  /** Default `"always"`. */
  readonly promote?: PromotionRule | undefined
  /** Whether `set` writes this tier (otherwise it only fills by promotion). Default true. */
  readonly writeThrough?: boolean | undefined
  /** Entries larger than this (bytes) skip this tier. */
  readonly maxEntrySize?: number | undefined
  /**
   * Per-operation timeout; a timeout counts as a failure for the breaker. Default: none, the
   * backend's own (the Redis and Memcached backends time out every command, 1 second by default).
   * Set it for a backend that can hang: it costs a fiber race per call (measured in bench/tiers).
   */
  readonly timeout?: Duration.DurationInput | undefined
  /** Circuit breaker, or `false` to call the tier whatever happens. */
  readonly breaker?:
    | false
    | {
      /** Consecutive failures that open the circuit. Default 5. */
      readonly failureThreshold?: number | undefined
      /** How long the circuit stays open before one probe call. Default 30 seconds. */
      readonly resetAfter?: Duration.DurationInput | undefined
    }
    | undefined
  /**
   * Instance-local tier (not shared with other instances): bus messages from other instances drop
   * entries here, and it is cleared after a bus reconnect. Default: true for the first tier only.
   */
  readonly local?: boolean | undefined
}

export interface Options {
  /**
   * With a bus: whether the CacheBackend face (`set`, `delete`, `clear`, tag and pattern
   * deletes) broadcasts (`"always"`, the default: no other instance serves what this one changed),
   * or only `setWithBroadcast`/`updateEverywhere`/`invalidate*` do (`"explicit"`).
   */
  readonly broadcast?: "always" | "explicit" | undefined
  /** Keys tracked per tier for `afterHits` promotion (oldest forgotten first). Default 10 000. */
  readonly maxTrackedPromotions?: number | undefined
  /** Name of the CacheBackend face. Default `"tiered"`. */
  readonly name?: string | undefined
}

/** Per call: a TTL per tier (index = tier), overriding the entry's own lifetime and the TTL scale there. */
export interface SetOptions {
  readonly ttl?: ReadonlyArray<Duration.DurationInput | undefined> | undefined
}

export interface TierStats {
  readonly name: string
  readonly hits: number
  readonly misses: number
  readonly promotions: number
  /** Failed or timed-out operations. */
  readonly errors: number
  readonly timeouts: number
  /** Calls not made because the circuit was open. */
  readonly skipped: number
  readonly breaker: "closed" | "open" | "half-open"
  /** How many times the circuit opened. */
  readonly breakerOpened: number
}

/** What a tag or pattern invalidation did. */
export interface InvalidationReport {
  /** Entries removed (or made stale) over all tiers, where the tiers can tell. */
  readonly affected: number
  /** Tiers that could not take part (no tag index / no key scan, or the tier failed). */
  readonly skippedTiers: ReadonlyArray<string>
}

/** Observes reads that found an entry (auto-refresh uses this to find hot keys). Must be cheap and not throw. */
export type HitListener = (key: string, entry: CacheEntry, tier: number) => void

// ---------------------------------------------------------------------------------------------
// Service
// ---------------------------------------------------------------------------------------------

export interface TieredCache {
  /** The tiers as one `CacheBackend` (what `layer` provides as `CacheBackendTag`). */
  readonly backend: CacheBackend
  readonly tierNames: ReadonlyArray<string>
  readonly get: (key: string) => Effect.Effect<Option.Option<CacheEntry>, CacheError>
  /** Writes every write-through tier (lowest first); fails only if no tier took the entry. */
  readonly set: (key: string, entry: CacheEntry, options?: SetOptions) => Effect.Effect<void, CacheError>
  /** `set`, then tells the other instances (whatever the `broadcast` option). */
  readonly setWithBroadcast: (key: string, entry: CacheEntry, options?: SetOptions) => Effect.Effect<void, CacheError>
  /**
   * Reads the current entry through the tiers, computes the next one (`None` deletes), writes it
   * everywhere and broadcasts.
   */
  readonly updateEverywhere: <E>(
    key: string,
    update: (current: Option.Option<CacheEntry>) => Effect.Effect<Option.Option<CacheEntry>, E>,
    options?: SetOptions
  ) => Effect.Effect<void, CacheError | E>
  /** Deletes the key from every tier and broadcasts; fails if a tier could not delete it. */
  readonly invalidate: (key: string) => Effect.Effect<boolean, CacheError>
  /**
   * `delete` removes tagged entries; `expire` makes them stale now (still servable until their
   * `staleUntil`, the grace window, while one refresh runs).
   */
  readonly invalidateTags: (
    tags: ReadonlyArray<string>,
    options?: { readonly mode?: "delete" | "expire" | undefined }
  ) => Effect.Effect<InvalidationReport, CacheError>
  readonly invalidatePattern: (pattern: string) => Effect.Effect<InvalidationReport, CacheError>
  /** Clears every tier and broadcasts. */
  readonly clear: Effect.Effect<void, CacheError>
  /** Clears the instance-local tiers only (what a bus reconnect does). */
  readonly clearLocal: Effect.Effect<void>
  readonly stats: Effect.Effect<ReadonlyArray<TierStats>>
  /** Registers a hit listener for the lifetime of the scope. */
  readonly observeHits: (listener: HitListener) => Effect.Effect<void, never, Scope.Scope>
}

export const TieredCache: Context.Tag<TieredCache, TieredCache> = Context.GenericTag<TieredCache>(
  "@cachekit/core/TieredCache"
)

// ---------------------------------------------------------------------------------------------
// Constructors and layers
// ---------------------------------------------------------------------------------------------

/**
 * Builds the tiers. With a bus, a fiber forked in the scope applies other instances' messages to
 * the local tiers and clears them after a reconnect (see `internal/tiered.ts` for why clear rather
 * than resynchronise).
 */
export const make = (
  tiers: ReadonlyArray<Tier>,
  options?: Options & { readonly bus?: InvalidationBus | undefined }
): Effect.Effect<TieredCache, InvalidationBusError, Scope.Scope> => internal.make(tiers, options)

const layerWith = <E, R>(
  build: Effect.Effect<TieredCache, E, Scope.Scope | R>
): Layer.Layer<TieredCache | CacheBackendTag, E, Exclude<R, Scope.Scope>> =>
  Layer.scopedContext(
    Effect.map(build, (tiered) => Context.make(TieredCache, tiered).pipe(Context.add(CacheBackendTag, tiered.backend)))
  )

/** Provides `TieredCache` and `CacheBackendTag` (no bus: a single instance). */
export const layer = (
  tiers: ReadonlyArray<Tier>,
  options?: Options
): Layer.Layer<TieredCache | CacheBackendTag> => layerWith(Effect.orDie(make(tiers, options))) // no bus, no bus error

/** Provides `TieredCache` and `CacheBackendTag`, kept coherent with other instances through the `InvalidationBus`. */
export const layerWithBus = (
  tiers: ReadonlyArray<Tier>,
  options?: Options
): Layer.Layer<TieredCache | CacheBackendTag, InvalidationBusError, InvalidationBus> =>
  layerWith(Effect.flatMap(InvalidationBus, (bus) => make(tiers, { ...options, bus })))
