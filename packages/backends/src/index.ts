/**
 * @cachekit/backends: Redis, Memcached and content-addressed disk backends.
 *
 * @since 0.1.0
 */
export * as RedisBackend from "./RedisBackend.js"
