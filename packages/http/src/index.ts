/**
 * @cachekit/http: RFC 9111 HTTP caching (policy, HttpClient and HttpServer middleware) and the
 * caching reverse proxy.
 *
 * @module @cachekit/http
 * @since 0.1.0
 */
export * as HttpCachePolicy from "./HttpCachePolicy.js"
export * as HttpClientCache from "./HttpClientCache.js"
export * as HttpServerCache from "./HttpServerCache.js"
export * as Proxy from "./Proxy.js"
