/**
 * @cachekit/backends: Redis, Memcached and content-addressed disk backends.
 *
 * @module @cachekit/backends
 * @since 0.1.0
 */
export * as DiskBackend from "./DiskBackend.js"
export * as MemcachedBackend from "./MemcachedBackend.js"
export * as RedisBackend from "./RedisBackend.js"
export * as RedisInvalidationBus from "./RedisInvalidationBus.js"
export * as RedisLock from "./RedisLock.js"
export * as RedisSingleFlight from "./RedisSingleFlight.js"
export * as RedisStreams from "./RedisStreams.js"
