/**
 * The machinery of `HttpServerCache`: options, the request path (lookup, serve, coalesced miss,
 * stale paths, background refresh), storing bodies inline or in chunks, ranges, compression.
 *
 * @internal
 */
import { CacheBackend as Backend } from "@cachekit/core"
import type { CacheEntry, CacheError } from "@cachekit/core"
import { Cookies, HttpBody, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { Headers as PlatformHeaders } from "@effect/platform"
import type { Context, Scope } from "effect"
import { Clock, Deferred, Duration, Effect, Exit, Fiber, FiberId, Metric, Option, Random, Stream } from "effect"
import { createHash } from "node:crypto"
import * as zlib from "node:zlib"
import * as Policy from "../HttpCachePolicy.js"
import type { HttpServerCache, KeyExtractor, LogLine, Options } from "../HttpServerCache.js"
import { type BodyWriter, concat, tee, type Written } from "./bodyStore.js"
import { byteReader, chunkKey, encodeManifest, type Manifest, manifestOf, newGeneration } from "./chunk.js"
import { contentRange, ifRangeAllows, parseRange, unsatisfiedRange } from "./range.js"

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

const BASE = "http://cachekit.invalid"

const pathOf = (url: string): string => {
  const q = url.indexOf("?")
  return q === -1 ? url : url.slice(0, q)
}

const sortedQuery = (url: string): string => {
  const q = url.indexOf("?")
  if (q === -1 || q === url.length - 1) return ""
  const params = [...new URL(url, BASE).searchParams]
  params.sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0)
  return "?" + new URLSearchParams(params).toString()
}

export const Key = {
  path: ((request) => Option.some(pathOf(request.url))) as KeyExtractor,
  pathAndQuery: ((request) => Option.some(pathOf(request.url) + sortedQuery(request.url))) as KeyExtractor,
  methodAndPath: ((request) => Option.some(`${request.method} ${pathOf(request.url)}`)) as KeyExtractor,
  withHeaders: (names: ReadonlyArray<string>, base?: KeyExtractor): KeyExtractor => {
    const lower = names.map((name) => name.toLowerCase())
    const inner = base ?? Key.pathAndQuery
    return (request) =>
      Option.map(
        inner(request),
        (key) => key + "\u0000" + lower.map((name) => `${name}=${request.headers[name] ?? ""}`).join("\u0000")
      )
  }
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

export interface Resolved {
  readonly name: string
  readonly methods: (method: string) => boolean
  readonly statuses: (status: number) => boolean
  readonly ttlMillis: number
  readonly negativeTtlMillis: number
  readonly swrMillis: number
  readonly staleIfErrorMillis: number
  readonly refreshAheadMillis: number
  readonly minBodySize: number
  readonly maxBodySize: number
  readonly excluded: (contentType: string) => boolean
  readonly storedHeaders: ReadonlySet<string>
  readonly respectCacheControl: boolean
  readonly responseCacheControl: string | undefined
  readonly cacheStatus: boolean
  readonly key: KeyExtractor
  readonly tags: ((request: HttpServerRequest.HttpServerRequest) => ReadonlyArray<string>) | undefined
  readonly tagHeaders: ReadonlyArray<string>
  readonly range: boolean
  readonly chunkThreshold: number
  readonly chunkSize: number
  readonly etag: boolean
  readonly compression: { readonly encoding: "gzip" | "br"; readonly minSize: number } | undefined
  readonly coalesceTimeout: Duration.Duration
  readonly log:
    | { readonly sample: number; readonly hashKeys: boolean; readonly write: (line: LogLine) => Effect.Effect<void> }
    | undefined
}

const DEFAULT_STATUSES = new Set([200, 203, 204, 300, 301, 308])
const DEFAULT_METHODS = (method: string) => method === "GET" || method === "HEAD"
const DEFAULT_EXCLUDED = ["video/*", "audio/*", "application/zip", "text/event-stream"]
const DEFAULT_STORED_HEADERS = [
  "content-type",
  "content-language",
  "content-disposition",
  "content-encoding",
  "cache-control",
  "etag",
  "last-modified",
  "expires",
  "link",
  "vary",
  "content-location",
  "x-content-type-options",
  "access-control-allow-origin"
]

const millis = (input: Duration.DurationInput | undefined, fallback: number): number =>
  input === undefined ? fallback : Duration.toMillis(input)

export const resolveOptions = (options: Options): Resolved => {
  const excluded = (options.excludeContentTypes ?? DEFAULT_EXCLUDED).map((t) => t.toLowerCase())
  const chunkSize = Math.max(1, Math.floor(options.chunkSize ?? 1024 * 1024))
  // A multiple of the chunk size, so switching to chunks mid-body flushes whole chunks.
  const chunkThreshold = Math.max(
    chunkSize,
    Math.ceil((options.chunkThreshold ?? 8 * 1024 * 1024) / chunkSize) * chunkSize
  )
  const log = options.log
  return {
    name: options.name ?? "cachekit",
    methods: options.methods ?? DEFAULT_METHODS,
    statuses: options.statuses ?? ((status) => DEFAULT_STATUSES.has(status)),
    ttlMillis: millis(options.ttl, 60_000),
    negativeTtlMillis: millis(options.negativeTtl, 10_000),
    swrMillis: millis(options.staleWhileRevalidate, 0),
    staleIfErrorMillis: millis(options.staleIfError, 0),
    refreshAheadMillis: millis(options.refreshAhead, 0),
    minBodySize: options.minBodySize ?? 0,
    maxBodySize: options.maxBodySize ?? 256 * 1024 * 1024,
    excluded: (contentType) => {
      const type = contentType.split(";")[0]!.trim().toLowerCase()
      return excluded.some((pattern) =>
        pattern.endsWith("/*") ? type.startsWith(pattern.slice(0, -1)) : type === pattern
      )
    },
    storedHeaders: new Set([...(options.storedHeaders ?? DEFAULT_STORED_HEADERS).map((h) => h.toLowerCase())]),
    respectCacheControl: (options.cacheControl ?? "respect") === "respect",
    responseCacheControl: options.responseCacheControl,
    cacheStatus: options.cacheStatus ?? true,
    key: options.key ?? Key.pathAndQuery,
    tags: options.tags,
    tagHeaders: (options.tagHeaders ?? ["cache-tag", "surrogate-key"]).map((h) => h.toLowerCase()),
    range: options.range ?? true,
    chunkThreshold,
    chunkSize,
    etag: options.etag ?? true,
    compression: options.compression === undefined
      ? undefined
      : { encoding: options.compression.encoding, minSize: options.compression.minSize ?? 1024 },
    coalesceTimeout: Duration.decode(options.coalesceTimeout ?? "30 seconds"),
    log: log === undefined ? undefined : {
      sample: log.sample ?? 1,
      hashKeys: log.hashKeys ?? false,
      write: log.write ?? ((line) => Effect.logInfo(JSON.stringify(line)))
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/** Requests by cache decision (`result` = hit | miss | stale | bypass), labelled with the cache name. */
export const requestsTotal = Metric.counter("cachekit_http_server_requests_total", { incremental: true })

type Result = "hit" | "miss" | "stale" | "bypass"

const metricsFor = (name: string): Record<Result, Metric.Metric.Counter<number>> => ({
  hit: requestsTotal.pipe(Metric.tagged("cache", name), Metric.tagged("result", "hit")),
  miss: requestsTotal.pipe(Metric.tagged("cache", name), Metric.tagged("result", "miss")),
  stale: requestsTotal.pipe(Metric.tagged("cache", name), Metric.tagged("result", "stale")),
  bypass: requestsTotal.pipe(Metric.tagged("cache", name), Metric.tagged("result", "bypass"))
})

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type Outcome = "stored" | "abandoned" | "uncacheable"

const EMPTY = new Uint8Array(0)

/** Headers the handler must not see on a miss: it answers the full representation, we do the rest. */
const FORWARD_STRIPPED = ["range", "if-range", "if-none-match", "if-modified-since"]

const forwardedRequest = (request: HttpServerRequest.HttpServerRequest): HttpServerRequest.HttpServerRequest => {
  const h = request.headers
  if (FORWARD_STRIPPED.every((name) => h[name] === undefined)) return request
  return request.modify({ headers: PlatformHeaders.remove(h, FORWARD_STRIPPED) })
}

const digestEtag = (hash: ReturnType<typeof createHash>): string => `"ck-${hash.digest("base64url").slice(0, 27)}"`

/** A strong ETag for another content coding of the same body (RFC 9110 §8.8.3.3). */
const codedEtag = (etag: string, encoding: string): string =>
  etag.endsWith("\"") ? `${etag.slice(0, -1)}-${encoding}"` : etag

const splitTags = (value: string | undefined): ReadonlyArray<string> =>
  value === undefined ? [] : value.split(/[\s,]+/).filter((tag) => tag !== "")

/** RFC 9110 §12.5.3: is `coding` acceptable (q > 0) in this Accept-Encoding? */
const accepts = (acceptEncoding: string | undefined, coding: string): boolean => {
  if (acceptEncoding === undefined) return false
  let wildcard: boolean | undefined
  for (const part of acceptEncoding.split(",")) {
    const [rawName, ...params] = part.split(";")
    const name = rawName!.trim().toLowerCase()
    let q = 1
    for (const p of params) {
      const [k, v] = p.split("=")
      if (k?.trim().toLowerCase() === "q") q = Number(v)
    }
    if (name === coding) return q > 0
    if (name === "*") wildcard = q > 0
  }
  return wildcard ?? false
}

const COMPRESSIBLE = /^(text\/|application\/(json|javascript|xml|[a-z.+-]*\+json|[a-z.+-]*\+xml)|image\/svg\+xml)/i

const compress = (encoding: "gzip" | "br", bytes: Uint8Array): Effect.Effect<Uint8Array, Error> =>
  Effect.async<Uint8Array, Error>((resume) => {
    const done = (error: Error | null, out: Buffer) => resume(error === null ? Effect.succeed(out) : Effect.fail(error))
    if (encoding === "gzip") zlib.gzip(bytes, done)
    else zlib.brotliCompress(bytes, done)
  })

const decompress = (encoding: "gzip" | "br", bytes: Uint8Array): Effect.Effect<Uint8Array, Error> =>
  Effect.async<Uint8Array, Error>((resume) => {
    const done = (error: Error | null, out: Buffer) => resume(error === null ? Effect.succeed(out) : Effect.fail(error))
    if (encoding === "gzip") zlib.gunzip(bytes, done)
    else zlib.brotliDecompress(bytes, done)
  })

const hashKey = (key: string): string => createHash("sha256").update(key).digest("hex").slice(0, 16)

class ChunkFillError extends Error {
  readonly _tag = "ChunkFillError"
}

// ---------------------------------------------------------------------------------------------
// The cache
// ---------------------------------------------------------------------------------------------

export const make = (
  layerOptions: Options
): Effect.Effect<HttpServerCache, never, Backend.CacheBackendTag | Scope.Scope> =>
  Effect.gen(function*() {
    const backend = yield* Backend.CacheBackendTag
    const scope = yield* Effect.scope
    const defaults = resolveOptions(layerOptions)
    const resolvedByOverrides = new WeakMap<Options, Resolved>()
    const inflight = new Map<string, Deferred.Deferred<Outcome>>()
    const refreshing = new Set<string>()
    // Tags for backends without the tag capability: an in-process index of key -> tags.
    const localTags = backend.tags === undefined ? new Map<string, Set<string>>() : undefined
    const hitHeaders = new WeakMap<Manifest, Record<string, string>>()
    const metricsByName = new Map<string, Record<Result, Metric.Metric.Counter<number>>>()

    const resolve = (overrides: Options | undefined): Resolved => {
      if (overrides === undefined) return defaults
      let resolved = resolvedByOverrides.get(overrides)
      if (resolved === undefined) {
        resolved = resolveOptions({ ...layerOptions, ...overrides })
        resolvedByOverrides.set(overrides, resolved)
      }
      return resolved
    }

    const metrics = (name: string) => {
      let m = metricsByName.get(name)
      if (m === undefined) {
        m = metricsFor(name)
        metricsByName.set(name, m)
      }
      return m
    }

    // -- backend access (failures are misses / skipped stores: the cache never breaks a response) --

    const read = (key: string, now: number): Effect.Effect<CacheEntry.CacheEntry | undefined> => {
      if (backend.unsafeGetSync !== undefined) {
        const entry = backend.unsafeGetSync(key, now)
        // a tiered backend's sync read is its L1 only: a lower tier may still have the key
        if (entry !== undefined || Backend.syncMissIsFinal(backend)) return Effect.succeed(entry)
      }
      return backend.get(key).pipe(
        Effect.map(Option.getOrUndefined),
        Effect.catchAll((error) =>
          Effect.logWarning("cachekit http server: backend read failed, treating as a miss", error).pipe(
            Effect.as(undefined)
          )
        )
      )
    }

    const write = (key: string, entry: CacheEntry.CacheEntry): Effect.Effect<boolean> =>
      backend.set(key, entry).pipe(
        Effect.tap(() =>
          Effect.sync(() => {
            if (localTags === undefined || entry.tags.length === 0) return
            for (const tag of entry.tags) {
              let keys = localTags.get(tag)
              if (keys === undefined) localTags.set(tag, keys = new Set())
              keys.add(key)
            }
          })
        ),
        Effect.as(true),
        Effect.catchAll((error) =>
          Effect.logWarning("cachekit http server: storing a response failed", error).pipe(Effect.as(false))
        )
      )

    const remove = (key: string) =>
      backend.delete(key).pipe(
        Effect.catchAll((error) =>
          Effect.logWarning("cachekit http server: delete failed", error).pipe(Effect.as(false))
        )
      )

    const entryFor = (manifest: Manifest, tags: ReadonlyArray<string>, value: Uint8Array): CacheEntry.CacheEntry => ({
      value,
      size: value.byteLength,
      createdAt: manifest.storedAt,
      expiresAt: manifest.expiresAt,
      staleUntil: Math.max(manifest.staleUntil, manifest.errorUntil, manifest.expiresAt),
      tags,
      meta: encodeManifest(manifest)
    })

    const chunkEntry = (manifest: Manifest, tags: ReadonlyArray<string>, value: Uint8Array): CacheEntry.CacheEntry => ({
      value,
      size: value.byteLength,
      createdAt: manifest.storedAt,
      expiresAt: manifest.expiresAt,
      staleUntil: Math.max(manifest.staleUntil, manifest.errorUntil, manifest.expiresAt),
      tags
    })

    // -- storage decisions ----------------------------------------------------------------------

    interface Storable {
      readonly ok: true
      readonly ttlMillis: number
      readonly swrMillis: number
      readonly staleIfErrorMillis: number
      readonly contentType: string | undefined
      readonly declaredSize: number | undefined
    }
    type Decision = Storable | { readonly ok: false; readonly reason: string }

    const contentTypeOf = (response: HttpServerResponse.HttpServerResponse): string | undefined =>
      response.headers["content-type"] ?? response.body.contentType

    const decide = (o: Resolved, method: string, response: HttpServerResponse.HttpServerResponse): Decision => {
      if (method !== "GET") return { ok: false, reason: "method" }
      if (!o.statuses(response.status)) return { ok: false, reason: "status" }
      const body = response.body
      if (body._tag === "Raw" || body._tag === "FormData") return { ok: false, reason: "body" }
      if (!Cookies.isEmpty(response.cookies) || response.headers["set-cookie"] !== undefined) {
        return { ok: false, reason: "set-cookie" }
      }
      const contentType = contentTypeOf(response)
      if (contentType !== undefined && o.excluded(contentType)) return { ok: false, reason: "content-type" }
      const declaredSize = body._tag === "Empty" ? 0 : body.contentLength
      if (declaredSize !== undefined && (declaredSize > o.maxBodySize || declaredSize < o.minBodySize)) {
        return { ok: false, reason: "size" }
      }
      const vary = response.headers["vary"]
      let ttlMillis = response.status >= 400 ? o.negativeTtlMillis : o.ttlMillis
      let swrMillis = o.swrMillis
      let staleIfErrorMillis = o.staleIfErrorMillis
      if (vary !== undefined && vary.trim() === "*") return { ok: false, reason: "vary" }
      if (o.respectCacheControl) {
        const cc = Policy.parseCacheControl(response.headers["cache-control"])
        if (cc.noStore) return { ok: false, reason: "no-store" }
        if (cc.private === true) return { ok: false, reason: "private" }
        if (cc.noCache === true) return { ok: false, reason: "no-cache" }
        // Vary on anything but Accept-Encoding needs a header-aware key (Key.withHeaders + override).
        if (
          vary !== undefined &&
          vary.split(",").some((n) => n.trim() !== "" && n.trim().toLowerCase() !== "accept-encoding")
        ) {
          return { ok: false, reason: "vary" }
        }
        const maxAge = cc.sMaxage ?? cc.maxAge
        if (maxAge !== undefined) {
          if (maxAge <= 0) return { ok: false, reason: "max-age=0" }
          ttlMillis = maxAge * 1000
        }
        if (cc.staleWhileRevalidate !== undefined) swrMillis = cc.staleWhileRevalidate * 1000
        if (cc.staleIfError !== undefined) staleIfErrorMillis = cc.staleIfError * 1000
      }
      if (ttlMillis <= 0 && swrMillis <= 0) return { ok: false, reason: "ttl" }
      return { ok: true, ttlMillis, swrMillis, staleIfErrorMillis, contentType, declaredSize }
    }

    const storedHeadersOf = (
      o: Resolved,
      response: HttpServerResponse.HttpServerResponse,
      contentType: string | undefined
    ): Record<string, string> => {
      const out: Record<string, string> = {}
      for (const name in response.headers) {
        if (o.storedHeaders.has(name) && name !== "content-length") out[name] = response.headers[name]!
      }
      if (contentType !== undefined) out["content-type"] = contentType
      return out
    }

    const tagsOf = (
      o: Resolved,
      request: HttpServerRequest.HttpServerRequest,
      response: HttpServerResponse.HttpServerResponse
    ): ReadonlyArray<string> => {
      const tags = o.tags === undefined ? [] : [...o.tags(request)]
      for (const name of o.tagHeaders) tags.push(...splitTags(response.headers[name]))
      return tags.length === 0 ? tags : [...new Set(tags)]
    }

    // -- writing bodies ---------------------------------------------------------------------------

    /**
     * Stores a body that is being streamed to the client: buffered up to the chunk threshold
     * (then one inline entry), past it flushed chunk by chunk; over `maxBodySize` (or under the
     * minimum at the end) nothing is kept. Implements bodyStore's `BodyWriter` for its `tee`.
     */
    const bodyWriter = (
      o: Resolved,
      key: string,
      base: Manifest,
      tags: ReadonlyArray<string>,
      declaredSize: number | undefined
    ): BodyWriter => {
      const hash = o.etag && base.etag === undefined ? createHash("sha256") : undefined
      const generation = newGeneration()
      let parts: Array<Uint8Array> = []
      let buffered = 0
      let total = 0
      let chunked = declaredSize !== undefined && declaredSize > o.chunkThreshold
      let nextChunk = 0
      let failed = false
      let done = false
      const written: Array<string> = []
      const chunkManifest = (): Manifest => ({ ...base, layout: "chunked", chunkSize: o.chunkSize, generation })
      const cleanup = Effect.suspend(() => Effect.forEach(written.splice(0), remove, { discard: true }))
      const flushChunks = (final: boolean): Effect.Effect<void> =>
        Effect.suspend(() => {
          if (buffered < o.chunkSize && !(final && buffered > 0)) return Effect.void
          const all = concat(parts, buffered)
          const take = Math.min(o.chunkSize, all.byteLength)
          const chunk = all.slice(0, take)
          const rest = all.subarray(take)
          parts = rest.byteLength > 0 ? [rest] : []
          buffered = rest.byteLength
          const ck = chunkKey(key, generation, nextChunk++)
          written.push(ck)
          return write(ck, chunkEntry(chunkManifest(), tags, chunk)).pipe(
            Effect.flatMap((ok) => {
              if (!ok) failed = true
              return ok ? flushChunks(final) : Effect.void
            })
          )
        })
      return {
        write: (chunk) =>
          Effect.suspend(() => {
            if (failed || done) return Effect.void
            total += chunk.byteLength
            if (total > o.maxBodySize || (declaredSize !== undefined && total > declaredSize)) {
              // Over the limit: stop caching, the client still gets every byte.
              failed = true
              parts = []
              return cleanup
            }
            hash?.update(chunk)
            parts.push(chunk)
            buffered += chunk.byteLength
            if (!chunked && total > o.chunkThreshold) chunked = true
            return chunked ? flushChunks(false) : Effect.void
          }),
        finish: Effect.suspend((): Effect.Effect<Written> => {
          if (done) return Effect.succeed("failed")
          done = true
          if (failed || total < o.minBodySize || (declaredSize !== undefined && total !== declaredSize)) {
            parts = []
            return Effect.as(cleanup, total > o.maxBodySize || total < o.minBodySize ? "too-large" : "failed")
          }
          const etag = base.etag ?? (hash === undefined ? undefined : digestEtag(hash))
          const stored = chunked
            ? flushChunks(true).pipe(
              Effect.flatMap(() =>
                failed
                  ? Effect.as(cleanup, false)
                  : write(key, entryFor({ ...chunkManifest(), size: total, etag }, tags, EMPTY))
              )
            )
            : Effect.suspend(() => {
              const body = concat(parts, buffered)
              parts = []
              return storeInline(o, key, { ...base, size: total, etag }, tags, body)
            })
          return Effect.map(stored, (ok): Written => ok ? "stored" : "failed")
        }),
        abort: Effect.suspend(() => {
          done = true
          parts = []
          return cleanup
        })
      }
    }

    /** One entry holding the body (compressed when configured and worth it). */
    const storeInline = (
      o: Resolved,
      key: string,
      manifest: Manifest,
      tags: ReadonlyArray<string>,
      body: Uint8Array
    ): Effect.Effect<boolean> => {
      const c = o.compression
      const type = manifest.headers["content-type"]
      if (
        c === undefined || body.byteLength < c.minSize || type === undefined || !COMPRESSIBLE.test(type) ||
        manifest.headers["content-encoding"] !== undefined
      ) {
        return write(key, entryFor({ ...manifest, layout: "inline" }, tags, body))
      }
      return compress(c.encoding, body).pipe(
        Effect.flatMap((packed) =>
          packed.byteLength < body.byteLength
            ? write(key, entryFor({ ...manifest, layout: "inline", encoding: c.encoding }, tags, packed))
            : write(key, entryFor({ ...manifest, layout: "inline" }, tags, body))
        ),
        Effect.catchAll(() => write(key, entryFor({ ...manifest, layout: "inline" }, tags, body)))
      )
    }

    /** Stores bytes already in memory (a `Uint8Array` body) inline or in chunks. */
    const storeBytes = (
      o: Resolved,
      key: string,
      base: Manifest,
      tags: ReadonlyArray<string>,
      body: Uint8Array
    ): Effect.Effect<Manifest | undefined> => {
      const etag = base.etag ?? (o.etag ? digestEtag(createHash("sha256").update(body)) : undefined)
      const manifest: Manifest = { ...base, size: body.byteLength, etag }
      if (body.byteLength <= o.chunkThreshold) {
        return Effect.map(storeInline(o, key, manifest, tags, body), (ok) =>
          ok ? { ...manifest, layout: "inline" } : undefined)
      }
      const generation = newGeneration()
      const chunked: Manifest = { ...manifest, layout: "chunked", chunkSize: o.chunkSize, generation }
      return Effect.gen(function*() {
        for (let i = 0; i * o.chunkSize < body.byteLength; i++) {
          const part = body.subarray(i * o.chunkSize, Math.min(body.byteLength, (i + 1) * o.chunkSize))
          if (!(yield* write(chunkKey(key, generation, i), chunkEntry(chunked, tags, part)))) {
            return undefined
          }
        }
        return (yield* write(key, entryFor(chunked, tags, EMPTY))) ? chunked : undefined
      })
    }

    // -- responses --------------------------------------------------------------------------------

    const statusHeader = (o: Resolved, info: Policy.CacheStatusInfo): Record<string, string> =>
      o.cacheStatus ? { "cache-status": Policy.cacheStatus(o.name, info) } : {}

    /** The handler's response on its way out: tag headers removed, Cache-Status and Vary added. */
    const outgoing = (
      o: Resolved,
      response: HttpServerResponse.HttpServerResponse,
      info: Policy.CacheStatusInfo,
      extra: Record<string, string> = {},
      body?: Stream.Stream<Uint8Array, unknown>
    ): HttpServerResponse.HttpServerResponse => {
      let headers = o.tagHeaders.some((name) =>
          response.headers[name] !== undefined
        )
        ? PlatformHeaders.remove(response.headers, o.tagHeaders)
        : response.headers
      const add: Record<string, string> = { ...statusHeader(o, info), ...extra }
      if (o.responseCacheControl !== undefined && info.stored === true) add["cache-control"] = o.responseCacheControl
      if (o.compression !== undefined && info.stored === true) {
        const type = contentTypeOf(response)
        if (type !== undefined && COMPRESSIBLE.test(type)) add["vary"] = varyWithEncoding(response.headers["vary"])
      }
      headers = PlatformHeaders.setAll(headers, add)
      const out = body === undefined || response.body._tag !== "Stream"
        ? response
        : HttpServerResponse.setBody(
          response,
          HttpBody.stream(body, response.body.contentType, response.body.contentLength)
        )
      return replaceHeaders(out, headers)
    }

    const varyWithEncoding = (vary: string | undefined): string =>
      vary === undefined || vary.trim() === ""
        ? "accept-encoding"
        : /accept-encoding/i.test(vary)
        ? vary
        : `${vary}, accept-encoding`

    const replaceHeaders = (
      response: HttpServerResponse.HttpServerResponse,
      headers: PlatformHeaders.Headers
    ): HttpServerResponse.HttpServerResponse =>
      HttpServerResponse.raw(null, { status: response.status, headers, cookies: response.cookies }).pipe(
        HttpServerResponse.setBody(response.body)
      )

    interface Served {
      readonly response: HttpServerResponse.HttpServerResponse
      readonly notModified: boolean
    }

    /**
     * A stored representation as a response: 304 for a matching conditional request, 206 / 416
     * for a Range, the whole body otherwise. `body` gives bytes of the identity body range.
     */
    const serveStored = (
      o: Resolved,
      request: HttpServerRequest.HttpServerRequest,
      key: string,
      manifest: Manifest,
      inline: Uint8Array | undefined,
      info: Policy.CacheStatusInfo,
      now: number,
      fill: Effect.Effect<HttpServerResponse.HttpServerResponse, unknown>,
      initial?: Stream.Stream<Uint8Array, unknown>
    ): Effect.Effect<Served> =>
      Effect.gen(function*() {
        const headers: Record<string, string> = { ...manifest.headers }
        delete headers["content-type"]
        if (manifest.etag !== undefined) headers["etag"] = manifest.etag
        headers["age"] = String(Math.max(0, Math.floor((now - manifest.storedAt) / 1000)))
        if (o.range) headers["accept-ranges"] = "bytes"
        if (o.responseCacheControl !== undefined) headers["cache-control"] = o.responseCacheControl
        Object.assign(headers, statusHeader(o, info))
        const contentType = manifest.headers["content-type"] ?? "application/octet-stream"
        // Which representation: the stored coding when accepted, the identity body otherwise.
        let coded = false
        if (manifest.encoding !== undefined) {
          headers["vary"] = varyWithEncoding(headers["vary"])
          const rangeWanted = o.range && request.headers["range"] !== undefined
          if (!rangeWanted && accepts(request.headers["accept-encoding"], manifest.encoding)) {
            coded = true
            headers["content-encoding"] = manifest.encoding
            if (manifest.etag !== undefined) headers["etag"] = codedEtag(manifest.etag, manifest.encoding)
          }
        }
        const conditional = request.headers["if-none-match"] !== undefined ||
          request.headers["if-modified-since"] !== undefined
        const notModified = conditional && manifest.status === 200
          ? Policy.notModified(headers, { method: request.method, url: request.url, headers: request.headers })
          : undefined
        if (notModified !== undefined) {
          return { response: HttpServerResponse.empty({ status: 304, headers: notModified }), notModified: true }
        }
        if (coded) {
          return {
            response: HttpServerResponse.uint8Array(inline!, { status: manifest.status, headers, contentType }),
            notModified: false
          }
        }
        let identity = inline
        if (identity !== undefined && manifest.encoding !== undefined) {
          identity = yield* decompress(manifest.encoding, identity).pipe(Effect.orElseSucceed(() => undefined))
          if (identity === undefined) {
            return yield* Effect.succeed({ response: HttpServerResponse.empty({ status: 500 }), notModified: false })
          }
        }
        const size = manifest.size
        const bodyOf = (start: number, end: number): Stream.Stream<Uint8Array, unknown> =>
          identity !== undefined
            ? Stream.succeed(identity.subarray(start, end + 1))
            : chunkStream(key, manifest, start, end, fill, initial)
        if (o.range && manifest.status === 200 && request.method === "GET" && request.headers["range"] !== undefined) {
          const ranges = ifRangeAllows(request.headers["if-range"], manifest.etag, manifest.headers["last-modified"])
            ? parseRange(request.headers["range"], size)
            : { _tag: "Whole" as const }
          if (ranges._tag === "Unsatisfiable") {
            return {
              response: HttpServerResponse.empty({
                status: 416,
                headers: { ...statusHeader(o, info), "content-range": unsatisfiedRange(size) }
              }),
              notModified: false
            }
          }
          // One range is served as a 206; several are answered with the whole body (RFC 9110 §14.2 allows it).
          if (ranges._tag === "Ranges" && ranges.ranges.length === 1) {
            const range = ranges.ranges[0]!
            headers["content-range"] = contentRange(range, size)
            return {
              response: bytesResponse(
                identity,
                bodyOf(range.start, range.end),
                206,
                headers,
                contentType,
                range.end - range.start + 1,
                identity && identity.subarray(range.start, range.end + 1)
              ),
              notModified: false
            }
          }
        }
        const body = request.method === "HEAD" || size === 0 ? Stream.empty : bodyOf(0, size - 1)
        return {
          response: bytesResponse(
            identity,
            body,
            manifest.status,
            headers,
            contentType,
            size,
            request.method === "HEAD" ? undefined : identity
          ),
          notModified: false
        }
      })

    /**
     * The common hit: an inline identity body, no Range, no validators to check. Built without an
     * Effect; the stored headers are copied once per manifest.
     */
    const plainHit = (
      o: Resolved,
      request: HttpServerRequest.HttpServerRequest,
      manifest: Manifest,
      inline: Uint8Array | undefined,
      ttl: number,
      now: number
    ): HttpServerResponse.HttpServerResponse | undefined => {
      const h = request.headers
      if (
        inline === undefined || manifest.encoding !== undefined || request.method !== "GET" ||
        (o.range && h["range"] !== undefined) || h["if-none-match"] !== undefined ||
        h["if-modified-since"] !== undefined
      ) return undefined
      let base = hitHeaders.get(manifest)
      if (base === undefined) {
        base = { ...manifest.headers }
        delete base["content-type"]
        if (manifest.etag !== undefined) base["etag"] = manifest.etag
        if (o.range) base["accept-ranges"] = "bytes"
        if (o.responseCacheControl !== undefined) base["cache-control"] = o.responseCacheControl
        hitHeaders.set(manifest, base)
      }
      const headers: Record<string, string> = {
        ...base,
        age: String(Math.max(0, Math.floor((now - manifest.storedAt) / 1000)))
      }
      if (o.cacheStatus) headers["cache-status"] = Policy.cacheStatus(o.name, { hit: true, ttl })
      return HttpServerResponse.uint8Array(inline, {
        status: manifest.status,
        headers,
        contentType: manifest.headers["content-type"] ?? "application/octet-stream"
      })
    }

    const bytesResponse = (
      identity: Uint8Array | undefined,
      stream: Stream.Stream<Uint8Array, unknown>,
      status: number,
      headers: Record<string, string>,
      contentType: string,
      contentLength: number,
      bytes: Uint8Array | undefined
    ): HttpServerResponse.HttpServerResponse =>
      identity !== undefined && bytes !== undefined
        ? HttpServerResponse.uint8Array(bytes, { status, headers, contentType })
        : HttpServerResponse.stream(stream, { status, headers, contentType, contentLength })

    /**
     * Bytes `start..end` of a chunked body: stored chunks are read one at a time; missing ones
     * (never fetched, evicted) are read from the handler's body (`initial`, else a new `fill`),
     * stored, and served. Memory: one chunk plus one upstream piece.
     */
    const chunkStream = (
      key: string,
      manifest: Manifest,
      start: number,
      end: number,
      fill: Effect.Effect<HttpServerResponse.HttpServerResponse, unknown>,
      initial?: Stream.Stream<Uint8Array, unknown>
    ): Stream.Stream<Uint8Array, unknown> =>
      Stream.unwrapScoped(Effect.gen(function*() {
        const scope = yield* Effect.scope
        const chunkSize = manifest.chunkSize!
        const generation = manifest.generation!
        const tags = (yield* read(key, yield* Clock.currentTimeMillis))?.tags ?? []
        let reader = initial === undefined ? undefined : yield* byteReader(initial)
        const first = Math.floor(start / chunkSize)
        const last = Math.floor(end / chunkSize)
        const readChunk = (index: number) =>
          Effect.gen(function*() {
            const ck = chunkKey(key, generation, index)
            const offset = index * chunkSize
            const expected = Math.min(chunkSize, manifest.size - offset)
            let bytes = (yield* read(ck, yield* Clock.currentTimeMillis))?.value
            if (bytes === undefined || bytes.byteLength !== expected) {
              if (reader === undefined || reader.position() > offset) {
                const response = yield* fill
                const declared = response.body.contentLength
                if (
                  response.status !== 200 || response.body._tag !== "Stream" ||
                  (declared !== undefined && declared !== manifest.size)
                ) {
                  yield* remove(key)
                  return yield* Effect.fail(
                    new ChunkFillError(`the handler no longer serves the stored representation of ${key}`)
                  )
                }
                reader = yield* Scope_extend(byteReader(response.body.stream), scope)
              }
              yield* reader.skip(offset - reader.position())
              bytes = yield* reader.take(expected)
              if (bytes.byteLength !== expected) {
                yield* remove(key)
                return yield* Effect.fail(new ChunkFillError(`the handler's body of ${key} ended early`))
              }
              yield* write(ck, chunkEntry(manifest, tags, bytes))
            }
            const from = index === first ? start - offset : 0
            const to = index === last ? end - offset + 1 : bytes.byteLength
            return from === 0 && to === bytes.byteLength ? bytes : bytes.subarray(from, to)
          })
        return Stream.mapEffect(Stream.range(first, last), readChunk)
      }))

    // -- the request path -----------------------------------------------------------------------------

    const logLine = (
      o: Resolved,
      request: HttpServerRequest.HttpServerRequest,
      key: string | undefined,
      decision: LogLine["decision"],
      status: number,
      detail?: string,
      stored?: boolean
    ): Effect.Effect<void> => {
      const log = o.log
      if (log === undefined) return Effect.void
      return Effect.gen(function*() {
        if (log.sample < 1 && (yield* Random.next) >= log.sample) return
        const line: LogLine = {
          ts: yield* Clock.currentTimeMillis,
          requestId: request.headers["x-request-id"],
          method: request.method,
          path: pathOf(request.url),
          key: key === undefined ? undefined : log.hashKeys ? hashKey(key) : key,
          decision,
          status,
          ...(detail === undefined ? {} : { detail }),
          ...(stored === undefined ? {} : { stored })
        }
        yield* log.write(line)
      })
    }

    const wrap = <E, R>(app: HttpApp.Default<E, R>, overrides?: Options): HttpApp.Default<E, R> =>
      Effect.gen(function*() {
        const o = resolve(overrides)
        const m = metrics(o.name)
        const request = yield* HttpServerRequest.HttpServerRequest
        const context = yield* Effect.context<R>()
        const forwarded = forwardedRequest(request)
        const runApp: Effect.Effect<HttpServerResponse.HttpServerResponse, E> = Effect.provide(
          Effect.provideService(app, HttpServerRequest.HttpServerRequest, forwarded),
          context
        )

        const bypass = (reason: string) =>
          Effect.flatMap(app, (response) =>
            Effect.as(
              Effect.zipRight(
                Metric.increment(m.bypass),
                logLine(o, request, undefined, "bypass", response.status, reason)
              ),
              outgoing(o, response, { hit: false, fwd: "bypass", detail: reason })
            ))

        if (!o.methods(request.method)) return yield* bypass("method")
        const keyOption = o.key(request)
        if (Option.isNone(keyOption)) return yield* bypass("key")
        const key = keyOption.value

        const now = yield* Clock.currentTimeMillis
        const entry = yield* read(key, now)
        const manifest = entry === undefined ? undefined : manifestOf(entry)
        if (entry !== undefined && manifest !== undefined) {
          const inline = manifest.layout === "inline" ? entry.value : undefined
          const ttl = Math.round((manifest.expiresAt - now) / 1000)
          if (now < manifest.expiresAt) {
            if (o.refreshAheadMillis > 0 && manifest.expiresAt - now <= o.refreshAheadMillis) {
              yield* refreshInBackground(o, key, request, runApp)
            }
            const plain = plainHit(o, request, manifest, inline, ttl, now)
            if (plain !== undefined) {
              yield* Metric.increment(m.hit)
              if (o.log !== undefined) yield* logLine(o, request, key, "hit", plain.status)
              return plain
            }
            const served = yield* serveStored(o, request, key, manifest, inline, { hit: true, ttl }, now, runApp)
            yield* Metric.increment(m.hit)
            yield* logLine(o, request, key, served.notModified ? "not-modified" : "hit", served.response.status)
            return served.response
          }
          if (now < manifest.staleUntil) {
            yield* refreshInBackground(o, key, request, runApp)
            const served = yield* serveStored(
              o,
              request,
              key,
              manifest,
              inline,
              {
                hit: true,
                ttl,
                detail: "stale-while-revalidate"
              },
              now,
              runApp
            )
            yield* Metric.increment(m.stale)
            yield* logLine(o, request, key, "stale", served.response.status, "stale-while-revalidate")
            return served.response
          }
          if (now < manifest.errorUntil) {
            // RFC 5861 §4 stale-if-error: the handler decides, its failure serves the stale response.
            const attempt = yield* Effect.exit(runApp)
            if (Exit.isFailure(attempt) || attempt.value.status >= 500) {
              const served = yield* serveStored(
                o,
                request,
                key,
                manifest,
                inline,
                {
                  hit: true,
                  fwd: "stale",
                  ttl,
                  detail: "stale-if-error",
                  ...(Exit.isSuccess(attempt) ? { fwdStatus: attempt.value.status } : {})
                },
                now,
                runApp
              )
              yield* Metric.increment(m.stale)
              yield* logLine(o, request, key, "stale-if-error", served.response.status)
              return served.response
            }
            yield* Metric.increment(m.miss)
            return yield* respondToMiss(o, request, key, attempt.value, "stale", runApp, () => Effect.void)
          }
        }

        if (o.range && request.method === "GET" && request.headers["range"] !== undefined) {
          // Range misses are not coalesced: each fills the chunks it needs.
          yield* Metric.increment(m.miss)
          return yield* Effect.flatMap(runApp, (response) =>
            respondToMiss(o, request, key, response, "uri-miss", runApp, () => Effect.void))
        }

        // -- a coalesced miss ----------------------------------------------------------------------
        const existing = inflight.get(key)
        if (existing !== undefined) {
          // No timeout per waiter: a race per follower costs more than the wait (64 followers
          // doubled a burst's latency); the leader's one timer releases them all instead.
          const outcome = yield* Deferred.await(existing)
          if (outcome === "stored") {
            const t = yield* Clock.currentTimeMillis
            const stored = yield* read(key, t)
            const sm = stored === undefined ? undefined : manifestOf(stored)
            if (stored !== undefined && sm !== undefined) {
              const served = yield* serveStored(
                o,
                request,
                key,
                sm,
                sm.layout === "inline" ? stored.value : undefined,
                {
                  hit: true,
                  collapsed: true,
                  ttl: Math.round((sm.expiresAt - t) / 1000)
                },
                t,
                runApp
              )
              yield* Metric.increment(m.hit)
              yield* logLine(o, request, key, "collapsed", served.response.status)
              return served.response
            }
          }
          yield* Metric.increment(m.miss)
          return yield* Effect.flatMap(runApp, (response) =>
            respondToMiss(o, request, key, response, "miss", runApp, () =>
              Effect.void))
        }
        const done = Deferred.unsafeMake<Outcome>(FiberId.none)
        inflight.set(key, done)
        let settled = false
        // Followers stop waiting after coalesceTimeout (the leader's client may never read its body).
        const timer = yield* Effect.sleep(o.coalesceTimeout).pipe(
          Effect.zipRight(Effect.suspend(() => {
            if (inflight.get(key) === done) {
              inflight.delete(key)
            }
            return Deferred.succeed(done, "abandoned")
          })),
          // The server may run the app uninterruptibly; a forked fiber inherits that and would
          // hold the layer's scope open until its sleep ends.
          Effect.interruptible,
          Effect.forkIn(scope)
        )
        const settle = (outcome: Outcome) =>
          Effect.suspend(() => {
            if (settled) {
              return Effect.void
            }
            settled = true
            if (inflight.get(key) === done) {
              inflight.delete(key)
            }
            return Deferred.succeed(done, outcome).pipe(Effect.zipRight(Fiber.interruptFork(timer)))
          })
        yield* Metric.increment(m.miss)
        return yield* runApp.pipe(
          Effect.flatMap((response) =>
            respondToMiss(o, request, key, response, "uri-miss", runApp, settle)
          ),
          Effect.onExit((exit) => Exit.isFailure(exit) ? settle("abandoned") : Effect.void)
        )
      })

    /**
     * The handler's response to a miss: stored when the options allow (bytes at once, streams
     * while they flow to the client), then answered (a Range from what was stored).
     */
    const respondToMiss = <E>(
      o: Resolved,
      request: HttpServerRequest.HttpServerRequest,
      key: string,
      response: HttpServerResponse.HttpServerResponse,
      fwd: "uri-miss" | "miss" | "stale",
      fill: Effect.Effect<HttpServerResponse.HttpServerResponse, E>,
      settle: (outcome: Outcome) => Effect.Effect<void>
    ): Effect.Effect<HttpServerResponse.HttpServerResponse> =>
      Effect.gen(function*() {
        const decision = decide(o, request.method, response)
        const fwdStatus = response.status
        if (!decision.ok) {
          yield* settle("uncacheable")
          yield* logLine(o, request, key, "miss", response.status, decision.reason, false)
          return outgoing(o, response, { hit: false, fwd, fwdStatus, detail: decision.reason })
        }
        const now = yield* Clock.currentTimeMillis
        const expiresAt = now + decision.ttlMillis
        const base: Manifest = {
          v: 1,
          status: response.status,
          headers: storedHeadersOf(o, response, decision.contentType),
          size: 0,
          etag: response.headers["etag"],
          layout: "inline",
          storedAt: now,
          expiresAt,
          staleUntil: expiresAt + decision.swrMillis,
          errorUntil: expiresAt + decision.staleIfErrorMillis
        }
        const tags = tagsOf(o, request, response)
        const body = response.body
        const info: Policy.CacheStatusInfo = { hit: false, fwd, fwdStatus, stored: true }
        const wantsRange = o.range && request.headers["range"] !== undefined
        if (body._tag === "Uint8Array" || body._tag === "Empty") {
          const bytes = body._tag === "Empty" ? EMPTY : body.body
          if (bytes.byteLength < o.minBodySize || bytes.byteLength > o.maxBodySize) {
            yield* settle("uncacheable")
            yield* logLine(o, request, key, "miss", response.status, "size", false)
            return outgoing(o, response, { hit: false, fwd, fwdStatus, detail: "size" })
          }
          const stored = yield* storeBytes(o, key, base, tags, bytes)
          yield* settle(stored === undefined ? "abandoned" : "stored")
          yield* logLine(o, request, key, "miss", response.status, undefined, stored !== undefined)
          if (stored === undefined) return outgoing(o, response, { hit: false, fwd, fwdStatus })
          if (
            wantsRange || request.headers["if-none-match"] !== undefined ||
            request.headers["if-modified-since"] !== undefined
          ) {
            const served = yield* serveStored(
              o,
              request,
              key,
              stored,
              stored.layout === "inline" ? bytes : undefined,
              info,
              now,
              fill,
              Stream.succeed(bytes)
            )
            return served.response
          }
          const etag = stored.etag
          return outgoing(
            o,
            response,
            info,
            etag !== undefined && response.headers["etag"] === undefined ? { etag } : {}
          )
        }
        // A stream.
        const declared = decision.declaredSize
        if (wantsRange && declared !== undefined && declared > o.chunkThreshold) {
          // Partial caching: a manifest now, the chunks this range covers from this very body.
          const generation = newGeneration()
          const manifest: Manifest = { ...base, size: declared, layout: "chunked", chunkSize: o.chunkSize, generation }
          const ok = yield* write(key, entryFor(manifest, tags, EMPTY))
          yield* settle(ok ? "stored" : "abandoned")
          yield* logLine(o, request, key, "miss", 206, "partial", ok)
          if (ok) {
            const source = (body as { readonly stream: Stream.Stream<Uint8Array, unknown> }).stream
            const served = yield* serveStored(
              o,
              request,
              key,
              manifest,
              undefined,
              { hit: false, fwd: "partial", fwdStatus, stored: true },
              now,
              fill,
              source
            )
            return served.response
          }
          return outgoing(o, response, { hit: false, fwd, fwdStatus })
        }
        const stream = (body as { readonly stream: Stream.Stream<Uint8Array, unknown> }).stream
        yield* logLine(o, request, key, "miss", response.status, undefined, true)
        const teed = tee(
          stream,
          Effect.sync(() => bodyWriter(o, key, base, tags, declared)),
          (written) => settle(written === "stored" ? "stored" : written === "too-large" ? "uncacheable" : "abandoned")
        )
        return outgoing(o, response, info, {}, teed)
      })

    /** One background refresh per key, in the layer's scope; a failure keeps the stored response. */
    const refreshInBackground = <E>(
      o: Resolved,
      key: string,
      request: HttpServerRequest.HttpServerRequest,
      runApp: Effect.Effect<HttpServerResponse.HttpServerResponse, E>
    ): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (refreshing.has(key)) return Effect.void
        refreshing.add(key)
        const plain = request.headers["range"] === undefined ? request : request.modify({
          headers: PlatformHeaders.remove(request.headers, "range")
        })
        return runApp.pipe(
          Effect.flatMap((response) =>
            response.status >= 500
              ? Effect.logDebug(
                `cachekit http server: refresh of ${key} answered ${response.status}, keeping the stored response`
              )
              : Effect.flatMap(
                respondToMiss(o, plain, key, response, "stale", runApp, () => Effect.void),
                (out) => out.body._tag === "Stream" ? Stream.runDrain(out.body.stream) : Effect.void
              )
          ),
          Effect.catchAllCause((cause) => Effect.logDebug("cachekit http server: background refresh failed", cause)),
          Effect.ensuring(Effect.sync(() => refreshing.delete(key))),
          Effect.interruptible,
          Effect.forkIn(scope),
          Effect.asVoid
        )
      })

    const invalidateTags = (tags: ReadonlyArray<string>): Effect.Effect<number, CacheError.CacheError> => {
      if (backend.tags !== undefined) return backend.tags.deleteByTags(tags)
      return Effect.gen(function*() {
        let removed = 0
        for (const tag of tags) {
          const keys = localTags?.get(tag)
          if (keys === undefined) continue
          localTags?.delete(tag)
          for (const key of keys) if (yield* backend.delete(key)) removed++
        }
        return removed
      })
    }

    return {
      wrap,
      invalidate: (key) => backend.delete(key),
      invalidateTags
    } satisfies HttpServerCache
  })

const Scope_extend = <A, E, R>(effect: Effect.Effect<A, E, R>, scope: Scope.Scope) =>
  Effect.provideService(effect, ScopeTag, scope)

import { Scope as ScopeModule } from "effect"
const ScopeTag: Context.Tag<Scope.Scope, Scope.Scope> = ScopeModule.Scope
