/**
 * The proxy as a shared cache, end to end: a real undici client -> `Proxy.layerCaching` (memory
 * backend) -> a real NodeHttpServer origin whose handlers set the headers under test.
 */
import { DiskBackend } from "@cachekit/backends"
import { MemoryBackend } from "@cachekit/core"
import { Proxy } from "@cachekit/http"
import { HttpServerResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { createHash } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { request } from "undici"
import type { Routes, Seen } from "./fixtures/proxyOrigin.js"
import { agent, bigBodySha256, fetchVia, layerOrigin, OriginTag } from "./fixtures/proxyOrigin.js"

const MIB = 1024 * 1024

const text = (body: string, headers: Record<string, string>, status = 200) =>
  Effect.succeed(HttpServerResponse.text(body, { status, headers }))

const header = (seen: Seen, name: string): string => {
  const value = seen.headers[name]
  return value === undefined ? "-" : Array.isArray(value) ? value.join(",") : String(value)
}

/** Routes of the origin, each setting the fields one RFC rule is about. */
const routes: Routes = {
  "/shared-only": (seen) => text(`generated #${seen.url}`, { "cache-control": "public, max-age=0, s-maxage=60" }),
  "/private": () => text("for one user", { "cache-control": "private, max-age=60" }),
  "/no-store": () => text("never stored", { "cache-control": "no-store" }),
  "/profile": (seen) => text(`profile of ${header(seen, "authorization")}`, { "cache-control": "max-age=60" }),
  "/public-with-auth": (seen) =>
    text(`shared page (first asked by ${header(seen, "authorization")})`, { "cache-control": "public, max-age=60" }),
  "/vary": (seen) =>
    text(`ua=${header(seen, "user-agent")} lang=${header(seen, "accept-language")}`, {
      "cache-control": "public, max-age=60",
      vary: "User-Agent, Accept-Language"
    }),
  "/etag": (seen) =>
    seen.headers["if-none-match"] === "\"v1\""
      ? Effect.succeed(
        HttpServerResponse.empty({ status: 304, headers: { etag: "\"v1\"", "cache-control": "max-age=0" } })
      )
      : text("validated body", { etag: "\"v1\"", "cache-control": "max-age=0" }),
  "/items": (seen) =>
    seen.method === "GET"
      ? text("item list", { "cache-control": "public, max-age=60" })
      : text("created", { "cache-control": "no-store" }, 201),
  "/aged": () => text("aged", { "cache-control": "public, max-age=600", age: "100" }),
  "/cdn": () =>
    text("cdn controlled", {
      "cache-control": "no-store",
      "cdn-cache-control": "max-age=60"
    }),
  "/collapse": () =>
    Effect.sleep("300 millis").pipe(
      Effect.as(HttpServerResponse.text("one origin trip", { headers: { "cache-control": "public, max-age=60" } }))
    )
}

const proxyOver = (options: Partial<Proxy.CachingOptions> = {}, memoryMaxBytes = 16 * MIB) =>
  Layer.unwrapEffect(
    Effect.map(OriginTag, (origin) =>
      Proxy.layerCaching({ upstream: origin.url, port: 0, ...options }).pipe(
        Layer.provide(MemoryBackend.layer({ maxBytes: memoryMaxBytes })),
        Layer.provide(NodeHttpClient.layerUndici)
      ))
  ).pipe(Layer.provideMerge(layerOrigin(routes)))

const env = proxyOver()

describe("Proxy as a shared cache (RFC 9111)", () => {
  it.scopedLive("§5.2.2.10 s-maxage: stored and served by the shared cache although max-age=0", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const first = yield* fetchVia(`${proxy.url}/shared-only`)
      const second = yield* fetchVia(`${proxy.url}/shared-only`)
      expect(first.headers["cache-status"]).toContain("fwd=uri-miss")
      expect(first.headers["cache-status"]).toContain("stored")
      expect(second.headers["cache-status"]).toMatch(/^cachekit; hit; ttl=\d+/)
      expect(second.text).toBe(first.text)
      expect(second.headers["age"]).toMatch(/^\d+$/)
      expect(yield* origin.count("/shared-only")).toBe(1)
    }).pipe(Effect.provide(env)))

  it.scopedLive("§5.2.2.7 private: a shared cache does not store it", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const first = yield* fetchVia(`${proxy.url}/private`)
      const second = yield* fetchVia(`${proxy.url}/private`)
      expect(first.headers["cache-status"]).not.toContain("stored")
      expect(second.headers["cache-status"]).not.toContain("hit")
      expect(yield* origin.count("/private")).toBe(2)
    }).pipe(Effect.provide(env)))

  it.scopedLive("§3.5 a response to a request with Authorization is not shared with other users", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const alice = yield* fetchVia(`${proxy.url}/profile`, { headers: { authorization: "Bearer alice" } })
      const bob = yield* fetchVia(`${proxy.url}/profile`, { headers: { authorization: "Bearer bob" } })
      const anonymous = yield* fetchVia(`${proxy.url}/profile`)
      expect(alice.text).toBe("profile of Bearer alice")
      expect(bob.text).toBe("profile of Bearer bob")
      expect(anonymous.text).toBe("profile of -")
      expect(yield* origin.count("/profile")).toBe(3)
    }).pipe(Effect.provide(env)))

  it.scopedLive("§3.5 public lets a shared cache reuse a response to an authorized request", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      yield* fetchVia(`${proxy.url}/public-with-auth`, { headers: { authorization: "Bearer alice" } })
      const again = yield* fetchVia(`${proxy.url}/public-with-auth`, { headers: { authorization: "Bearer alice" } })
      expect(again.headers["cache-status"]).toContain("hit")
      expect(yield* origin.count("/public-with-auth")).toBe(1)
    }).pipe(Effect.provide(env)))

  it.scopedLive("§4.1 Vary: one stored response per User-Agent and Accept-Language, never mixed up", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const dispatcher = yield* agent
      const variants = [
        { "user-agent": "ua-one", "accept-language": "en" },
        { "user-agent": "ua-two", "accept-language": "en" },
        { "user-agent": "ua-one", "accept-language": "fr" }
      ]
      for (let round = 0; round < 2; round++) {
        for (const headers of variants) {
          const res = yield* fetchVia(`${proxy.url}/vary`, { headers, dispatcher })
          expect(res.text).toBe(`ua=${headers["user-agent"]} lang=${headers["accept-language"]}`)
          if (round === 1) expect(res.headers["cache-status"]).toContain("hit")
        }
      }
      expect(yield* origin.count("/vary")).toBe(3)
    }).pipe(Effect.provide(env)))

  it.scopedLive("§5.2.2.5 no-store: never stored, every request reaches the origin", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      for (let i = 0; i < 3; i++) {
        const res = yield* fetchVia(`${proxy.url}/no-store`)
        expect(res.headers["cache-status"]).not.toContain("stored")
      }
      expect(yield* origin.count("/no-store")).toBe(3)
    }).pipe(Effect.provide(env)))

  it.scopedLive("§4.3 a stale response is revalidated with If-None-Match and a 304 serves the stored body", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const first = yield* fetchVia(`${proxy.url}/etag`)
      const second = yield* fetchVia(`${proxy.url}/etag`)
      expect(first.text).toBe("validated body")
      expect(second.status).toBe(200)
      expect(second.text).toBe("validated body")
      expect(second.headers["cache-status"]).toContain("fwd=stale")
      expect(second.headers["cache-status"]).toContain("fwd-status=304")
      const seen = yield* origin.seen
      expect(seen.map((s) => s.headers["if-none-match"])).toEqual([undefined, "\"v1\""])
    }).pipe(Effect.provide(env)))

  it.scopedLive("§4.4 an unsafe method invalidates the stored response of its URL", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      yield* fetchVia(`${proxy.url}/items`)
      expect((yield* fetchVia(`${proxy.url}/items`)).headers["cache-status"]).toContain("hit")
      const created = yield* fetchVia(`${proxy.url}/items`, { method: "POST", body: "new item" })
      expect(created.status).toBe(201)
      const after = yield* fetchVia(`${proxy.url}/items`)
      expect(after.headers["cache-status"]).toContain("fwd=uri-miss")
      expect((yield* origin.seen).map((s) => s.method)).toEqual(["GET", "POST", "GET"])
    }).pipe(Effect.provide(env)))

  it.scopedLive("§5.1 Age on a hit includes the Age the upstream sent", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      yield* fetchVia(`${proxy.url}/aged`)
      const hit = yield* fetchVia(`${proxy.url}/aged`)
      expect(hit.headers["cache-status"]).toContain("hit")
      expect(Number(hit.headers["age"])).toBeGreaterThanOrEqual(100)
      expect(Number(hit.headers["age"])).toBeLessThan(110)
    }).pipe(Effect.provide(env)))

  it.scopedLive("RFC 9211 Cache-Status carries the configured cache name", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const res = yield* fetchVia(`${proxy.url}/items`)
      expect(res.headers["cache-status"]).toMatch(/^edge-1; fwd=uri-miss/)
    }).pipe(Effect.provide(proxyOver({ cache: { name: "edge-1" } }))))

  it.scopedLive("RFC 9213 CDN-Cache-Control wins over Cache-Control and is removed when this is the last CDN hop", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const first = yield* fetchVia(`${proxy.url}/cdn`)
      const second = yield* fetchVia(`${proxy.url}/cdn`)
      expect(second.headers["cache-status"]).toContain("hit")
      expect(yield* origin.count("/cdn")).toBe(1)
      expect(first.headers["cdn-cache-control"]).toBeUndefined()
      expect(second.headers["cache-control"]).toBe("no-store")
    }).pipe(Effect.provide(proxyOver({
      cache: { targetedCacheControl: ["cdn-cache-control"] },
      stripResponseFields: ["CDN-Cache-Control"]
    }))))

  it.scopedLive("concurrent identical misses reach the origin once", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const results = yield* Effect.all(
        Array.from({ length: 6 }, () => fetchVia(`${proxy.url}/collapse`)),
        { concurrency: "unbounded" }
      )
      expect(results.map((r) => r.text)).toEqual(Array(6).fill("one origin trip"))
      expect(yield* origin.count("/collapse")).toBe(1)
    }).pipe(Effect.provide(env)))
})

describe("Proxy caching upstream failures", () => {
  it.scopedLive("answers 504 when the upstream sends no response head in time (the timeout sits under the cache)", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const started = Date.now()
      const res = yield* fetchVia(`${proxy.url}/hang`)
      expect(res.status).toBe(504)
      expect(res.text).toContain("did not answer within 300 ms")
      expect(Date.now() - started).toBeLessThan(5000)
    }).pipe(Effect.provide(proxyOver({ upstreamTimeout: "300 millis" }))))

  it.scopedLive("answers 502 when the upstream is unreachable", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const res = yield* fetchVia(`${proxy.url}/x`)
      expect(res.status).toBe(502)
      expect(res.text).toContain("is unreachable")
    }).pipe(Effect.provide(
      Proxy.layerCaching({ upstream: "http://127.0.0.1:1", port: 0 }).pipe(
        Layer.provide(MemoryBackend.layer()),
        Layer.provide(NodeHttpClient.layerUndici)
      )
    )))
})

describe("Proxy caching large bodies", () => {
  it.scopedLive("stores a 50 MiB body and serves it from the cache, intact, with bounded memory growth", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const read = Effect.promise(async () => {
        const res = await request(`${proxy.url}/big?mib=50&cacheable=1`)
        const hash = createHash("sha256")
        let bytes = 0
        for await (const chunk of res.body) {
          hash.update(chunk as Buffer)
          bytes += (chunk as Buffer).byteLength
        }
        return { status: res.statusCode, status2: res.headers["cache-status"], bytes, sha: hash.digest("hex") }
      })
      const miss = yield* read
      expect(miss.bytes).toBe(50 * MIB)
      expect(miss.status2).toContain("stored")
      const before = process.memoryUsage().rss
      for (let i = 0; i < 3; i++) {
        const hit = yield* read
        expect(hit.status2).toContain("hit")
        expect(hit.sha).toBe(bigBodySha256(50))
      }
      // Hits stream the stored bytes; three 50 MiB hits must not add a copy each.
      expect((process.memoryUsage().rss - before) / MIB).toBeLessThan(100)
      expect(yield* origin.count("/big")).toBe(1)
    }).pipe(Effect.provide(
      proxyOver({ cache: { maxBodySize: 64 * MIB } }, 128 * MIB)
    )))
})

describe("Proxy on the disk backend", () => {
  it.scopedLive("stores a 4 MiB body on disk (streamed write) and serves the hit from disk, intact", () =>
    Effect.gen(function*() {
      const directory = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "cachekit-proxy-disk-"))),
        (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
      )
      const context = yield* Layer.build(
        Layer.unwrapEffect(Effect.map(OriginTag, (origin) =>
          Proxy.layerCaching({ upstream: origin.url, port: 0 }).pipe(
            Layer.provide(DiskBackend.layer({ directory, fsync: false })),
            Layer.provide(NodeHttpClient.layerUndici)
          )))
      )
      const proxy = Context.get(context, Proxy.ProxyTag)
      const origin = yield* OriginTag
      const read = Effect.promise(async () => {
        const res = await request(`${proxy.url}/big?mib=4&cacheable=1`)
        const hash = createHash("sha256")
        for await (const chunk of res.body) hash.update(chunk as Buffer)
        return { cacheStatus: String(res.headers["cache-status"]), sha: hash.digest("hex") }
      })
      const miss = yield* read
      const hit = yield* read
      expect(miss.cacheStatus).toContain("stored")
      expect(hit.cacheStatus).toContain("hit")
      expect(hit.sha).toBe(bigBodySha256(4))
      expect(yield* origin.count("/big")).toBe(1)
    }).pipe(Effect.provide(layerOrigin(routes))))
})
