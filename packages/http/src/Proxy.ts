/**
 * The caching reverse proxy: an `HttpServer` on Node that forwards every request to one upstream
 * origin through an `HttpClient` (wrap that client in `HttpClientCache` in shared mode to cache),
 * streaming bodies both ways, keeping hop-by-hop fields out, adding `Via` and `X-Forwarded-*`,
 * answering 502 when the upstream is unreachable and 504 when it is too slow, and draining in-flight
 * requests on shutdown.
 *
 * ```ts
 * import { NodeHttpClient, NodeRuntime } from "@effect/platform-node"
 * import { Layer } from "effect"
 * import { Proxy } from "@cachekit/http"
 *
 * Proxy.layer({ upstream: "http://127.0.0.1:8080", port: 3128 }).pipe(
 *   Layer.provide(NodeHttpClient.layerUndici),
 *   Layer.launch,
 *   NodeRuntime.runMain
 * )
 * ```
 *
 * @since 0.1.0
 */
import type { CacheBackend } from "@cachekit/core"
import type { HttpApp } from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { HttpClient, HttpMiddleware } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import type { ConfigError } from "effect"
import { Config, Context, Data, Duration, Effect, Layer } from "effect"
import * as Http from "node:http"
import * as HttpClientCache from "./HttpClientCache.js"
import * as internal from "./internal/proxy.js"
import * as fastPath from "./internal/proxyFastPath.js"

/** A running proxy. */
export interface Proxy {
  /** Where the proxy listens, e.g. `http://127.0.0.1:3128`. */
  readonly url: string
  readonly hostname: string
  readonly port: number
  /** The origin every request is forwarded to. */
  readonly upstream: URL
  /** Requests being answered right now (a response still streaming counts). */
  readonly inFlight: Effect.Effect<number>
}

/** The running proxy, for whoever needs its address (tests, the CLI banner, an admin API). */
export class ProxyTag extends Context.Tag("@cachekit/http/Proxy")<ProxyTag, Proxy>() {}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** `upstream` is not an absolute http(s) URL. */
export class InvalidUpstream extends Data.TaggedError("InvalidUpstream")<{
  readonly upstream: string
  readonly message: string
}> {}

/** The proxy could not listen (port taken, permission denied...). */
export type ServeError = HttpServerError.ServeError

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/** How the proxy listens and forwards. */
export interface Options {
  /** Origin to forward to, e.g. `http://127.0.0.1:8080` (a path prefix is kept: `http://h/api`). */
  readonly upstream: string | URL
  /** Port to listen on; 0 picks a free port. Default 3128. */
  readonly port?: number | undefined
  /** Interface to listen on. Default `127.0.0.1`. */
  readonly host?: string | undefined
  /** Longest wait for the upstream's response head before answering 504. Default 30 seconds. */
  readonly upstreamTimeout?: Duration.DurationInput | undefined
  /** On shutdown, how long in-flight requests may take before their connections are cut. Default 10 seconds. */
  readonly shutdownGrace?: Duration.DurationInput | undefined
  /** Pseudonym this hop writes into `Via` (RFC 9110 §7.6.3). Default `cachekit`. */
  readonly via?: string | undefined
  /** Server and client spans per request (costs time on every hit). Default false. */
  readonly tracing?: boolean | undefined
  /**
   * Response fields removed before answering, e.g. `["cdn-cache-control"]` when this proxy is the
   * last CDN-like hop (RFC 9213 §2.1). Matched case-insensitively.
   */
  readonly stripResponseFields?: ReadonlyArray<string> | undefined
  /**
   * Wraps the forwarding app before it is served, e.g. to answer an admin prefix on the proxy's own
   * port (`cachekit proxy --admin`). Whatever it does not handle should go to the app it was given.
   */
  readonly mount?: ((app: HttpApp.Default) => HttpApp.Default) | undefined
  /**
   * Fields set on every response this server sends (hits, misses, errors, whatever `mount` answers),
   * e.g. `{ "cachekit-instance": "2" }` from the workers of `cachekit proxy --instances N`.
   */
  readonly responseHeaders?: Readonly<Record<string, string>> | undefined
}

/** `Options` plus the cache the proxy runs in shared mode (RFC 9111 §3: s-maxage, no `private`). */
export interface CachingOptions extends Options {
  readonly cache?: Omit<HttpClientCache.Options, "shared"> | undefined
}

/** Defaults, in one place for the CLI's help text. */
export const defaults = {
  port: 3128,
  host: "127.0.0.1",
  upstreamTimeoutMillis: 30_000,
  shutdownGraceMillis: 10_000,
  via: "cachekit"
} as const

/**
 * The proxy's settings from the environment: `CACHEKIT_UPSTREAM` (required), `CACHEKIT_PORT`,
 * `CACHEKIT_HOST`, `CACHEKIT_UPSTREAM_TIMEOUT` and `CACHEKIT_SHUTDOWN_GRACE` (durations such as
 * `5 seconds` or milliseconds), `CACHEKIT_VIA`.
 */
export const config: Config.Config<Options> = Config.all({
  upstream: Config.string("CACHEKIT_UPSTREAM"),
  port: internal.portConfig("CACHEKIT_PORT", defaults.port),
  host: Config.string("CACHEKIT_HOST").pipe(Config.withDefault(defaults.host)),
  upstreamTimeout: internal.durationConfig("CACHEKIT_UPSTREAM_TIMEOUT", defaults.upstreamTimeoutMillis),
  shutdownGrace: internal.durationConfig("CACHEKIT_SHUTDOWN_GRACE", defaults.shutdownGraceMillis),
  via: Config.string("CACHEKIT_VIA").pipe(Config.withDefault(defaults.via))
})

/** Parses and checks an upstream URL: absolute, http or https, no query or fragment. */
export const parseUpstream = (upstream: string | URL): Effect.Effect<URL, InvalidUpstream> =>
  Effect.suspend(() => {
    const text = upstream.toString()
    const url = URL.canParse(text) ? new URL(text) : undefined
    if (url === undefined || (url.protocol !== "http:" && url.protocol !== "https:")) {
      return Effect.fail(
        new InvalidUpstream({
          upstream: text,
          message: `upstream "${text}" is not an absolute http:// or https:// URL (example: http://127.0.0.1:8080)`
        })
      )
    }
    if (url.search !== "" || url.hash !== "") {
      return Effect.fail(
        new InvalidUpstream({ upstream: text, message: `upstream "${text}" must not have a query string or fragment` })
      )
    }
    return Effect.succeed(url)
  })

// ---------------------------------------------------------------------------------------------
// Constructors
// ---------------------------------------------------------------------------------------------

/**
 * The forwarding `HttpApp` on its own, for mounting in another server: every request goes to
 * `upstream` through the `HttpClient` in context. It never fails: upstream errors become 502 / 504.
 */
export const toHttpApp = (
  options: Pick<Options, "upstream" | "upstreamTimeout" | "via">
): Effect.Effect<HttpApp.Default, InvalidUpstream, HttpClient.HttpClient> =>
  Effect.gen(function*() {
    const upstream = yield* parseUpstream(options.upstream)
    const client = yield* HttpClient.HttpClient
    return internal.makeApp(client, internal.resolve({ ...options, upstream }), true)
  })

/**
 * Listens on `host:port` and forwards to `upstream` through the `HttpClient` in context. Closing
 * the layer stops accepting connections, lets in-flight requests finish (up to `shutdownGrace`,
 * then cuts them), and only then releases what the client depends on (cache backend, sockets).
 */
export const layer = (options: Options): Layer.Layer<ProxyTag, InvalidUpstream | ServeError, HttpClient.HttpClient> =>
  makeLayer(options, true)

const makeLayer = (
  options: Options,
  timeoutInApp: boolean
): Layer.Layer<ProxyTag, InvalidUpstream | ServeError, HttpClient.HttpClient> =>
  Layer.scoped(
    ProxyTag,
    Effect.gen(function*() {
      const upstream = yield* parseUpstream(options.upstream)
      const resolved = internal.resolve({ ...options, upstream })
      const client = yield* HttpClient.HttpClient
      const server = Http.createServer({
        // Uploads stream through; the whole-request clock would cut long ones.
        requestTimeout: 0
      })
      const tracker = internal.trackRequests(server)
      yield* fastPath.install(server, tracker, client, resolved)
      if (options.responseHeaders !== undefined) setOnEveryResponse(server, options.responseHeaders)
      const httpServer = yield* NodeHttpServer.make(() => server, {
        port: options.port ?? defaults.port,
        host: options.host ?? defaults.host
      })
      const forwarding = internal.makeApp(client, resolved, timeoutInApp)
      const app = options.mount === undefined ? forwarding : options.mount(forwarding)
      // The request fibers inherit the fiber refs of this `serve` call: spans are off unless asked for.
      yield* resolved.tracing
        ? httpServer.serve(app)
        : httpServer.serve(app).pipe(HttpMiddleware.withTracerDisabledWhenEffect(() => true))
      // Added last, so it runs first on close: drain before the handler is detached and the server closed.
      yield* Effect.addFinalizer(() => internal.drain(server, tracker, resolved.shutdownGraceMillis))
      const address = httpServer.address
      const hostname = address._tag === "TcpAddress" ? address.hostname : "localhost"
      const port = address._tag === "TcpAddress" ? address.port : 0
      return {
        url: `http://${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`,
        hostname,
        port,
        upstream,
        inFlight: Effect.sync(() => tracker.inFlight)
      }
    })
  )

/**
 * Sets `fields` on each response as its request arrives, in front of every "request" listener (the
 * fast path's included); `writeHead` merges them with the fields it is given.
 */
const setOnEveryResponse = (server: Http.Server, fields: Readonly<Record<string, string>>): void => {
  const entries = Object.entries(fields)
  const emit = server.emit
  server.emit = function(this: Http.Server, event: string | symbol, ...args: Array<unknown>): boolean {
    if (event === "request") {
      const res = args[1] as Http.ServerResponse
      for (const [name, value] of entries) res.setHeader(name, value)
    }
    return Reflect.apply(emit, this, [event, ...args]) as boolean
  } as Http.Server["emit"]
}

/**
 * The caching proxy: `layer` over `HttpClientCache` in shared-cache mode, storing in the
 * `CacheBackendTag` from context. Responses carry `Cache-Status` and `Age`; unsafe methods pass
 * through and invalidate what they change (RFC 9111 §4.4).
 *
 * ```ts
 * Proxy.layerCaching({ upstream: "http://127.0.0.1:8080", cache: { maxBodySize: 64 * 1024 * 1024 } }).pipe(
 *   Layer.provide(MemoryBackend.layer({ maxBytes: 256 * 1024 * 1024 })),
 *   Layer.provide(NodeHttpClient.layerUndici),
 *   Layer.launch,
 *   NodeRuntime.runMain
 * )
 * ```
 */
export const layerCaching = (
  options: CachingOptions
): Layer.Layer<ProxyTag, InvalidUpstream | ServeError, HttpClient.HttpClient | CacheBackend.CacheBackendTag> =>
  makeLayer(options, false).pipe(
    Layer.provide(HttpClientCache.layer({ ...options.cache, shared: true })),
    // The timeout sits under the cache: hits never start a timer, upstream trips do.
    Layer.provide(
      Layer.effect(
        HttpClient.HttpClient,
        Effect.map(HttpClient.HttpClient, (client) =>
          internal.withUpstreamTimeout(
            client,
            Duration.toMillis(Duration.decode(options.upstreamTimeout ?? defaults.upstreamTimeoutMillis))
          ))
      )
    )
  )

/** `layer` with its options from `config` (environment variables). */
export const layerConfig = (
  overrides?: Partial<Options>
): Layer.Layer<ProxyTag, InvalidUpstream | ServeError | ConfigError.ConfigError, HttpClient.HttpClient> =>
  Layer.unwrapEffect(Effect.map(config, (fromEnv) => layer({ ...fromEnv, ...overrides })))

/** The address the proxy listens on, as a URL string (handy in tests). */
export const url: Effect.Effect<string, never, ProxyTag> = Effect.map(ProxyTag, (proxy) => proxy.url)
