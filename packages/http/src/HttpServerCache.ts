/**
 * A caching middleware for `@effect/platform` servers: wrap an `HttpApp` or an `HttpRouter` and
 * its responses are stored in the `CacheBackend` of the layer and answered from it.
 *
 * - GET/HEAD by default (`methods`), statuses by predicate (`statuses`), `ttl` and a separate
 *   `negativeTtl` for the 4xx/5xx you choose to cache; the handler's Cache-Control is respected
 *   (no-store, private, max-age, s-maxage, stale-while-revalidate, stale-if-error) or overridden.
 * - Keys from built-in extractors (`Key.path`, `Key.pathAndQuery`, `Key.methodAndPath`,
 *   `Key.withHeaders`) or your function returning `Option<string>` (`None`: do not cache).
 * - Concurrent misses for one key run the handler once. Stale responses are served while one
 *   background refresh runs in the layer's scope (`staleWhileRevalidate`, `refreshAhead`) and
 *   when the handler fails (`staleIfError`).
 * - Tags from the request (`tags`) and from response headers (`Cache-Tag`, `Surrogate-Key`,
 *   stripped before the response leaves); `invalidateTags` purges them.
 * - `Range` requests are answered from cached bodies (206, `If-Range`); bodies over
 *   `chunkThreshold` are stored in `chunkSize` chunks, fetched from the handler only when a range
 *   needs them, so memory stays bounded by the chunk size.
 * - Strong ETags (a SHA-256 digest) when the handler gives none; If-None-Match /
 *   If-Modified-Since answered 304 from the cache. Optional gzip/brotli storage with
 *   Accept-Encoding negotiation. `Cache-Status` (RFC 9211), metrics, sampled JSON operation log.
 *
 * @example
 * ```ts
 * const app = HttpRouter.empty.pipe(
 *   HttpRouter.get("/products/:id", productHandler),
 *   HttpServerCache.middleware()
 * )
 * const server = HttpServer.serve(app).pipe(
 *   Layer.provide(HttpServerCache.layerMemory({ ttl: "5 minutes", staleWhileRevalidate: "1 minute" })),
 *   Layer.provide(NodeHttpServer.layer(() => createServer(), { port: 8080 }))
 * )
 * ```
 *
 * @since 0.1.0
 */
import { MemoryBackend } from "@cachekit/core"
import type { CacheBackend, CacheError } from "@cachekit/core"
import type { HttpApp, HttpServerRequest } from "@effect/platform"
import type { Duration, Metric, Option, Scope } from "effect"
import { Context, Effect, Layer } from "effect"
import * as internal from "./internal/server.js"

/** The cache behind `middleware`: one per layer, shared by every route it wraps. */
export interface HttpServerCache {
  /** Wraps an app (a router, a route handler) with this cache, `overrides` on top of the layer's options. */
  readonly wrap: <E, R>(app: HttpApp.Default<E, R>, overrides?: Options) => HttpApp.Default<E, R>
  /** Drops the response stored under `key` (a key as your extractor returns it). */
  readonly invalidate: (key: string) => Effect.Effect<boolean, CacheError.CacheError>
  /** Drops every response carrying any of `tags`; returns how many entries were removed. */
  readonly invalidateTags: (tags: ReadonlyArray<string>) => Effect.Effect<number, CacheError.CacheError>
}

export class HttpServerCacheTag extends Context.Tag("@cachekit/http/HttpServerCache")<
  HttpServerCacheTag,
  HttpServerCache
>() {}

/** The cache key of a request; `None` means "do not cache this request". */
export type KeyExtractor = (request: HttpServerRequest.HttpServerRequest) => Option.Option<string>

/** Built-in key extractors. */
export const Key: {
  /** The path only (`/a/b`): the query string is ignored. */
  readonly path: KeyExtractor
  /** Path and query with the parameters sorted (`/a?x=1&y=2` and `/a?y=2&x=1` share a key). The default. */
  readonly pathAndQuery: KeyExtractor
  /** Method and path (`GET /a`): HEAD gets its own entries. */
  readonly methodAndPath: KeyExtractor
  /** `base` plus the values of request headers (names case-insensitive), for responses that vary on them. */
  readonly withHeaders: (names: ReadonlyArray<string>, base?: KeyExtractor) => KeyExtractor
} = internal.Key

/** One line of the operation log (written as JSON). */
export interface LogLine {
  readonly ts: number
  readonly requestId?: string | undefined
  readonly method: string
  readonly path: string
  /** The key, or its SHA-256 prefix when `hashKeys` is set. */
  readonly key?: string | undefined
  readonly decision: "hit" | "miss" | "stale" | "bypass" | "not-modified" | "stale-if-error" | "collapsed"
  readonly status: number
  readonly detail?: string | undefined
  readonly stored?: boolean | undefined
}

/** Options of the cache (layer) or of one `middleware` (overrides). Everything is optional. */
export interface Options {
  /** Name in `Cache-Status` and metric labels (default `"cachekit"`). */
  readonly name?: string | undefined
  /** Methods looked up and stored (default GET and HEAD; HEAD is answered from GET entries). */
  readonly methods?: ((method: string) => boolean) | undefined
  /** Statuses stored (default 200, 203, 204, 300, 301, 308). Add 404 / 5xx to cache errors (`negativeTtl`). */
  readonly statuses?: ((status: number) => boolean) | undefined
  /** Freshness of stored responses without their own max-age (default 1 minute). */
  readonly ttl?: Duration.DurationInput | undefined
  /** Freshness of stored 4xx/5xx responses (default 10 seconds). */
  readonly negativeTtl?: Duration.DurationInput | undefined
  /** After expiry, serve stale for this long while one background refresh runs (default 0). */
  readonly staleWhileRevalidate?: Duration.DurationInput | undefined
  /** After expiry, serve stale for this long when the handler fails or answers 5xx (default 0). */
  readonly staleIfError?: Duration.DurationInput | undefined
  /** Refresh in the background once a hit finds less than this freshness left (default off). */
  readonly refreshAhead?: Duration.DurationInput | undefined
  /** Smallest body stored, bytes (default 0). */
  readonly minBodySize?: number | undefined
  /** Largest body stored, bytes (default 256 MiB); decided from Content-Length or while streaming. */
  readonly maxBodySize?: number | undefined
  /** Content types never stored; `type/*` matches a whole type (default video/*, audio/*, application/zip, text/event-stream). */
  readonly excludeContentTypes?: ReadonlyArray<string> | undefined
  /** Response headers stored and replayed on hits (lower-case; Content-Type is always kept). */
  readonly storedHeaders?: ReadonlyArray<string> | undefined
  /**
   * `"respect"` (default): the handler's Cache-Control decides (no-store / private / no-cache are
   * not stored, max-age / s-maxage set the freshness). `"override"`: the options decide.
   */
  readonly cacheControl?: "respect" | "override" | undefined
  /** Cache-Control sent to clients on every cacheable response (default: the handler's). */
  readonly responseCacheControl?: string | undefined
  /** Add an RFC 9211 `Cache-Status` header (default `true`). */
  readonly cacheStatus?: boolean | undefined
  /** The key of a request (default `Key.pathAndQuery`). */
  readonly key?: KeyExtractor | undefined
  /** Tags of a request's stored response. */
  readonly tags?: ((request: HttpServerRequest.HttpServerRequest) => ReadonlyArray<string>) | undefined
  /** Response headers read as tag lists and removed before the response leaves (default `cache-tag`, `surrogate-key`). */
  readonly tagHeaders?: ReadonlyArray<string> | undefined
  /** Answer `Range` requests from the cache (default `true`). */
  readonly range?: boolean | undefined
  /** Bodies larger than this are stored in chunks (default 8 MiB, at least `chunkSize`). */
  readonly chunkThreshold?: number | undefined
  /** Size of one stored chunk (default 1 MiB). */
  readonly chunkSize?: number | undefined
  /** Generate a strong ETag (SHA-256 digest) for stored bodies without one (default `true`). */
  readonly etag?: boolean | undefined
  /** Store compressible bodies compressed and negotiate Accept-Encoding (default off). */
  readonly compression?: {
    readonly encoding: "gzip" | "br"
    /** Smallest body compressed (default 1 KiB). */
    readonly minSize?: number | undefined
  } | undefined
  /** Longest a request coalesced behind another's miss waits before running the handler itself (default 30 s). */
  readonly coalesceTimeout?: Duration.DurationInput | undefined
  /** Structured operation log (off by default). */
  readonly log?: {
    /** Fraction of decisions logged, 0..1 (default 1). */
    readonly sample?: number | undefined
    /** Log a SHA-256 prefix of keys instead of the keys (default `false`). */
    readonly hashKeys?: boolean | undefined
    /** Where lines go (default `Effect.logInfo` of the JSON). */
    readonly write?: ((line: LogLine) => Effect.Effect<void>) | undefined
  } | undefined
}

/**
 * Counter of requests by decision: tags `cache` (the `name` option) and `result`
 * (`hit` | `miss` | `stale` | `bypass`).
 */
export const requestsTotal: Metric.Metric.Counter<number> = internal.requestsTotal

/** Builds the cache over the backend in context; background refreshes run in the `Scope`. */
export const make = (
  options: Options = {}
): Effect.Effect<HttpServerCache, never, CacheBackend.CacheBackendTag | Scope.Scope> => internal.make(options)

/** The cache as a Layer over the `CacheBackendTag` in context. */
export const layer = (options: Options = {}): Layer.Layer<HttpServerCacheTag, never, CacheBackend.CacheBackendTag> =>
  Layer.scoped(HttpServerCacheTag, make(options))

/** The cache with its own in-process `MemoryBackend`. */
export const layerMemory = (
  options: Options = {},
  memory: MemoryBackend.Options = {}
): Layer.Layer<HttpServerCacheTag> => layer(options).pipe(Layer.provide(MemoryBackend.layer(memory)))

/**
 * The middleware: caches the responses of the app it wraps with the cache of the layer in context,
 * `overrides` on top of the layer's options. On a miss the app runs in its full request context.
 *
 * @example
 * ```ts
 * HttpRouter.get("/feed", feedHandler.pipe(HttpServerCache.middleware({ ttl: "10 seconds", tags: () => ["feed"] })))
 * ```
 */
export const middleware =
  (overrides?: Options) => <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R | HttpServerCacheTag> =>
    Effect.flatMap(HttpServerCacheTag, (cache) => cache.wrap(app, overrides))

/** Drops every stored response carrying any of `tags`. */
export const invalidateTags = (
  tags: ReadonlyArray<string>
): Effect.Effect<number, CacheError.CacheError, HttpServerCacheTag> =>
  Effect.flatMap(HttpServerCacheTag, (cache) => cache.invalidateTags(tags))

/** Drops the response stored under `key`. */
export const invalidate = (key: string): Effect.Effect<boolean, CacheError.CacheError, HttpServerCacheTag> =>
  Effect.flatMap(HttpServerCacheTag, (cache) => cache.invalidate(key))
