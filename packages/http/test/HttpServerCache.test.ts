import { CacheBackend, MemoryBackend, TieredCache } from "@cachekit/core"
import { HttpServerCache } from "@cachekit/http"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Metric, Option, Stream } from "effect"
import { brotliDecompressSync, gunzipSync } from "node:zlib"
import { fetchRaw, serve } from "./HttpServerCacheFixtures.js"

const text = (body: string, headers: Record<string, string> = {}, status = 200) =>
  HttpServerResponse.text(body, { status, headers })

/** A stream body without Content-Length (`pieces` pieces of `size` bytes). */
const streamed = (pieces: number, size: number, headers: Record<string, string> = {}) =>
  HttpServerResponse.stream(
    Stream.range(1, pieces).pipe(Stream.map((i) => new Uint8Array(size).fill(i % 256))),
    { headers, contentType: "application/octet-stream" }
  )

describe("HttpServerCache over a real NodeHttpServer", () => {
  it.scopedLive("answers the second GET from the cache, the handler keeping its route params on the miss", () =>
    Effect.gen(function*() {
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get(
          "/items/:id",
          Effect.gen(function*() {
            const params = yield* HttpRouter.params
            calls++
            return text(`item ${params["id"]}`)
          })
        ),
        HttpServerCache.middleware()
      )
      const { base } = yield* serve(app)
      const first = yield* fetchRaw(`${base}/items/7`)
      const second = yield* fetchRaw(`${base}/items/7`)
      expect(first.text).toBe("item 7")
      expect(second.text).toBe("item 7")
      expect(calls).toBe(1)
      expect(first.headers["cache-status"]).toContain("fwd=uri-miss")
      expect(first.headers["cache-status"]).toContain("stored")
      expect(second.headers["cache-status"]).toMatch(/^cachekit; hit/)
      expect(second.headers["etag"]).toMatch(/^"ck-/)
      expect(second.headers["content-type"]).toContain("text/plain")
    }))

  it.scopedLive("passes other methods and uncached statuses through, and caches 404s only when asked", () =>
    Effect.gen(function*() {
      const calls = { post: 0, boom: 0, missing: 0 }
      const app = HttpRouter.empty.pipe(
        HttpRouter.post("/p", Effect.sync(() => text(`post ${++calls.post}`))),
        HttpRouter.get("/boom", Effect.sync(() => text(`boom ${++calls.boom}`, {}, 500))),
        HttpRouter.get("/missing", Effect.sync(() => text(`missing ${++calls.missing}`, {}, 404))),
        HttpServerCache.middleware()
      )
      const { base } = yield* serve(app, { statuses: (s) => s === 200 || s === 404 })
      const post = yield* fetchRaw(`${base}/p`, {}, "POST")
      yield* fetchRaw(`${base}/p`, {}, "POST")
      expect(post.headers["cache-status"]).toContain("fwd=bypass")
      expect(calls.post).toBe(2)
      yield* fetchRaw(`${base}/boom`)
      expect((yield* fetchRaw(`${base}/boom`)).text).toBe("boom 2")
      yield* fetchRaw(`${base}/missing`)
      const missing = yield* fetchRaw(`${base}/missing`)
      expect(missing.status).toBe(404)
      expect(missing.text).toBe("missing 1")
    }))

  it.scopedLive("respects the handler's no-store and private, and stores them when told to override", () =>
    Effect.gen(function*() {
      let calls = 0
      const handler = Effect.sync(() => text(`n${++calls}`, { "cache-control": "no-store" }))
      const respectful = HttpRouter.empty.pipe(HttpRouter.get("/a", handler), HttpServerCache.middleware())
      const { base } = yield* serve(respectful)
      yield* fetchRaw(`${base}/a`)
      const again = yield* fetchRaw(`${base}/a`)
      expect(again.text).toBe("n2")
      expect(again.headers["cache-status"]).toContain("detail=no-store")

      const overriding = HttpRouter.empty.pipe(
        HttpRouter.get("/a", handler),
        HttpServerCache.middleware({ cacheControl: "override", responseCacheControl: "public, max-age=30" })
      )
      const second = yield* serve(overriding)
      const miss = yield* fetchRaw(`${second.base}/a`)
      const hit = yield* fetchRaw(`${second.base}/a`)
      expect(hit.text).toBe(miss.text)
      expect(hit.headers["cache-control"]).toBe("public, max-age=30")
    }))

  it.scopedLive("skips bodies over maxBodySize, from Content-Length or while streaming, and still sends them whole", () =>
    Effect.gen(function*() {
      const calls = { known: 0, streamed: 0, small: 0 }
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/known", Effect.sync(() => (calls.known++, text("x".repeat(5000))))),
        HttpRouter.get("/streamed", Effect.sync(() => (calls.streamed++, streamed(10, 1000)))),
        HttpRouter.get("/small", Effect.sync(() => (calls.small++, text("tiny")))),
        HttpServerCache.middleware()
      )
      const { base } = yield* serve(app, { maxBodySize: 4096, minBodySize: 10 })
      for (let i = 0; i < 2; i++) {
        expect((yield* fetchRaw(`${base}/known`)).body.byteLength).toBe(5000)
        expect((yield* fetchRaw(`${base}/streamed`)).body.byteLength).toBe(10_000)
        expect((yield* fetchRaw(`${base}/small`)).text).toBe("tiny")
      }
      expect(calls).toEqual({ known: 2, streamed: 2, small: 2 })
    }))

  it.scopedLive("over TieredCache, serves from L2 when the memory L1 lost the entry (a sync L1 miss is not final)", () =>
    Effect.gen(function*() {
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/t", Effect.sync(() => (calls++, text(`version ${calls}`)))),
        HttpServerCache.middleware()
      )
      const l1 = yield* MemoryBackend.make({ maxBytes: 16 * 1024 * 1024, name: "l1" })
      const l2 = yield* MemoryBackend.make({ maxBytes: 16 * 1024 * 1024, name: "l2" })
      const tiered = yield* TieredCache.make([{ backend: l1, name: "l1" }, { backend: l2, name: "l2" }])
      expect(tiered.backend.unsafeGetSync).toBeDefined()
      const { base } = yield* serve(app, {}, Layer.succeed(CacheBackend.CacheBackendTag, tiered.backend))
      expect((yield* fetchRaw(`${base}/t`)).text).toBe("version 1")
      expect((yield* fetchRaw(`${base}/t`)).text).toBe("version 1")
      const [l1AfterHit] = yield* tiered.stats
      expect(l1AfterHit!.hits).toBeGreaterThan(0)
      yield* l1.clear
      expect((yield* fetchRaw(`${base}/t`)).text).toBe("version 1")
      expect(calls).toBe(1)
      const [, fromL2] = yield* tiered.stats
      expect(fromL2!.hits).toBeGreaterThan(0)
    }))

  it.scopedLive("stores a streamed body without Content-Length and serves it from the cache", () =>
    Effect.gen(function*() {
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/s", Effect.sync(() => (calls++, streamed(8, 1000)))),
        HttpServerCache.middleware()
      )
      const { base } = yield* serve(app)
      const miss = yield* fetchRaw(`${base}/s`)
      const hit = yield* fetchRaw(`${base}/s`)
      expect(calls).toBe(1)
      expect(hit.body.equals(miss.body)).toBe(true)
      expect(hit.headers["etag"]).toMatch(/^"ck-/)
    }))

  it.scopedLive("never stores excluded content types", () =>
    Effect.gen(function*() {
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get(
          "/v",
          Effect.sync(() => (calls++, HttpServerResponse.uint8Array(new Uint8Array(100), { contentType: "video/mp4" })))
        ),
        HttpRouter.get(
          "/z",
          Effect.sync(
            () => (calls++, HttpServerResponse.uint8Array(new Uint8Array(100), { contentType: "application/zip" }))
          )
        ),
        HttpServerCache.middleware()
      )
      const { base } = yield* serve(app)
      for (const path of ["/v", "/v", "/z", "/z"]) {
        expect((yield* fetchRaw(`${base}${path}`)).headers["cache-status"]).toContain("detail=content-type")
      }
      expect(calls).toBe(4)
    }))

  it.scopedLive("replays only allowlisted headers from the cache", () =>
    Effect.gen(function*() {
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/h", Effect.succeed(text("h", { "x-secret": "s", "x-kept": "k" }))),
        HttpServerCache.middleware({ storedHeaders: ["x-kept"] })
      )
      const { base } = yield* serve(app)
      const miss = yield* fetchRaw(`${base}/h`)
      const hit = yield* fetchRaw(`${base}/h`)
      expect(miss.headers["x-secret"]).toBe("s")
      expect(hit.headers["x-secret"]).toBeUndefined()
      expect(hit.headers["x-kept"]).toBe("k")
      expect(hit.headers["content-type"]).toContain("text/plain")
    }))

  it.scopedLive("keys by path and sorted query by default, by headers with Key.withHeaders, and bypasses on None", () =>
    Effect.gen(function*() {
      let calls = 0
      const echo = Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        calls++
        return text(`${request.url} ${request.headers["x-tenant"] ?? "-"} #${calls}`)
      })
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/q", echo.pipe(HttpServerCache.middleware())),
        HttpRouter.get(
          "/t",
          echo.pipe(HttpServerCache.middleware({ key: HttpServerCache.Key.withHeaders(["X-Tenant"]) }))
        ),
        HttpRouter.get(
          "/private",
          echo.pipe(HttpServerCache.middleware({ key: () => Option.none() }))
        )
      )
      const { base } = yield* serve(app)
      const a = yield* fetchRaw(`${base}/q?b=2&a=1`)
      const b = yield* fetchRaw(`${base}/q?a=1&b=2`)
      expect(b.text).toBe(a.text)
      const t1 = yield* fetchRaw(`${base}/t`, { "x-tenant": "one" })
      const t2 = yield* fetchRaw(`${base}/t`, { "x-tenant": "two" })
      const t1again = yield* fetchRaw(`${base}/t`, { "x-tenant": "one" })
      expect(t2.text).not.toBe(t1.text)
      expect(t1again.text).toBe(t1.text)
      yield* fetchRaw(`${base}/private`)
      const p = yield* fetchRaw(`${base}/private`)
      expect(p.headers["cache-status"]).toContain("detail=key")
      expect(calls).toBe(5)
    }))

  it.scopedLive("runs the handler once for 20 concurrent misses of one key", () =>
    Effect.gen(function*() {
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get(
          "/slow",
          Effect.gen(function*() {
            calls++
            yield* Effect.sleep("50 millis")
            return text("slow")
          })
        ),
        HttpServerCache.middleware()
      )
      const { base } = yield* serve(app)
      const replies = yield* Effect.forEach(Array.from({ length: 20 }), () => fetchRaw(`${base}/slow`), {
        concurrency: "unbounded"
      })
      expect(calls).toBe(1)
      expect(replies.every((r) => r.text === "slow")).toBe(true)
      expect(replies.filter((r) => r.headers["cache-status"]!.includes("fwd=uri-miss")).length).toBe(1)
      expect(replies.some((r) => r.headers["cache-status"]!.includes("collapsed"))).toBe(true)
    }))

  it.scopedLive("purges by tag from the request and from Cache-Tag headers, which never leave", () =>
    Effect.gen(function*() {
      const calls = { a: 0, b: 0, c: 0 }
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/a", Effect.sync(() => text(`a${++calls.a}`, { "cache-tag": "product-1 list" }))),
        HttpRouter.get("/b", Effect.sync(() => text(`b${++calls.b}`, { "surrogate-key": "product-2" }))),
        HttpRouter.get("/c", Effect.sync(() => text(`c${++calls.c}`))),
        HttpServerCache.middleware({ tags: (request) => request.url.startsWith("/c") ? ["section-c"] : [] })
      )
      const { base, cache } = yield* serve(app)
      const first = yield* fetchRaw(`${base}/a`)
      expect(first.headers["cache-tag"]).toBeUndefined()
      yield* fetchRaw(`${base}/b`)
      yield* fetchRaw(`${base}/c`)
      const removed = yield* cache.invalidateTags(["list", "section-c"])
      expect(removed).toBe(2)
      expect((yield* fetchRaw(`${base}/a`)).text).toBe("a2")
      expect((yield* fetchRaw(`${base}/b`)).text).toBe("b1")
      expect((yield* fetchRaw(`${base}/c`)).text).toBe("c2")
      expect((yield* fetchRaw(`${base}/a`)).headers["cache-tag"]).toBeUndefined()
    }))

  it.scopedLive("answers Range from a cached body: 206, If-Range, 416", () =>
    Effect.gen(function*() {
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/r", Effect.sync(() => (calls++, text("0123456789", { "etag": "\"v1\"" })))),
        HttpServerCache.middleware()
      )
      const { base } = yield* serve(app)
      const first = yield* fetchRaw(`${base}/r`, { range: "bytes=2-4" })
      expect(first.status).toBe(206)
      expect(first.text).toBe("234")
      expect(first.headers["content-range"]).toBe("bytes 2-4/10")
      const suffix = yield* fetchRaw(`${base}/r`, { range: "bytes=-3" })
      expect(suffix.text).toBe("789")
      const matching = yield* fetchRaw(`${base}/r`, { range: "bytes=0-0", "if-range": "\"v1\"" })
      expect(matching.status).toBe(206)
      const stale = yield* fetchRaw(`${base}/r`, { range: "bytes=0-0", "if-range": "\"v0\"" })
      expect(stale.status).toBe(200)
      expect(stale.text).toBe("0123456789")
      const outside = yield* fetchRaw(`${base}/r`, { range: "bytes=50-60" })
      expect(outside.status).toBe(416)
      expect(outside.headers["content-range"]).toBe("bytes */10")
      expect(calls).toBe(1)
    }))

  it.scopedLive("answers If-None-Match and If-Modified-Since with 304 from the cache", () =>
    Effect.gen(function*() {
      let calls = 0
      const lastModified = "Sat, 21 Nov 2026 10:00:00 GMT"
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/e", Effect.sync(() => (calls++, text("etagged")))),
        HttpRouter.get("/m", Effect.sync(() => (calls++, text("dated", { "last-modified": lastModified })))),
        HttpServerCache.middleware()
      )
      const { base } = yield* serve(app)
      const miss = yield* fetchRaw(`${base}/e`)
      const etag = miss.headers["etag"]!
      expect(etag).toMatch(/^"ck-[A-Za-z0-9_-]+"$/)
      const revalidated = yield* fetchRaw(`${base}/e`, { "if-none-match": etag })
      expect(revalidated.status).toBe(304)
      expect(revalidated.body.byteLength).toBe(0)
      expect((yield* fetchRaw(`${base}/e`, { "if-none-match": "\"other\"" })).status).toBe(200)
      yield* fetchRaw(`${base}/m`)
      expect((yield* fetchRaw(`${base}/m`, { "if-modified-since": lastModified })).status).toBe(304)
      expect(calls).toBe(2)
    }))

  it.scopedLive("stores bodies gzipped and negotiates Accept-Encoding", () =>
    Effect.gen(function*() {
      const body = JSON.stringify({ items: Array.from({ length: 200 }, (_, i) => ({ id: i, name: `item ${i}` })) })
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/j", Effect.succeed(HttpServerResponse.text(body, { contentType: "application/json" }))),
        HttpServerCache.middleware({ compression: { encoding: "gzip" } })
      )
      const { base } = yield* serve(app)
      const miss = yield* fetchRaw(`${base}/j`)
      expect(miss.headers["vary"]).toContain("accept-encoding")
      const gz = yield* fetchRaw(`${base}/j`, { "accept-encoding": "gzip, br" })
      expect(gz.headers["content-encoding"]).toBe("gzip")
      expect(gz.body.byteLength).toBeLessThan(body.length / 3)
      expect(gunzipSync(gz.body).toString("utf8")).toBe(body)
      expect(gz.headers["etag"]).toMatch(/-gzip"$/)
      const plain = yield* fetchRaw(`${base}/j`, { "accept-encoding": "gzip;q=0" })
      expect(plain.headers["content-encoding"]).toBeUndefined()
      expect(plain.text).toBe(body)
      expect(plain.headers["vary"]).toContain("accept-encoding")
    }))

  it.scopedLive("writes a sampled JSON operation log with hashed keys and request ids, and counts decisions", () =>
    Effect.gen(function*() {
      const lines: Array<HttpServerCache.LogLine> = []
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/l", Effect.succeed(text("logged"))),
        HttpServerCache.middleware({
          name: "logtest",
          log: { hashKeys: true, write: (line) => Effect.sync(() => void lines.push(line)) }
        })
      )
      const hits = HttpServerCache.requestsTotal.pipe(Metric.tagged("cache", "logtest"), Metric.tagged("result", "hit"))
      const { base } = yield* serve(app)
      yield* fetchRaw(`${base}/l`, { "x-request-id": "req-1" })
      yield* fetchRaw(`${base}/l`, { "x-request-id": "req-2" })
      expect(lines.map((l) => [l.decision, l.requestId])).toEqual([["miss", "req-1"], ["hit", "req-2"]])
      expect(lines[0]!.key).toMatch(/^[0-9a-f]{16}$/)
      expect(lines[0]!.key).toBe(lines[1]!.key)
      expect(JSON.parse(JSON.stringify(lines[1]))).toMatchObject({ path: "/l", status: 200 })
      expect((yield* Metric.value(hits)).count).toBe(1)
      const unsampled: Array<HttpServerCache.LogLine> = []
      const quiet = HttpRouter.empty.pipe(
        HttpRouter.get("/l", Effect.succeed(text("quiet"))),
        HttpServerCache.middleware({
          log: { sample: 0, write: (line) => Effect.sync(() => void unsampled.push(line)) }
        })
      )
      const second = yield* serve(quiet)
      yield* fetchRaw(`${second.base}/l`)
      expect(unsampled).toEqual([])
    }))

  it.scopedLive("stores bodies with brotli when configured", () =>
    Effect.gen(function*() {
      const body = "brotli ".repeat(500)
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/b", Effect.succeed(text(body))),
        HttpServerCache.middleware({ compression: { encoding: "br" } })
      )
      const { base } = yield* serve(app)
      yield* fetchRaw(`${base}/b`)
      const br = yield* fetchRaw(`${base}/b`, { "accept-encoding": "br" })
      expect(br.headers["content-encoding"]).toBe("br")
      expect(brotliDecompressSync(br.body).toString("utf8")).toBe(body)
      const identity = yield* fetchRaw(`${base}/b`, { "accept-encoding": "gzip" })
      expect(identity.headers["content-encoding"]).toBeUndefined()
      expect(identity.text).toBe(body)
    }))

  it.scopedLive("purges tags through its own index on a backend without the tag capability", () =>
    Effect.gen(function*() {
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/t/:id", Effect.sync(() => text(`t${++calls}`, { "cache-tag": "all" }))),
        HttpServerCache.middleware({ key: HttpServerCache.Key.methodAndPath })
      )
      const memory = yield* MemoryBackend.make()
      const untagged: CacheBackend.CacheBackend = { ...memory, tags: undefined }
      const { base, cache } = yield* serve(app, {}, Layer.succeed(CacheBackend.CacheBackendTag, untagged))
      yield* fetchRaw(`${base}/t/1`)
      yield* fetchRaw(`${base}/t/2`)
      expect((yield* fetchRaw(`${base}/t/1`)).text).toBe("t1")
      expect(yield* cache.invalidateTags(["all"])).toBe(2)
      expect((yield* fetchRaw(`${base}/t/1`)).text).toBe("t3")
      expect(yield* cache.invalidate("GET /t/1")).toBe(true)
      expect((yield* fetchRaw(`${base}/t/1`)).text).toBe("t4")
    }))

  it.scopedLive("HEAD is answered from the GET entry without a body", () =>
    Effect.gen(function*() {
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/g", Effect.sync(() => (calls++, text("headed")))),
        HttpServerCache.middleware()
      )
      const { base } = yield* serve(app, {}, MemoryBackend.layer())
      yield* fetchRaw(`${base}/g`)
      const head = yield* fetchRaw(`${base}/g`, {}, "HEAD")
      expect(head.status).toBe(200)
      expect(head.body.byteLength).toBe(0)
      expect(head.headers["cache-status"]).toContain("hit")
      expect(calls).toBe(1)
    }))
})
