/**
 * @cachekit/core: contracts (backend, entry, codecs, errors), the W-TinyLFU memory backend,
 * the Cache service and tiers.
 *
 * @module @cachekit/core
 * @since 0.1.0
 */
export * as AutoRefresh from "./AutoRefresh.js"
export * as Cache from "./Cache.js"
export * as CacheBackend from "./CacheBackend.js"
export * as CacheEntry from "./CacheEntry.js"
export * as CacheError from "./CacheError.js"
export * as Codec from "./Codec.js"
export * as InvalidationBus from "./InvalidationBus.js"
export * as MemoryBackend from "./MemoryBackend.js"
export * as TieredCache from "./TieredCache.js"
