/**
 * The cache users call. `getOrCompute` reads through a `CacheBackend` and runs the compute at most
 * once per key at a time (single-flight), with TTLs, negative caching, stale-while-revalidate
 * (grace), refresh-ahead, soft and hard compute timeouts, fail-safe and tags. Values are bytes by
 * default; `cache.typed(schema)` gives a Schema-typed view (JSON-with-Schema, lossless for Date,
 * BigInt, Uint8Array, Option and Schema classes).
 *
 * Time always comes from Effect's `Clock` (the one in the layer's context, captured when the layer is
 * built), so TTLs of any length work and `TestClock` drives them.
 *
 * @example
 * ```ts
 * const program = Effect.gen(function*() {
 *   const users = (yield* Cache.Cache).typed(User)
 *   return yield* users.getOrCompute(`user:${id}`, fetchUser(id), { ttl: "1 minute", grace: "10 minutes" })
 * })
 * program.pipe(Effect.provide(Cache.layer({ ttl: "5 minutes" })), Effect.provide(MemoryBackend.layer({ maxEntries: 10_000 })))
 * ```
 *
 * @since 0.1.0
 */
import type { ConfigError, Duration, Option, Schema, Scope } from "effect"
import { Config, Context, Data, Effect, Layer, Metric } from "effect"
import { CacheBackendTag } from "./CacheBackend.js"
import type { CacheError, EncodeError, EntryTooLarge, InvalidKey, InvalidTtl } from "./CacheError.js"
import type { Codec } from "./Codec.js"
import * as internal from "./internal/cache.js"
import * as keys from "./internal/cacheMetrics.js"

/**
 * Options of one call; any field left out takes the layer's default. Durations are Effect
 * `DurationInput`s ("5 minutes", millis as a number, `Duration.infinity` for "never").
 */
export interface CacheOptions {
  /** How long a stored value is fresh. Default 5 minutes. */
  readonly ttl?: Duration.DurationInput | undefined
  /**
   * TTL of negative results: values `isEmpty` accepts, and compute failures when `errorCodec` is given
   * (they are stored and, until this TTL ends, re-raised as the same typed `E` without computing).
   * 0 (the default) caches no negative result; failures are never cached without this.
   */
  readonly negativeTtl?: Duration.DurationInput | undefined
  /** Stale-while-revalidate: after expiry, serve the stale value this long while one background refresh runs. */
  readonly grace?: Duration.DurationInput | undefined
  /** Refresh in the background when a fresh hit is within this window before expiry. */
  readonly refreshAhead?: Duration.DurationInput | undefined
  /** When a stale value exists and the compute is slower than this, return the stale value; the compute finishes in the background. */
  readonly softTimeout?: Duration.DurationInput | undefined
  /** Interrupt the compute after this long and fail with `ComputeTimeout` (or serve stale under fail-safe). */
  readonly hardTimeout?: Duration.DurationInput | undefined
  /** Serve the stale value when a refresh fails (compute error or hard timeout). */
  readonly failSafe?: boolean | undefined
  /**
   * How long past expiry a value is kept as a fallback for fail-safe and soft timeouts. Default 1 hour.
   * Only entries written while `failSafe` or a `softTimeout` is in force are kept this long (others
   * are kept for `grace` only), so set those options on the writes as well as on the reads.
   */
  readonly maxStale?: Duration.DurationInput | undefined
  /** Tags stored with the entry (for `invalidateTags`). */
  readonly tags?: ReadonlyArray<string> | undefined
}

/** Options of `getOrCompute`: `CacheOptions` plus how negative results are recognised and stored. */
export interface ComputeOptions<A, E> extends CacheOptions {
  /** Encodes compute failures so that `negativeTtl` can store them and later re-raise them. */
  readonly errorCodec?: Codec<E> | undefined
  /** Successful but empty results (stored with `negativeTtl` instead of `ttl`). */
  readonly isEmpty?: ((value: A) => boolean) | undefined
}

/** Options of `get`. */
export interface GetOptions {
  /** Also return a value past its TTL that is still kept (grace / fail-safe window). */
  readonly allowStale?: boolean | undefined
}

/** Errors that come from the caller's input rather than from a backend. */
export type InputError = InvalidKey | InvalidTtl | EncodeError | EntryTooLarge

/** A cache over values of type `A`. */
export interface TypedCache<A> {
  /** A fresh value, or `None` (a value that no longer decodes is deleted and is `None`). */
  readonly get: (key: string, options?: GetOptions) => Effect.Effect<Option.Option<A>, CacheError>
  readonly set: (key: string, value: A, options?: CacheOptions) => Effect.Effect<void, CacheError>
  readonly delete: (key: string) => Effect.Effect<boolean, CacheError>
  /**
   * The cached value, or the result of `compute` (stored). Concurrent misses of one key share one
   * compute, which runs in the cache's own scope: interrupting a caller never interrupts it. Backend
   * failures never surface here (a down backend falls back to the compute); the compute's own `E`
   * does, unchanged.
   */
  readonly getOrCompute: <E, R>(
    key: string,
    compute: Effect.Effect<A, E, R>,
    options?: ComputeOptions<A, E>
  ) => Effect.Effect<A, E | ComputeTimeout | InputError, R>
}

/** Counters of one cache (evictions come from the backend when it reports them). */
export interface CacheStats {
  readonly name: string
  readonly hits: number
  readonly misses: number
  readonly staleServed: number
  readonly computes: number
  readonly computeErrors: number
  readonly backgroundRefreshes: number
  readonly backendErrors: number
  readonly evictions: number | undefined
}

/** The cache service: a byte-valued cache plus typed views, tag invalidation and stats. */
export interface Cache extends TypedCache<Uint8Array> {
  readonly name: string
  /** A Schema-typed view (create it once and keep it: its decoded-value memo lives in it). */
  readonly typed: <A, I>(schema: Schema.Schema<A, I, never>) => TypedCache<A>
  /** A view with any codec. */
  readonly withCodec: <A>(codec: Codec<A>) => TypedCache<A>
  /** Deletes every entry carrying one of the tags; needs a backend with the tags capability. */
  readonly invalidateTags: (tags: ReadonlyArray<string>) => Effect.Effect<number, CacheError | TagsUnsupported>
  readonly clear: Effect.Effect<void, CacheError>
  readonly stats: Effect.Effect<CacheStats>
}

/** The `Cache` service tag. */
export const Cache: Context.Tag<Cache, Cache> = Context.GenericTag<Cache>("@cachekit/core/Cache")

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** The compute ran longer than its hard timeout and was interrupted. */
export class ComputeTimeout extends Data.TaggedError("ComputeTimeout")<{
  readonly key: string
  readonly timeoutMillis: number
  readonly message: string
}> {}

/** `invalidateTags` on a backend without a tag index. */
export class TagsUnsupported extends Data.TaggedError("TagsUnsupported")<{
  readonly backend: string
  readonly message: string
}> {}

// ---------------------------------------------------------------------------------------------
// Constructors and layers
// ---------------------------------------------------------------------------------------------

/** Layer-wide settings: the defaults of every call, plus limits. */
export interface CacheLayerOptions extends CacheOptions {
  /** Name used in stats and as the `cache` tag of the metrics. Default "default". */
  readonly name?: string | undefined
  /** Largest encoded value accepted (`EntryTooLarge` above it); default the backend's `maxEntrySize`. */
  readonly maxEntrySize?: number | undefined
  /** Longest key accepted (`InvalidKey` above it). Default 4096. */
  readonly maxKeyLength?: number | undefined
}

/**
 * Builds a cache on the current backend. Options are validated and resolved once here; background
 * computes are forked in the given scope and stop when it closes.
 */
export const make = (
  options: CacheLayerOptions = {}
): Effect.Effect<Cache, InvalidTtl, CacheBackendTag | Scope.Scope> =>
  Effect.flatMap(
    CacheBackendTag,
    (backend) => Effect.flatMap(Effect.scope, (scope) => internal.make(backend, options, scope))
  )

/** `Cache` on the `CacheBackendTag` in context; fails with `InvalidTtl` if a default is not a usable duration. */
export const layer = (options: CacheLayerOptions = {}): Layer.Layer<Cache, InvalidTtl, CacheBackendTag> =>
  Layer.scoped(Cache, make(options))

/**
 * Defaults read from configuration: `CACHE_NAME`, `CACHE_TTL`, `CACHE_NEGATIVE_TTL`, `CACHE_GRACE`,
 * `CACHE_REFRESH_AHEAD`, `CACHE_SOFT_TIMEOUT`, `CACHE_HARD_TIMEOUT`, `CACHE_FAIL_SAFE`, `CACHE_MAX_STALE`,
 * `CACHE_MAX_ENTRY_SIZE` (durations as "5 minutes", all optional).
 */
export const config: Config.Config<CacheLayerOptions> = Config.all({
  name: Config.option(Config.string("CACHE_NAME")),
  ttl: Config.option(Config.duration("CACHE_TTL")),
  negativeTtl: Config.option(Config.duration("CACHE_NEGATIVE_TTL")),
  grace: Config.option(Config.duration("CACHE_GRACE")),
  refreshAhead: Config.option(Config.duration("CACHE_REFRESH_AHEAD")),
  softTimeout: Config.option(Config.duration("CACHE_SOFT_TIMEOUT")),
  hardTimeout: Config.option(Config.duration("CACHE_HARD_TIMEOUT")),
  failSafe: Config.option(Config.boolean("CACHE_FAIL_SAFE")),
  maxStale: Config.option(Config.duration("CACHE_MAX_STALE")),
  maxEntrySize: Config.option(Config.integer("CACHE_MAX_ENTRY_SIZE"))
}).pipe(Config.map((c) => internal.definedFields(c)))

/** `layer` with its defaults read from a `Config` (by default `Cache.config`, i.e. the environment). */
export const layerConfig = (
  options: Config.Config<CacheLayerOptions> = config
): Layer.Layer<Cache, InvalidTtl | ConfigError.ConfigError, CacheBackendTag> =>
  Layer.scoped(Cache, Effect.flatMap(options, (resolved) => make(resolved)))

/** A Schema-typed view of the `Cache` in context. */
export const makeTyped = <A, I>(schema: Schema.Schema<A, I, never>): Effect.Effect<TypedCache<A>, never, Cache> =>
  Effect.map(Cache, (cache) => cache.typed(schema))

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/**
 * The cache's counters as effect `Metric`s. Every cache updates them with the label `cache=<name>`:
 * read one with `Metric.value(Cache.metrics.hits.pipe(Metric.tagged("cache", "default")))`.
 * `evictions` is a gauge set from the backend's own count whenever `stats` is read.
 */
export const metrics = {
  hits: Metric.fromMetricKey(keys.hits),
  misses: Metric.fromMetricKey(keys.misses),
  staleServed: Metric.fromMetricKey(keys.staleServed),
  computes: Metric.fromMetricKey(keys.computes),
  computeErrors: Metric.fromMetricKey(keys.computeErrors),
  backgroundRefreshes: Metric.fromMetricKey(keys.backgroundRefreshes),
  backendErrors: Metric.fromMetricKey(keys.backendErrors),
  evictions: Metric.fromMetricKey(keys.evictions)
}
