/**
 * An RFC 9111 cache in front of any `HttpClient` from `@effect/platform` (undici, node:http, fetch).
 *
 * Responses to GET and HEAD are stored in the `CacheBackend` from context, with their policy
 * (`HttpCachePolicy.StoredPolicy`) as JSON in the entry's `meta`. Bodies stream: a miss streams to
 * the caller while it is written to the backend, a hit streams from the backend. Concurrent
 * identical misses share one upstream request. Stale entries are revalidated with conditional
 * requests, served while revalidating in the background (`stale-while-revalidate`), or served when
 * the upstream fails (`stale-if-error`). Unsafe methods pass through and invalidate (§4.4).
 *
 * @example
 * ```ts
 * const program = Effect.gen(function*() {
 *   const client = yield* HttpClient.HttpClient
 *   const res = yield* client.get("http://127.0.0.1:8080/products?page=2")
 *   return res.headers["cache-status"] // "cachekit; fwd=uri-miss; stored"
 * }).pipe(
 *   Effect.provide(HttpClientCache.layer({ shared: false, maxTtl: "1 hour" })),
 *   Effect.provide(MemoryBackend.layer({ maxBytes: 64 * 1024 * 1024 })),
 *   Effect.provide(NodeHttpClient.layerUndici)
 * )
 * ```
 *
 * @since 0.1.0
 */
import type { RedisSingleFlight } from "@cachekit/backends"
import type { CacheBackend } from "@cachekit/core"
import { HttpClient } from "@effect/platform"
import type { HttpClientRequest, HttpClientResponse } from "@effect/platform"
import type { Duration, Scope } from "effect"
import { Data, Effect, Layer } from "effect"
import type { CacheMode, RequestSnapshot, ResponseSnapshot } from "./HttpCachePolicy.js"
import * as internal from "./internal/client.js"
import * as internalResponse from "./internal/clientResponse.js"

/** How the cache treats requests and responses. Everything is optional. */
export interface Options {
  /** Shared cache (a proxy: honours s-maxage, never stores `private`) or private (default `false`). */
  readonly shared?: boolean | undefined
  /** Cache name in `Cache-Status` (default `"cachekit"`). */
  readonly name?: string | undefined
  /**
   * Primary cache key of a request (default: `"<METHOD> <absolute URL>"`, the query string kept).
   * Vary is handled on top of it (secondary keys), so do not add request headers here.
   */
  readonly key?: ((request: RequestSnapshot) => string) | undefined
  /** Cache mode per request (default `"default"`: the RFC 9111 rules). */
  readonly mode?: ((request: HttpClientRequest.HttpClientRequest) => CacheMode) | undefined
  /** Keys to delete before the request is handled (e.g. a POST to /items busts `GET .../items`). */
  readonly bust?:
    | ((request: HttpClientRequest.HttpClientRequest, key: string) => ReadonlyArray<string>)
    | undefined
  /**
   * Overrides the mode for one response: `"no-store"` keeps it out of the cache, `"ignore-rules"`
   * stores it whatever its Cache-Control says. `undefined` keeps the request's mode.
   */
  readonly responseMode?:
    | ((request: RequestSnapshot, response: ResponseSnapshot) => CacheMode | undefined)
    | undefined
  /** Cap on any freshness lifetime (and the lifetime of `ignore-rules` entries). */
  readonly maxTtl?: Duration.DurationInput | undefined
  /** Add an RFC 9211 `Cache-Status` header to every response (default `true`). */
  readonly cacheStatus?: boolean | undefined
  /** Add `x-cache: HIT | MISS | STALE | REVALIDATED | BYPASS` (default `false`). */
  readonly xCache?: boolean | undefined
  /** Largest body stored in a backend without streaming writes (default 16 MiB); larger ones pass through. */
  readonly maxBodySize?: number | undefined
  /** RFC 9111 §4.2.2 heuristic freshness as a fraction of (Date - Last-Modified) (default 0.1). */
  readonly heuristicFraction?: number | undefined
  /** RFC 9213 targeted fields honoured over Cache-Control, shared caches only (e.g. `["cdn-cache-control"]`). */
  readonly targetedCacheControl?: ReadonlyArray<string> | undefined
  /** Longest a coalesced request waits for the leading request's entry before going upstream itself (default 30 s). */
  readonly coalesceTimeout?: Duration.DurationInput | undefined
  /** How long a stale entry with a validator is kept for conditional revalidation (default 1 hour). */
  readonly staleRetention?: Duration.DurationInput | undefined
  /**
   * Coalesces misses across processes sharing one backend (e.g. `redisSingleFlight(flight)`): the
   * request leading a miss in this process first asks the gate; when another process is already
   * fetching the same primary key, it waits for that fetch and reads the shared backend again
   * instead of going upstream. Not used for requests with `Authorization`, for `no-cache`-like modes
   * that must not read the cache, nor for revalidations. Default: none (coalescing per process only).
   */
  readonly distributedSingleFlight?: DistributedSingleFlight | undefined
  /**
   * With `distributedSingleFlight`: how long a primary key whose last fetch was not storable
   * (`no-store`, `private` in a shared cache, too large...) skips the gate, so concurrent misses of
   * it in several processes go upstream side by side instead of each waiting for another's fetch.
   * A stored response ends the window at once; each unstorable one renews it. At most 10 000 keys
   * are remembered per client (the oldest mark is forgotten first). Default 10 seconds; 0 turns it off.
   */
  readonly uncacheableTtl?: Duration.DurationInput | undefined
}

/** What became of one upstream fetch, as another process learns it. */
export type FetchOutcome = "stored" | "uncacheable" | "abandoned"

/**
 * A gate shared by several processes: one fetch per key at a time across all of them.
 *
 * `run(key, fetch)` runs `fetch` here, unless another process is running a fetch for `key`: then
 * it waits for that one to end and returns the outcome it reported, without running `fetch`. It
 * never fails; when the coordination is out of reach (or a wait times out) it runs `fetch` here
 * (`redisSingleFlight` stops asking an unreachable Redis for a while: see `RedisSingleFlight.Options.breaker`).
 * `fetch` completes when the response is stored in the shared backend, or known not to be.
 *
 * Only the outcome travels between processes; the response itself is read from the shared
 * backend through the normal lookup, so Vary variants and per-user responses stay apart.
 */
export interface DistributedSingleFlight {
  readonly run: (key: string, fetch: Effect.Effect<FetchOutcome>) => Effect.Effect<FetchOutcome>
}

const OUTCOME_BYTES: Readonly<Record<FetchOutcome, Uint8Array>> = {
  stored: Uint8Array.of(0x73),
  uncacheable: Uint8Array.of(0x75),
  abandoned: Uint8Array.of(0x61)
}

const outcomeOf = (bytes: Uint8Array): FetchOutcome =>
  bytes[0] === 0x73 ? "stored" : bytes[0] === 0x75 ? "uncacheable" : "abandoned"

/** The fetch here stored nothing (it failed or its caller went away). */
class Abandoned extends Data.TaggedError("Abandoned")<{ readonly key: string }> {}

/**
 * The gate over a `RedisSingleFlight` (lock, `done` message, handoff of the outcome's one byte).
 * An abandoned fetch is reported as a failure to it, so it frees the lock at once and ONE waiter
 * takes over; the others keep waiting for that one.
 *
 * @example
 * ```ts
 * const flight = yield* RedisSingleFlight.make({ url: "redis://127.0.0.1:6379", prefix: "myapp:" })
 * const cached = yield* HttpClientCache.withCache({ shared: true, distributedSingleFlight: HttpClientCache.redisSingleFlight(flight) })(client)
 * ```
 */
export const redisSingleFlight = (flight: RedisSingleFlight.RedisSingleFlight): DistributedSingleFlight => ({
  run: (key, fetch) =>
    flight.wrap(
      key,
      Effect.flatMap(fetch, (outcome) =>
        outcome === "abandoned" ? Effect.fail(new Abandoned({ key })) : Effect.succeed(OUTCOME_BYTES[outcome]))
    ).pipe(
      Effect.map(outcomeOf),
      Effect.catchTag("Abandoned", () =>
        Effect.succeed("abandoned" as const))
    )
})

/**
 * Wraps `client` with the cache. The backend comes from `CacheBackendTag`; background
 * revalidations (stale-while-revalidate) run in the `Scope` and stop when it closes.
 *
 * @example
 * ```ts
 * const cached = yield* HttpClientCache.withCache({ shared: true })(yield* HttpClient.HttpClient)
 * ```
 */
export const withCache = (options: Options = {}) =>
(
  client: HttpClient.HttpClient
): Effect.Effect<HttpClient.HttpClient, never, CacheBackend.CacheBackendTag | Scope.Scope> =>
  internal.make(internal.resolveOptions(options), client)

/**
 * Replaces the `HttpClient` in context with a caching one over it.
 *
 * @example
 * ```ts
 * program.pipe(Effect.provide(HttpClientCache.layer({ xCache: true })), Effect.provide(NodeHttpClient.layerUndici))
 * ```
 */
export const layer = (
  options: Options = {}
): Layer.Layer<HttpClient.HttpClient, never, HttpClient.HttpClient | CacheBackend.CacheBackendTag> =>
  Layer.scoped(HttpClient.HttpClient, Effect.flatMap(HttpClient.HttpClient, withCache(options)))

/**
 * The whole body of a response the cache answered from an in-memory entry, or `undefined` (then
 * read `response.stream`). Lets a server write a hit in one piece, without stream machinery.
 *
 * @example
 * ```ts
 * const bytes = HttpClientCache.wholeBody(response)
 * return bytes !== undefined ? HttpServerResponse.uint8Array(bytes, opts) : HttpServerResponse.stream(response.stream, opts)
 * ```
 */
export const wholeBody: (response: HttpClientResponse.HttpClientResponse) => Uint8Array | undefined =
  internalResponse.wholeBody
