/**
 * What the admin API needs from a running cache: health, stats, hot keys, tags, key scans, entry
 * metadata and invalidation. Build one from any `CacheBackend` with `fromBackend` (missing backend
 * capabilities answer `NotSupported`), or write your own for a cache with more to show.
 *
 * @since 0.1.0
 */
import type { Cache, CacheBackend as CB, CacheEntry, CacheError, MemoryBackend, TieredCache } from "@cachekit/core"
import { Cache as CacheModule, CacheBackend, TieredCache as TieredCacheModule } from "@cachekit/core"
import { Clock, Context, Data, Effect, Layer, Option } from "effect"

/** Health of one backend or tier. */
export interface TierHealth {
  readonly name: string
  readonly status: "up" | "degraded" | "down"
  readonly latencyMillis: number
  readonly detail?: string | undefined
}

/** Counters of one tier (or of the only backend). */
export interface TierStats {
  readonly name: string
  readonly hits: number
  readonly misses: number
  readonly entries: number
  readonly bytes: number
  readonly evictions: number
}

/** Counters of the whole cache. `staleServed` is absent where the target does not track it. */
export interface Stats {
  readonly hits: number
  readonly misses: number
  /** hits / (hits + misses), 0 before the first lookup. */
  readonly hitRatio: number
  readonly staleServed?: number | undefined
  readonly evictions: number
  readonly entries: number
  readonly bytes: number
  readonly tiers: ReadonlyArray<TierStats>
}

/** A frequently read key with its (estimated) access count. */
export interface HotKey {
  readonly key: string
  readonly hits: number
}

/** Metadata of one stored entry. The body is read only when asked for. */
export interface EntryInfo {
  readonly key: string
  /** Name of the tier (or backend) the entry was found in. */
  readonly tier: string
  readonly size: number
  readonly createdAt: number
  /** Milliseconds of freshness left (0 when stale), `undefined` for "never expires". */
  readonly ttlLeftMillis: number | undefined
  /** Milliseconds until the entry may no longer be served stale, `undefined` for "never". */
  readonly staleLeftMillis: number | undefined
  readonly tags: ReadonlyArray<string>
  readonly meta: Readonly<Record<string, string>>
  readonly body?: Uint8Array | undefined
}

/** The admin view of a running cache. */
export interface AdminTarget {
  readonly name: string
  readonly health: Effect.Effect<ReadonlyArray<TierHealth>>
  readonly stats: Effect.Effect<Stats, AdminTargetError>
  readonly hotKeys: (limit: number) => Effect.Effect<ReadonlyArray<HotKey>, AdminTargetError>
  readonly tags: Effect.Effect<ReadonlyArray<string>, AdminTargetError>
  readonly keys: (
    pattern: string,
    options: { readonly cursor?: string | undefined; readonly count: number }
  ) => Effect.Effect<CB.KeyPage, AdminTargetError>
  readonly entry: (
    key: string,
    options: { readonly body: boolean }
  ) => Effect.Effect<Option.Option<EntryInfo>, AdminTargetError>
  /**
   * Checks, before anything is removed, that every kind of invalidation asked for is supported, so a
   * request that cannot be served completely changes nothing.
   */
  readonly supports: (capability: Capability) => boolean
  readonly invalidateKeys: (keys: ReadonlyArray<string>) => Effect.Effect<number, AdminTargetError>
  readonly invalidateTags: (tags: ReadonlyArray<string>) => Effect.Effect<number, AdminTargetError>
  readonly invalidatePattern: (pattern: string) => Effect.Effect<number, AdminTargetError>
  readonly clear: Effect.Effect<void, AdminTargetError>
}

/** Optional abilities a target may lack. */
export type Capability = "stats" | "hotKeys" | "tags" | "scan"

/** The target served by the admin API. */
export class AdminTargetTag extends Context.Tag("@cachekit/admin/AdminTarget")<AdminTargetTag, AdminTarget>() {}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** The target cannot do this (the backend lacks the capability). The API answers 501. */
export class NotSupported extends Data.TaggedError("NotSupported")<{
  readonly capability: Capability
  readonly target: string
  readonly message: string
}> {}

/** The cache failed while serving an admin request. The API answers 503. */
export class TargetFailed extends Data.TaggedError("TargetFailed")<{
  readonly operation: string
  readonly cause: CacheError.CacheError
  readonly message: string
}> {}

export type AdminTargetError = NotSupported | TargetFailed

export const notSupported = (target: string, capability: Capability): NotSupported =>
  new NotSupported({
    capability,
    target,
    message: `"${target}" does not support ${capabilityText[capability]}`
  })

const capabilityText: Record<Capability, string> = {
  stats: "stats (the backend keeps no counters)",
  hotKeys: "hot keys (no access-frequency source was given)",
  tags: "tags (the backend keeps no tag index)",
  scan: "key scans and pattern invalidation (the backend cannot list keys)"
}

const TieredCacheTag = TieredCacheModule.TieredCache

const failed = (operation: string) => (cause: CacheError.CacheError) =>
  new TargetFailed({ operation, cause, message: `${operation} failed: ${cause.message}` })

// ---------------------------------------------------------------------------------------------
// Constructors
// ---------------------------------------------------------------------------------------------

/** A source of hot keys, e.g. a frequency sketch or top-K tracker kept beside the backend. */
export type HotKeysSource = (limit: number) => Effect.Effect<ReadonlyArray<HotKey>>

/** Describes one stored entry found in `tier` at time `now`. */
export const describeEntry = (
  key: string,
  tier: string,
  entry: CacheEntry.CacheEntry,
  now: number,
  withBody: boolean
): EntryInfo => ({
  key,
  tier,
  size: entry.size,
  createdAt: entry.createdAt,
  ttlLeftMillis: Number.isFinite(entry.expiresAt) ? Math.max(0, entry.expiresAt - now) : undefined,
  staleLeftMillis: Number.isFinite(entry.staleUntil) ? Math.max(0, entry.staleUntil - now) : undefined,
  tags: entry.tags,
  meta: entry.meta ?? {},
  ...(withBody ? { body: entry.value } : {})
})

/** hits / (hits + misses), 0 when nothing was looked up yet. */
export const hitRatio = (hits: number, misses: number): number => hits + misses === 0 ? 0 : hits / (hits + misses)

/** A memory backend exposes its frequency sketch's hot keys. */
export const isMemoryBackend = (backend: CB.CacheBackend): backend is MemoryBackend.MemoryBackend =>
  "hotKeys" in backend && typeof backend.hotKeys === "function" && "memoryStats" in backend

/** Hot keys from a memory backend's frequency estimates (count-min sketch, so approximate). */
export const memoryHotKeys = (backend: MemoryBackend.MemoryBackend): HotKeysSource => (limit) =>
  Effect.map(backend.hotKeys(limit), (keys) => keys.map((k) => ({ key: k.key, hits: k.frequency })))

/**
 * The admin view of one backend: its `stats`, `tags` and `scan` capabilities are used where present,
 * and answer `NotSupported` where absent. Hot keys come from `options.hotKeys`, or from the backend
 * itself when it is a `MemoryBackend`. Reading an entry's metadata goes through `get`, so it counts
 * as a read in the backend's own statistics (and its frequency sketch).
 */
export const fromBackend = (
  backend: CB.CacheBackend,
  options?: { readonly hotKeys?: HotKeysSource | undefined }
): AdminTarget => {
  const name = backend.name
  const hotKeysSource = options?.hotKeys ?? (isMemoryBackend(backend) ? memoryHotKeys(backend) : undefined)
  const supports = (capability: Capability): boolean => {
    switch (capability) {
      case "stats":
        return backend.stats !== undefined
      case "hotKeys":
        return hotKeysSource !== undefined
      case "tags":
        return backend.tags !== undefined
      case "scan":
        return backend.scan !== undefined
    }
  }
  return {
    name,
    supports,
    health: Effect.map(backend.health, (h) => [{
      name: h.backend,
      status: h.status,
      latencyMillis: h.latencyMillis,
      detail: h.detail
    }]),
    stats: backend.stats === undefined
      ? Effect.fail(notSupported(name, "stats"))
      : Effect.map(backend.stats, (s) => ({
        hits: s.hits,
        misses: s.misses,
        hitRatio: hitRatio(s.hits, s.misses),
        evictions: s.evictions,
        entries: s.entries,
        bytes: s.bytes,
        tiers: [{ name, ...s }]
      })),
    hotKeys: (limit) => hotKeysSource === undefined ? Effect.fail(notSupported(name, "hotKeys")) : hotKeysSource(limit),
    tags: backend.tags === undefined
      ? Effect.fail(notSupported(name, "tags"))
      : Effect.mapError(backend.tags.listTags, failed("listing tags")),
    keys: (pattern, { count, cursor }) =>
      backend.scan === undefined
        ? Effect.fail(notSupported(name, "scan"))
        : Effect.mapError(backend.scan.keys(pattern, { count, cursor }), failed("scanning keys")),
    entry: (key, { body }) =>
      Effect.gen(function*() {
        const found = yield* Effect.mapError(backend.get(key), failed("reading an entry"))
        if (Option.isNone(found)) return Option.none()
        const now = yield* Clock.currentTimeMillis
        return Option.some(describeEntry(key, name, found.value, now, body))
      }),
    invalidateKeys: (keys) =>
      Effect.mapError(
        Effect.reduce(keys, 0, (n, key) => Effect.map(backend.delete(key), (removed) => removed ? n + 1 : n)),
        failed("invalidating keys")
      ),
    invalidateTags: (tags) =>
      backend.tags === undefined
        ? Effect.fail(notSupported(name, "tags"))
        : Effect.mapError(backend.tags.deleteByTags(tags), failed("invalidating tags")),
    invalidatePattern: (pattern) =>
      backend.scan === undefined
        ? Effect.fail(notSupported(name, "scan"))
        : Effect.mapError(backend.scan.deletePattern(pattern), failed("invalidating a pattern")),
    clear: Effect.mapError(backend.clear, failed("clearing"))
  }
}

/** `fromBackend` over the `CacheBackendTag` in context. */
export const layerFromBackend = (
  options?: { readonly hotKeys?: HotKeysSource | undefined }
): Layer.Layer<AdminTargetTag, never, CacheBackend.CacheBackendTag> =>
  Layer.effect(AdminTargetTag, Effect.map(CacheBackend.CacheBackendTag, (backend) => fromBackend(backend, options)))

/**
 * The admin view of a `TieredCache`. Pass the same `tiers` backends the cache was built with to get
 * per-tier health, entry counts and bytes, and to see which tier holds an entry (looked up tier by
 * tier, without promotion). Whole-cache hits are the sum of tier hits (a read hits at most one tier),
 * misses are the last tier's misses, entries and bytes the sum over tiers (an entry held by two tiers
 * counts twice). Hot keys come from `options.hotKeys` or from the first tier if it is a `MemoryBackend`.
 */
export const fromTieredCache = (
  tiered: TieredCache.TieredCache,
  options?: {
    readonly tiers?: ReadonlyArray<CB.CacheBackend> | undefined
    readonly hotKeys?: HotKeysSource | undefined
  }
): AdminTarget => {
  const face = fromBackend(tiered.backend, options)
  const tiers = options?.tiers
  const first = tiers?.[0]
  const hotKeysSource = options?.hotKeys ??
    (first !== undefined && isMemoryBackend(first) ? memoryHotKeys(first) : undefined)
  const tierName = (i: number) => tiered.tierNames[i] ?? tiers?.[i]?.name ?? `tier${i}`
  const zero = { entries: 0, bytes: 0, evictions: 0 }
  return {
    ...face,
    supports: (capability) =>
      capability === "hotKeys" ? hotKeysSource !== undefined : face.supports(capability) || capability === "stats",
    health: tiers === undefined
      ? face.health
      : Effect.forEach(tiers, (backend, i) =>
        Effect.map(backend.health, (h) => ({
          name: tierName(i),
          status: h.status,
          latencyMillis: h.latencyMillis,
          detail: h.detail
        })), { concurrency: "unbounded" }),
    stats: Effect.gen(function*() {
      const counted = yield* tiered.stats
      const stored = yield* Effect.forEach(counted, (_, i) => {
        const backendStats = tiers?.[i]?.stats
        return backendStats === undefined ? Effect.succeed(zero) : backendStats
      })
      const perTier = counted.map((t, i) => ({
        name: t.name,
        hits: t.hits,
        misses: t.misses,
        entries: stored[i]!.entries,
        bytes: stored[i]!.bytes,
        evictions: stored[i]!.evictions
      }))
      const hits = perTier.reduce((n, t) => n + t.hits, 0)
      const misses = perTier.at(-1)?.misses ?? 0
      return {
        hits,
        misses,
        hitRatio: hitRatio(hits, misses),
        evictions: perTier.reduce((n, t) => n + t.evictions, 0),
        entries: perTier.reduce((n, t) => n + t.entries, 0),
        bytes: perTier.reduce((n, t) => n + t.bytes, 0),
        tiers: perTier
      }
    }),
    hotKeys: (limit) =>
      hotKeysSource === undefined ? Effect.fail(notSupported(face.name, "hotKeys")) : hotKeysSource(limit),
    entry: tiers === undefined ? face.entry : (key, { body }) =>
      Effect.gen(function*() {
        for (let i = 0; i < tiers.length; i++) {
          const found = yield* Effect.mapError(tiers[i]!.get(key), failed("reading an entry"))
          if (Option.isSome(found)) {
            const now = yield* Clock.currentTimeMillis
            return Option.some(describeEntry(key, tierName(i), found.value, now, body))
          }
        }
        return Option.none()
      }),
    invalidateKeys: (keys) =>
      Effect.mapError(
        Effect.reduce(keys, 0, (n, key) => Effect.map(tiered.invalidate(key), (removed) => removed ? n + 1 : n)),
        failed("invalidating keys")
      ),
    invalidateTags: (tags) =>
      face.supports("tags")
        ? Effect.mapError(Effect.map(tiered.invalidateTags(tags), (r) => r.affected), failed("invalidating tags"))
        : Effect.fail(notSupported(face.name, "tags")),
    invalidatePattern: (pattern) =>
      face.supports("scan")
        ? Effect.mapError(
          Effect.map(tiered.invalidatePattern(pattern), (r) => r.affected),
          failed("invalidating a pattern")
        )
        : Effect.fail(notSupported(face.name, "scan")),
    clear: Effect.mapError(tiered.clear, failed("clearing"))
  }
}

/** `fromTieredCache` over the `TieredCache` in context. */
export const layerFromTieredCache = (
  options?: Parameters<typeof fromTieredCache>[1]
): Layer.Layer<AdminTargetTag, never, TieredCache.TieredCache> =>
  Layer.effect(
    AdminTargetTag,
    Effect.map(TieredCacheTag, (tiered) => fromTieredCache(tiered, options))
  )

/**
 * Takes hits, misses and stale-served counts from the `Cache` service (what callers of the cache
 * saw, including stale values served in the grace window) instead of the backend's raw reads, and
 * sends key invalidations through `cache.delete`. Per-tier numbers stay the target's.
 */
export const withCacheStats = (target: AdminTarget, cache: Cache.Cache): AdminTarget => ({
  ...target,
  supports: (capability) => capability === "stats" || target.supports(capability),
  stats: Effect.gen(function*() {
    const counted = yield* cache.stats
    const stored = target.supports("stats") ? Option.some(yield* target.stats) : Option.none<Stats>()
    return {
      hits: counted.hits,
      misses: counted.misses,
      hitRatio: hitRatio(counted.hits, counted.misses),
      staleServed: counted.staleServed,
      evictions: counted.evictions ?? Option.match(stored, { onNone: () => 0, onSome: (s) => s.evictions }),
      entries: Option.match(stored, { onNone: () => 0, onSome: (s) => s.entries }),
      bytes: Option.match(stored, { onNone: () => 0, onSome: (s) => s.bytes }),
      tiers: Option.match(stored, { onNone: () => [], onSome: (s) => s.tiers })
    }
  }),
  invalidateKeys: (keys) =>
    Effect.mapError(
      Effect.reduce(keys, 0, (n, key) => Effect.map(cache.delete(key), (removed) => removed ? n + 1 : n)),
      failed("invalidating keys")
    )
})

/** The `Cache` service over the `CacheBackendTag` it runs on: `withCacheStats(fromBackend(backend), cache)`. */
export const layerFromCache = (
  options?: { readonly hotKeys?: HotKeysSource | undefined }
): Layer.Layer<AdminTargetTag, never, Cache.Cache | CacheBackend.CacheBackendTag> =>
  Layer.effect(
    AdminTargetTag,
    Effect.gen(function*() {
      const backend = yield* CacheBackend.CacheBackendTag
      const cache = yield* CacheModule.Cache
      return withCacheStats(fromBackend(backend, options), cache)
    })
  )
