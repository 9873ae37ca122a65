/**
 * A `CacheBackend` on one or more Memcached servers (memjs, binary protocol). Keys are spread
 * over the servers by a consistent hash ring with one client per server, so a dead server fails
 * only its own keys (`BackendUnavailable`) while the others keep serving; after `markDownAfter`
 * consecutive failures it is marked down, so its keys fail at once rather than each waiting for the
 * timeout, and one request probes it every `retryDownAfter`. Its keys are never moved to another
 * server (`onServerDown: "miss"` turns their reads into misses instead of errors). Values are the core wire
 * format (binary safe); TTLs over 30 days are sent as absolute unix times, as memcached requires;
 * keys memcached cannot store (over 250 bytes, spaces, control or non-ASCII characters) are
 * replaced by a SHA-256 digest.
 *
 * No tag or scan capability: memcached cannot enumerate keys or keep sets consistent with
 * expiring entries, so rather than offer a half-working version this backend offers none.
 * `clear` flushes the servers (memcached has no per-prefix delete): give the cache its own servers.
 *
 * ```ts
 * const backend = MemcachedBackend.layer({ servers: ["127.0.0.1:11211", "127.0.0.1:11212"] })
 * ```
 *
 * @since 0.1.0
 */
import type { CacheBackend } from "@cachekit/core"
import { CacheBackend as Backend } from "@cachekit/core"
import type { ConfigError, Scope } from "effect"
import { Config, Duration, Effect, Layer, Option } from "effect"
import { makeMemcachedBackend } from "./internal/memcachedBackend.js"

/** Options of the Memcached backend. */
export interface Options {
  /** `host:port` of each server. Default `["127.0.0.1:11211"]`. */
  readonly servers?: ReadonlyArray<string> | undefined
  /** Prepended to every key. Default `cachekit:`. */
  readonly prefix?: string | undefined
  /** An operation not answered within this fails with `BackendTimeout`. Default 500 ms. */
  readonly timeout?: Duration.DurationInput | undefined
  /**
   * Largest encoded entry accepted (`EntryTooLarge` above). Default 1,000,000 bytes, under
   * memcached's default item size of 1 MiB (`-I` raises it on the server).
   */
  readonly maxEntrySize?: number | undefined
  /** Points per server on the hash ring. Default 160. */
  readonly pointsPerServer?: number | undefined
  /** Name reported by `health` and in errors. Default `memcached`. */
  readonly name?: string | undefined
  /**
   * Consecutive failures (unreachable or timed out) after which a server is marked down: its keys
   * then fail at once instead of each request waiting for the timeout. Default 3.
   */
  readonly markDownAfter?: number | undefined
  /** How long a server marked down is skipped before one request probes it again. Default 1 second. */
  readonly retryDownAfter?: Duration.DurationInput | undefined
  /**
   * What `get` gives for a key whose server is down (unreachable, timed out or marked down):
   * `"error"` (default) a typed `BackendUnavailable` / `BackendTimeout`, `"miss"` no entry. Either
   * way the key is not moved to another server, and `set`/`delete`/`clear` still fail typed (a
   * delete that did not happen must not look done: the server may come back with the old value).
   * `Cache.getOrCompute` and the HTTP proxy already treat a failed read as a miss, so `"miss"` only
   * changes what direct `get` callers (and `Cache.get`) see.
   */
  readonly onServerDown?: "error" | "miss" | undefined
}

/** Creates one client per server; they are closed when the scope closes. */
export const make = (options: Options = {}): Effect.Effect<CacheBackend.CacheBackend, never, Scope.Scope> =>
  makeMemcachedBackend({
    servers: options.servers ?? ["127.0.0.1:11211"],
    prefix: options.prefix ?? "cachekit:",
    timeoutMillis: Duration.toMillis(options.timeout ?? Duration.millis(500)),
    maxEntrySize: options.maxEntrySize ?? 1_000_000,
    pointsPerServer: options.pointsPerServer ?? 160,
    name: options.name ?? "memcached",
    markDownAfter: Math.max(1, options.markDownAfter ?? 3),
    retryDownAfterMillis: Duration.toMillis(options.retryDownAfter ?? Duration.seconds(1)),
    onServerDown: options.onServerDown ?? "error"
  })

/** The backend as a Layer. */
export const layer = (options: Options = {}): Layer.Layer<Backend.CacheBackendTag> =>
  Layer.scoped(Backend.CacheBackendTag, make(options))

/**
 * Reads `CACHEKIT_MEMCACHED_SERVERS` (comma separated `host:port`, default `127.0.0.1:11211`),
 * `CACHEKIT_MEMCACHED_PREFIX`, `CACHEKIT_MEMCACHED_TIMEOUT` (a duration) and
 * `CACHEKIT_MEMCACHED_MAX_ENTRY_SIZE` through `Config`; `overrides` win.
 */
export const layerConfig = (
  overrides: Options = {}
): Layer.Layer<Backend.CacheBackendTag, ConfigError.ConfigError> =>
  Layer.scoped(Backend.CacheBackendTag, Effect.flatMap(config, (fromEnv) => make({ ...fromEnv, ...overrides })))

/** The environment configuration `layerConfig` reads. */
export const config: Config.Config<Options> = Config.all({
  servers: Config.string("CACHEKIT_MEMCACHED_SERVERS").pipe(Config.withDefault("127.0.0.1:11211")),
  prefix: Config.string("CACHEKIT_MEMCACHED_PREFIX").pipe(Config.withDefault("cachekit:")),
  timeout: Config.duration("CACHEKIT_MEMCACHED_TIMEOUT").pipe(Config.withDefault(Duration.millis(500))),
  maxEntrySize: Config.option(Config.integer("CACHEKIT_MEMCACHED_MAX_ENTRY_SIZE"))
}).pipe(Config.map((c) => ({
  servers: c.servers.split(",").map((s) => s.trim()).filter((s) => s.length > 0),
  prefix: c.prefix,
  timeout: c.timeout,
  maxEntrySize: Option.getOrUndefined(c.maxEntrySize)
})))

/** The key sent to memcached: `prefix + key`, or a digest of it when memcached could not store it. */
export { storageKey } from "./internal/memcachedBackend.js"

/**
 * The `expires` value memcached expects for keeping an item `retainMillis` (undefined: forever)
 * at `nowMillis`: 0 for never, seconds (rounded up) up to 30 days, an absolute unix time above.
 */
export { expiration, RELATIVE_EXPIRATION_LIMIT_SECONDS } from "./internal/memcachedBackend.js"
