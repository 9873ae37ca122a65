/**
 * A `CacheBackend` on Redis (ioredis 5): entries in the core wire format with a PX TTL until
 * `staleUntil`, tags as Redis sets kept consistent with their entries, SCAN-based key scans, PING
 * health. The connection lives in the Layer's scope (quit on release); commands fail fast with
 * `BackendUnavailable` / `BackendTimeout` instead of queueing while Redis is down.
 *
 * ```ts
 * const backend = RedisBackend.layer({ url: "redis://127.0.0.1:6379", prefix: "myapp:" })
 * ```
 *
 * Key layout (see the package README): `<prefix>e{<key>}` entry, `<prefix>l{<key>}` the entry's tag
 * links (same hash slot as the entry), `<prefix>t{<tag>}` the set of keys carrying a tag.
 *
 * @since 0.1.0
 */
import type { CacheBackend, CacheError } from "@cachekit/core"
import { CacheBackend as Backend } from "@cachekit/core"
import type { ConfigError, Scope } from "effect"
import { Config, Duration, Effect, Layer, Option } from "effect"
import { makeRedisBackend } from "./internal/redisBackend.js"
import { passwordOf, type ServerOptions } from "./internal/redisConnection.js"

/** Options of the Redis backend. */
export interface Options extends ServerOptions {
  /** Namespace of every key this backend writes (no `{` or `}`); `clear` stays inside it. Default `cachekit:`. */
  readonly prefix?: string | undefined
  /** A command not answered within this fails with `BackendTimeout`. Default 1 second. */
  readonly commandTimeout?: Duration.DurationInput | undefined
  /** Connecting longer than this fails. Default 2 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** Largest encoded value accepted (`EntryTooLarge` above). Default 64 MiB (Redis' own limit is 512 MB). */
  readonly maxEntrySize?: number | undefined
  /** COUNT hint of each SCAN call made by `clear`/`deletePattern`/`listTags`. Default 500. */
  readonly scanCount?: number | undefined
  /** Name reported by `health` and in errors. Default `redis`. */
  readonly name?: string | undefined
  /**
   * Redis Cluster seed nodes: when given, the backend uses an ioredis `Cluster` client (url, host,
   * port and db are ignored; username/password apply to every node). Scans run on every master.
   */
  readonly cluster?: ReadonlyArray<ClusterNode> | undefined
}

/** One node of a Redis Cluster (any node works as a seed; the client discovers the others). */
export interface ClusterNode {
  readonly host: string
  readonly port: number
}

/**
 * Connects to Redis and returns the backend; the connection is closed (QUIT) when the scope closes.
 * Fails with `BackendUnavailable` when Redis cannot be reached at start.
 */
export const make = (
  options: Options = {}
): Effect.Effect<CacheBackend.CacheBackend, CacheError.CacheError, Scope.Scope> => makeRedisBackend(resolve(options))

/** The backend as a Layer. */
export const layer = (options: Options = {}): Layer.Layer<Backend.CacheBackendTag, CacheError.CacheError> =>
  Layer.scoped(Backend.CacheBackendTag, make(options))

/**
 * Reads `CACHEKIT_REDIS_URL` (default `redis://127.0.0.1:6379`), `CACHEKIT_REDIS_PREFIX` (default
 * `cachekit:`), `CACHEKIT_REDIS_COMMAND_TIMEOUT` (a duration, default `1 second`),
 * `CACHEKIT_REDIS_MAX_ENTRY_SIZE` (bytes) and `CACHEKIT_REDIS_CLUSTER` (comma-separated
 * `host:port` seed nodes; switches to Cluster mode) through `Config`; `overrides` win over the environment.
 */
export const layerConfig = (
  overrides: Options = {}
): Layer.Layer<Backend.CacheBackendTag, CacheError.CacheError | ConfigError.ConfigError> =>
  Layer.scoped(
    Backend.CacheBackendTag,
    Effect.flatMap(config, (fromEnv) => make({ ...fromEnv, ...overrides }))
  )

/** The environment configuration `layerConfig` reads. */
export const config: Config.Config<Options> = Config.all({
  url: Config.string("CACHEKIT_REDIS_URL").pipe(Config.withDefault("redis://127.0.0.1:6379")),
  prefix: Config.string("CACHEKIT_REDIS_PREFIX").pipe(Config.withDefault("cachekit:")),
  commandTimeout: Config.duration("CACHEKIT_REDIS_COMMAND_TIMEOUT").pipe(Config.withDefault(Duration.seconds(1))),
  maxEntrySize: Config.option(Config.integer("CACHEKIT_REDIS_MAX_ENTRY_SIZE")),
  cluster: Config.option(Config.string("CACHEKIT_REDIS_CLUSTER"))
}).pipe(Config.map((c) => ({
  url: c.url,
  prefix: c.prefix,
  commandTimeout: c.commandTimeout,
  maxEntrySize: Option.getOrUndefined(c.maxEntrySize),
  cluster: Option.getOrUndefined(Option.map(c.cluster, parseClusterNodes))
})))

/** Parses `host:port,host:port` (a bare host means port 6379). */
export const parseClusterNodes = (list: string): ReadonlyArray<ClusterNode> =>
  list.split(",").map((s) => s.trim()).filter((s) => s.length > 0).map((s) => {
    const colon = s.lastIndexOf(":")
    const bracketed = s.startsWith("[") && !s.endsWith("]")
    if (colon < 0 || (s.startsWith("[") && !bracketed)) return { host: s.replace(/^\[(.*)\]$/, "$1"), port: 6379 }
    return { host: s.slice(0, colon).replace(/^\[(.*)\]$/, "$1"), port: Number(s.slice(colon + 1)) }
  })

// ---------------------------------------------------------------------------------------------

/** Options resolved once when the backend is built. */
export interface ResolvedOptions {
  readonly url: string | undefined
  readonly host: string
  readonly port: number
  readonly db: number | undefined
  readonly username: string | undefined
  readonly password: string | undefined
  readonly prefix: string
  readonly commandTimeoutMillis: number
  readonly connectTimeoutMillis: number
  readonly maxEntrySize: number
  readonly scanCount: number
  readonly name: string
  readonly cluster: ReadonlyArray<ClusterNode> | undefined
}

const resolve = (options: Options): ResolvedOptions => {
  let host = options.host ?? "127.0.0.1"
  let port = options.port ?? 6379
  if (options.url !== undefined) {
    try {
      const u = new URL(options.url)
      host = u.hostname || host
      port = u.port === "" ? 6379 : Number(u.port)
    } catch {
      // ioredis reports an unparsable URL when connecting; keep the defaults for messages
    }
  }
  return {
    url: options.url,
    host,
    port,
    db: options.db,
    username: options.username,
    password: passwordOf(options.password),
    prefix: options.prefix ?? "cachekit:",
    commandTimeoutMillis: Duration.toMillis(options.commandTimeout ?? Duration.seconds(1)),
    connectTimeoutMillis: Duration.toMillis(options.connectTimeout ?? Duration.seconds(2)),
    maxEntrySize: options.maxEntrySize ?? 64 * 1024 * 1024,
    scanCount: options.scanCount ?? 500,
    name: options.name ?? "redis",
    cluster: options.cluster !== undefined && options.cluster.length > 0 ? options.cluster : undefined
  }
}
