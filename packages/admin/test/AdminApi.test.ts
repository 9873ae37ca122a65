import { AdminApi, AdminAuth, AdminTarget, OperationLog } from "@cachekit/admin"
import type { CacheBackend, CacheEntry } from "@cachekit/core"
import { Cache, CacheBackend as CacheBackendModule, MemoryBackend, TieredCache } from "@cachekit/core"
import { HttpRouter, HttpServer, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Either, Layer, Option, Redacted, Tracer } from "effect"
import { createServer } from "node:http"
import type { Harness, HarnessOptions } from "./fixtures.js"
import {
  ADMIN_TOKEN,
  bearer,
  ClientLayer,
  exists,
  harness,
  HarnessTag,
  jsonHeaders,
  raw,
  READ_TOKEN,
  seed
} from "./fixtures.js"

const withHarness = <A, E, R>(f: (h: Harness) => Effect.Effect<A, E, R>, options?: HarnessOptions) =>
  Effect.flatMap(HarnessTag, f).pipe(
    Effect.provide(Layer.merge(harness(options), ClientLayer)),
    Effect.timeout("20 seconds")
  )

const adminClient = (h: Harness) => AdminApi.client({ baseUrl: h.baseUrl, token: ADMIN_TOKEN })
const readClient = (h: Harness) => AdminApi.client({ baseUrl: h.baseUrl, token: READ_TOKEN })

describe("read endpoints", () => {
  it.scopedLive("health reports each backend with its status and probe latency", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        const health = yield* (yield* readClient(h)).read.health()
        expect(health.status).toBe("up")
        expect(health.tiers).toHaveLength(1)
        expect(health.tiers[0]!.name).toBe(h.backend.name)
        expect(health.tiers[0]!.latencyMillis).toBeGreaterThanOrEqual(0)
      })
    ))

  it.scopedLive("stats count the backend's hits and misses and compute the hit ratio", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        yield* h.backend.get("a")
        yield* h.backend.get("a")
        yield* h.backend.get("a")
        yield* h.backend.get("missing")
        const stats = yield* (yield* readClient(h)).read.stats()
        expect(stats.hits).toBe(3)
        expect(stats.misses).toBe(1)
        expect(stats.hitRatio).toBeCloseTo(0.75)
        expect(stats.entries).toBe(1)
        expect(stats.tiers.map((t) => t.name)).toEqual([h.backend.name])
      })
    ))

  it.scopedLive("hot keys list the most read key first and honour the limit", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        for (const key of ["hot", "warm", "cold"]) yield* seed(h.backend, key)
        for (let i = 0; i < 12; i++) yield* h.backend.get("hot")
        for (let i = 0; i < 4; i++) yield* h.backend.get("warm")
        const client = yield* readClient(h)
        const top = yield* client.read.hotKeys({ urlParams: { limit: 2 } })
        expect(top.keys).toHaveLength(2)
        expect(top.keys[0]!.key).toBe("hot")
        expect(top.keys[0]!.hits).toBeGreaterThan(top.keys[1]!.hits)
        const tooMany = yield* raw({ port: h.port, path: "/admin/hot-keys?limit=5000", headers: bearer(READ_TOKEN) })
        expect(tooMany.status).toBe(400)
      })
    ))

  it.scopedLive("tags lists the tags of stored entries", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "u1", "x", ["user:1", "users"])
        yield* seed(h.backend, "u2", "x", ["user:2", "users"])
        const { tags } = yield* (yield* readClient(h)).read.tags()
        expect([...tags].sort()).toEqual(["user:1", "user:2", "users"])
      })
    ))

  it.scopedLive("health reports down, without hanging, when the probe does not answer in time", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({})
      const stuck: CacheBackend.CacheBackend = { ...backend, health: Effect.never }
      yield* withHarness((h) =>
        Effect.gen(function*() {
          const health = yield* (yield* readClient(h)).read.health()
          expect(health.status).toBe("down")
          expect(health.tiers[0]!.detail).toContain("did not answer within 200 ms")
        }), { backend: stuck, healthTimeoutMillis: 200 })
    }))

  it.scopedLive("keys pages through a pattern with a cursor, never more than count per page", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        for (let i = 0; i < 25; i++) yield* seed(h.backend, `user:${i}`)
        yield* seed(h.backend, "other")
        const client = yield* readClient(h)
        const seen: Array<string> = []
        let cursor: string | undefined = undefined
        let pages = 0
        do {
          const page: { keys: ReadonlyArray<string>; cursor: string | null } = yield* client.read.keys({
            urlParams: { pattern: "user:*", count: 10, ...(cursor === undefined ? {} : { cursor }) }
          })
          expect(page.keys.length).toBeLessThanOrEqual(10)
          seen.push(...page.keys)
          cursor = page.cursor ?? undefined
          pages++
        } while (cursor !== undefined && pages < 20)
        expect(new Set(seen).size).toBe(25)
        expect(seen).not.toContain("other")
        expect(pages).toBeGreaterThanOrEqual(3)
      })
    ))

  it.scopedLive("keys refuses a page larger than the bound and an over-long pattern", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        const big = yield* raw({ port: h.port, path: "/admin/keys?count=100000", headers: bearer(READ_TOKEN) })
        expect(big.status).toBe(400)
        const long = yield* raw({
          port: h.port,
          path: `/admin/keys?pattern=${"a".repeat(AdminApi.MAX_PATTERN_LENGTH + 1)}`,
          headers: bearer(READ_TOKEN)
        })
        expect(long.status).toBe(400)
        expect(long.body).toContain("longer than 256")
        const unknown = yield* raw({ port: h.port, path: "/admin/keys?evil=1", headers: bearer(READ_TOKEN) })
        expect(unknown.status).toBe(400)
      })
    ))

  it.scopedLive("an entry's metadata shows size, ttl left, tags and tier, and the body only when asked", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "page:home", "hello", ["pages"])
        const client = yield* readClient(h)
        const meta = yield* client.read.entry({ path: { key: "page:home" }, urlParams: {} })
        expect(meta.size).toBe(5)
        expect(meta.tags).toEqual(["pages"])
        expect(meta.tier).toBe(h.backend.name)
        expect(meta.ttlLeftMillis).toBeGreaterThan(50_000)
        expect(meta.ttlLeftMillis).toBeLessThanOrEqual(60_000)
        expect(meta.bodyBase64).toBeUndefined()
        const withBody = yield* client.read.entry({ path: { key: "page:home" }, urlParams: { body: true } })
        expect(Buffer.from(withBody.bodyBase64!, "base64").toString()).toBe("hello")
        const missing = yield* Effect.either(client.read.entry({ path: { key: "nope" }, urlParams: {} }))
        expect(Either.isLeft(missing) && missing.left._tag).toBe("EntryNotFound")
      })
    ))
})

describe("invalidation", () => {
  it.scopedLive("invalidate removes keys, tags and a pattern and returns how many went", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "k1")
        yield* seed(h.backend, "k2")
        yield* seed(h.backend, "t1", "x", ["group"])
        yield* seed(h.backend, "t2", "x", ["group"])
        yield* seed(h.backend, "session:1")
        yield* seed(h.backend, "session:2")
        yield* seed(h.backend, "keep")
        const client = yield* adminClient(h)
        const result = yield* client.admin.invalidate({
          payload: { keys: ["k1", "k2", "absent"], tags: ["group"], pattern: "session:*" }
        })
        expect(result).toEqual({ removed: 6, byKeys: 2, byTags: 2, byPattern: 2 })
        for (const key of ["k1", "k2", "t1", "t2", "session:1", "session:2"]) {
          expect(yield* exists(h.backend, key)).toBe(false)
        }
        expect(yield* exists(h.backend, "keep")).toBe(true)
      })
    ))

  it.scopedLive("a pattern matching every key needs confirm: true, and nothing is removed without it", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        yield* seed(h.backend, "b")
        for (const pattern of ["*", "**", "?*", "[a-z]*"]) {
          const refused = yield* raw({
            port: h.port,
            method: "POST",
            path: "/admin/invalidate",
            headers: jsonHeaders(ADMIN_TOKEN),
            body: JSON.stringify({ pattern, keys: ["a"] })
          })
          expect(refused.status).toBe(400)
          expect(refused.json).toMatchObject({ _tag: "ConfirmationRequired" })
        }
        expect(yield* exists(h.backend, "a")).toBe(true)
        expect(yield* exists(h.backend, "b")).toBe(true)
        const client = yield* adminClient(h)
        const done = yield* client.admin.invalidate({ payload: { pattern: "*", confirm: true } })
        expect(done.removed).toBe(2)
        expect(yield* exists(h.backend, "a")).toBe(false)
      })
    ))

  it.scopedLive("clear needs confirm: true and then empties the cache", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        for (const body of ["{}", JSON.stringify({ confirm: false }), JSON.stringify({ confirm: "yes" })]) {
          const refused = yield* raw({
            port: h.port,
            method: "POST",
            path: "/admin/clear",
            headers: jsonHeaders(ADMIN_TOKEN),
            body
          })
          expect(refused.status).toBe(400)
        }
        expect(yield* exists(h.backend, "a")).toBe(true)
        const client = yield* adminClient(h)
        expect(yield* client.admin.clear({ payload: { confirm: true } })).toEqual({ cleared: true })
        expect(yield* exists(h.backend, "a")).toBe(false)
      })
    ))
})

describe("auth", () => {
  const endpoints = [
    { method: "GET", path: "/admin/health" },
    { method: "GET", path: "/admin/stats" },
    { method: "GET", path: "/admin/hot-keys" },
    { method: "GET", path: "/admin/tags" },
    { method: "GET", path: "/admin/keys" },
    { method: "GET", path: "/admin/entries/a" },
    { method: "POST", path: "/admin/invalidate", body: JSON.stringify({ keys: ["a"] }) },
    { method: "POST", path: "/admin/clear", body: JSON.stringify({ confirm: true }) }
  ]

  it.scopedLive("every endpoint answers 401 without a token, with a wrong one, or with another scheme", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        const attempts: Array<Record<string, string>> = [
          {},
          bearer("wrong-token-0123456789abcdef"),
          bearer(ADMIN_TOKEN.slice(0, -1)),
          { authorization: ADMIN_TOKEN },
          { authorization: `Basic ${Buffer.from(`x:${ADMIN_TOKEN}`).toString("base64")}` },
          { authorization: `Bearer ${ADMIN_TOKEN} extra` }
        ]
        for (const e of endpoints) {
          for (const headers of attempts) {
            const res = yield* raw({
              port: h.port,
              method: e.method,
              path: e.path,
              headers: { ...headers, "content-type": "application/json" },
              ...(e.body === undefined ? {} : { body: e.body })
            })
            expect(res.status, `${e.method} ${e.path} with ${JSON.stringify(headers)}`).toBe(401)
            expect(res.json).toMatchObject({ _tag: "Unauthorized" })
          }
        }
        expect(yield* exists(h.backend, "a")).toBe(true)
      })
    ))

  it.scopedLive("rejected requests are always logged, without the token that was tried", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* raw({ port: h.port, path: "/admin/stats", headers: bearer("guess-guess-guess-guess") })
        yield* raw({
          port: h.port,
          method: "POST",
          path: "/admin/clear",
          headers: jsonHeaders(READ_TOKEN),
          body: JSON.stringify({ confirm: true })
        })
        const lines = h.lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.op === "admin.auth")
        expect(lines.map((l) => [l.outcome, l.detail])).toEqual([
          ["unauthorized", "/stats"],
          ["forbidden", "/clear"]
        ])
        const text = h.lines.join("\n")
        expect(text).not.toContain("guess-guess")
        expect(text).not.toContain(READ_TOKEN)
      }), { log: { sampleRate: 0 } }))

  it.scopedLive("the read token reads but gets 403 on invalidate and clear, and nothing changes", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        for (const e of endpoints) {
          const res = yield* raw({
            port: h.port,
            method: e.method,
            path: e.path,
            headers: jsonHeaders(READ_TOKEN),
            ...(e.body === undefined ? {} : { body: e.body })
          })
          if (e.method === "POST") {
            expect(res.status, e.path).toBe(403)
            expect(res.json).toMatchObject({ _tag: "Forbidden" })
          } else {
            expect(res.status, e.path).toBe(200)
          }
        }
        expect(yield* exists(h.backend, "a")).toBe(true)
      })
    ))

  it.scopedLive("the admin token may read and mutate", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        const client = yield* adminClient(h)
        expect((yield* client.read.stats()).entries).toBe(1)
        expect((yield* client.admin.invalidate({ payload: { keys: ["a"] } })).removed).toBe(1)
      })
    ))

  it.scopedLive("anonymous mode, when enabled, serves loopback clients without a token", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        const res = yield* raw({ port: h.port, path: "/admin/stats" })
        expect(res.status).toBe(200)
      }), { auth: { allowAnonymous: true } }))
})

describe("bad input changes nothing", () => {
  const post = (h: Harness, body: string, path = "/admin/invalidate", headers = jsonHeaders(ADMIN_TOKEN)) =>
    raw({ port: h.port, method: "POST", path, headers, body })

  it.scopedLive("malformed JSON is a 400 with a clear message", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        const res = yield* post(h, "{\"keys\": [\"a\"")
        expect(res.status).toBe(400)
        expect(res.json).toMatchObject({ _tag: "MalformedRequest" })
        expect((res.json as { message: string }).message).toMatch(/not valid JSON/)
        const clear = yield* post(h, "confirm=true", "/admin/clear")
        expect(clear.status).toBe(400)
        expect(yield* exists(h.backend, "a")).toBe(true)
      })
    ))

  it.scopedLive("unknown fields are rejected by name", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        const res = yield* post(h, JSON.stringify({ keys: ["a"], everything: true }))
        expect(res.status).toBe(400)
        expect(res.body).toContain("everything")
        const clear = yield* post(h, JSON.stringify({ confirm: true, force: true }), "/admin/clear")
        expect(clear.status).toBe(400)
        expect(yield* exists(h.backend, "a")).toBe(true)
      })
    ))

  it.scopedLive("a huge pattern, an empty request and wrong types are 400s", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        for (
          const body of [
            JSON.stringify({ pattern: "a*".repeat(200) }),
            JSON.stringify({}),
            JSON.stringify({ keys: [] }),
            JSON.stringify({ keys: "a" }),
            JSON.stringify({ keys: [""] }),
            JSON.stringify({ keys: Array.from({ length: 1001 }, (_, i) => `k${i}`) }),
            "null",
            "[]"
          ]
        ) {
          const res = yield* post(h, body)
          expect(res.status, body.slice(0, 40)).toBe(400)
        }
        expect(yield* exists(h.backend, "a")).toBe(true)
      })
    ))

  it.scopedLive("a body over the size limit is refused with 413", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        const res = yield* post(h, JSON.stringify({ keys: ["a"], pad: "x".repeat(5000) }))
        expect(res.status).toBe(413)
        expect(yield* exists(h.backend, "a")).toBe(true)
      }), { maxBodyBytes: 1024 }))
})

describe("path tricks do not bypass auth", () => {
  it.scopedLive("dot segments, encoded slashes, case and method overrides never reach a mutating handler", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        const body = JSON.stringify({ keys: ["a"] })
        const tricks: Array<{ method: string; path: string; headers?: Record<string, string> }> = [
          { method: "POST", path: "/admin/../invalidate" },
          { method: "POST", path: "/admin/../admin/invalidate" },
          { method: "POST", path: "/admin/%2e%2e/admin/invalidate" },
          { method: "POST", path: "/admin/stats/../invalidate", headers: bearer(READ_TOKEN) },
          { method: "POST", path: "/admin/./invalidate", headers: bearer(READ_TOKEN) },
          { method: "POST", path: "/admin%2Finvalidate" },
          { method: "POST", path: "/admin/%2Finvalidate" },
          { method: "POST", path: "//admin/invalidate" },
          { method: "POST", path: "/ADMIN/invalidate" },
          { method: "POST", path: "/admin/invalidate/", headers: bearer(READ_TOKEN) },
          { method: "POST", path: "/admin/invalidate?x=1", headers: bearer(READ_TOKEN) },
          {
            method: "GET",
            path: "/admin/invalidate",
            headers: { ...bearer(READ_TOKEN), "x-http-method-override": "POST" }
          },
          {
            method: "POST",
            path: "/admin/stats",
            headers: {
              ...bearer(READ_TOKEN),
              "x-http-method-override": "POST",
              "x-original-url": "/admin/invalidate",
              "x-rewrite-url": "/admin/invalidate"
            }
          },
          {
            method: "POST",
            path: "/admin/invalidate",
            headers: { "x-http-method-override": "GET", "x-forwarded-for": "127.0.0.1" }
          },
          {
            method: "POST",
            path: "/admin/invalidate",
            headers: { ...bearer(READ_TOKEN), "x-forwarded-user": "admin", "x-http-method": "GET" }
          }
        ]
        for (const t of tricks) {
          const res = yield* raw({
            port: h.port,
            method: t.method,
            path: t.path,
            headers: { "content-type": "application/json", ...t.headers },
            body
          })
          expect(res.status, `${t.method} ${t.path}`).toBeGreaterThanOrEqual(400)
          expect(res.status, `${t.method} ${t.path}`).toBeLessThan(500)
          expect(yield* exists(h.backend, "a"), `${t.method} ${t.path}`).toBe(true)
        }
      })
    ))

  it.scopedLive("an encoded slash inside a key path parameter is part of the key", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a/b")
        const res = yield* raw({ port: h.port, path: "/admin/entries/a%2Fb", headers: bearer(READ_TOKEN) })
        expect(res.status).toBe(200)
        expect(res.json).toMatchObject({ key: "a/b" })
        const unauth = yield* raw({ port: h.port, path: "/admin/entries/a%2Fb" })
        expect(unauth.status).toBe(401)
      })
    ))
})

describe("missing capabilities", () => {
  // A backend with nothing optional: no tags, no scan, no stats, no hot keys.
  const bare = (): CacheBackend.CacheBackend => {
    const store = new Map<string, CacheEntry.CacheEntry>()
    return {
      name: "bare",
      get: (key) => Effect.sync(() => Option.fromNullable(store.get(key))),
      set: (key, entry) => Effect.sync(() => void store.set(key, entry)),
      delete: (key) => Effect.sync(() => store.delete(key)),
      clear: Effect.sync(() => store.clear()),
      health: Effect.succeed({ backend: "bare", status: "up", latencyMillis: 0 })
    }
  }

  it.scopedLive("answer 501 NotSupported, and a partly unsupported invalidation removes nothing", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        for (const path of ["/admin/tags", "/admin/keys", "/admin/stats", "/admin/hot-keys"]) {
          const res = yield* raw({ port: h.port, path, headers: bearer(READ_TOKEN) })
          expect(res.status, path).toBe(501)
          expect(res.json).toMatchObject({ _tag: "NotSupported" })
        }
        for (const payload of [{ keys: ["a"], tags: ["t"] }, { keys: ["a"], pattern: "a*" }]) {
          const res = yield* raw({
            port: h.port,
            method: "POST",
            path: "/admin/invalidate",
            headers: jsonHeaders(ADMIN_TOKEN),
            body: JSON.stringify(payload)
          })
          expect(res.status).toBe(501)
        }
        expect(yield* exists(h.backend, "a")).toBe(true)
        const byKey = yield* (yield* adminClient(h)).admin.invalidate({ payload: { keys: ["a"] } })
        expect(byKey.removed).toBe(1)
      }), { backend: bare() }))
})

describe("documents and mounting", () => {
  it.scopedLive("serves an OpenAPI document with the prefix as server, and a Swagger page", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        const doc = yield* raw({ port: h.port, path: "/admin/openapi.json" })
        expect(doc.status).toBe(200)
        const spec = doc.json as { servers: Array<{ url: string }>; paths: Record<string, unknown> }
        expect(spec.servers).toEqual([{ url: "/admin" }])
        expect(Object.keys(spec.paths)).toEqual(
          expect.arrayContaining([
            "/health",
            "/stats",
            "/hot-keys",
            "/tags",
            "/keys",
            "/entries/{key}",
            "/invalidate",
            "/clear"
          ])
        )
        expect(doc.body).toContain("bearer")
        const page = yield* raw({ port: h.port, path: "/admin/docs" })
        expect(page.status).toBe(200)
        expect(page.body).toContain("swagger-ui")
      })
    ))

  it.scopedLive("sends no-store and anti-sniffing/framing headers, and a hash-based CSP with the dashboard", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        for (const path of ["/admin/stats", "/admin/nope", "/admin/dashboard"]) {
          const res = yield* raw({ port: h.port, path, headers: bearer(READ_TOKEN) })
          expect(res.headers["cache-control"], path).toBe("no-store")
          expect(res.headers["x-content-type-options"], path).toBe("nosniff")
          expect(res.headers["x-frame-options"], path).toBe("DENY")
        }
        const page = yield* raw({ port: h.port, path: "/admin/" })
        expect(page.status).toBe(200)
        expect(page.headers["content-type"]).toContain("text/html")
        const csp = String(page.headers["content-security-policy"])
        expect(csp).toMatch(/script-src 'sha256-[A-Za-z0-9+/=]+'/)
        expect(csp).not.toContain("unsafe-inline")
        expect(csp).toContain("frame-ancestors 'none'")
        expect(page.body).toContain("const BASE = \"/admin\"")
      })
    ))

  it.scopedLive("serves at the root when no prefix is given", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        const stats = yield* (yield* readClient(h)).read.stats()
        expect(stats.entries).toBe(0)
        const res = yield* raw({ port: h.port, path: "/admin/stats", headers: bearer(READ_TOKEN) })
        expect(res.status).toBe(404)
      }), { prefix: "/" }))

  it.scopedLive("echoes X-Request-ID and logs it with the operation; generates one when absent", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "a")
        const res = yield* raw({
          port: h.port,
          method: "POST",
          path: "/admin/invalidate",
          headers: { ...jsonHeaders(ADMIN_TOKEN), "x-request-id": "req-123" },
          body: JSON.stringify({ keys: ["a"] })
        })
        expect(res.headers["x-request-id"]).toBe("req-123")
        const line = JSON.parse(h.lines.find((l) => l.includes("admin.invalidate"))!)
        expect(line).toMatchObject({
          op: "admin.invalidate",
          requestId: "req-123",
          role: "admin",
          count: 1,
          keys: ["a"]
        })
        const other = yield* raw({
          port: h.port,
          path: "/admin/stats",
          headers: { ...bearer(READ_TOKEN), "x-request-id": "bad id with spaces" }
        })
        expect(other.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/)
        expect(h.lines.join("\n")).not.toContain(ADMIN_TOKEN)
        expect(h.lines.join("\n")).not.toContain(READ_TOKEN)
      })
    ))

  it.scopedLive("each operation runs in a span, exported to whatever tracer the user provides", () =>
    Effect.gen(function*() {
      const base = yield* Effect.tracer
      const spans: Array<string> = []
      const recording = Tracer.make({
        span: (name, ...rest) => {
          spans.push(name)
          return base.span(name, ...rest)
        },
        context: base.context
      })
      yield* withHarness((h) =>
        Effect.gen(function*() {
          yield* seed(h.backend, "a")
          yield* (yield* adminClient(h)).admin.invalidate({ payload: { keys: ["a"] } })
          yield* (yield* readClient(h)).read.stats()
          expect(spans).toEqual(expect.arrayContaining(["cachekit.admin.invalidate", "cachekit.admin.stats"]))
        })
      ).pipe(Effect.withTracer(recording))
    }))

  it.scopedLive("hashes keys in the log when configured", () =>
    withHarness((h) =>
      Effect.gen(function*() {
        yield* seed(h.backend, "secret-key")
        yield* (yield* adminClient(h)).admin.invalidate({ payload: { keys: ["secret-key"] } })
        const text = h.lines.join("\n")
        expect(text).not.toContain("secret-key")
        expect(text).toMatch(/sha256:[0-9a-f]{16}/)
      }), { log: { hashKeys: true } }))
})

describe("adapters", () => {
  it.scopedLive("a TieredCache target reports per-tier stats and which tier holds an entry", () =>
    Effect.gen(function*() {
      const l1 = yield* MemoryBackend.make({ maxEntries: 100, name: "l1" })
      const l2 = yield* MemoryBackend.make({ maxEntries: 1000, name: "l2" })
      const tiered = yield* TieredCache.make([{ backend: l1, name: "l1", promote: "never" }, {
        backend: l2,
        name: "l2"
      }])
      const target = AdminTarget.fromTieredCache(tiered, { tiers: [l1, l2] })
      yield* seed(l2, "deep")
      yield* seed(tiered.backend, "both")
      yield* tiered.get("deep")
      yield* tiered.get("both")
      yield* tiered.get("nowhere")
      const stats = yield* target.stats
      expect(stats.tiers.map((t) => t.name)).toEqual(["l1", "l2"])
      expect(stats.hits).toBe(2)
      expect(stats.tiers[1]!.entries).toBe(2)
      const deep = yield* target.entry("deep", { body: false })
      expect(Option.map(deep, (e) => e.tier)).toEqual(Option.some("l2"))
      const health = yield* target.health
      expect(health.map((t) => t.name)).toEqual(["l1", "l2"])
      expect(yield* target.invalidateKeys(["both", "deep"])).toBe(2)
      expect(yield* exists(l1, "both")).toBe(false)
      expect(yield* exists(l2, "deep")).toBe(false)
      expect(target.supports("hotKeys")).toBe(true)
    }))

  it.scopedLive("a Cache target takes hits, misses and stale-served counts from the Cache service", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({ name: "mem" })
      const cache = yield* Cache.make({ name: "admin-test", ttl: "1 minute" }).pipe(
        Effect.provideService(CacheBackendModule.CacheBackendTag, backend)
      )
      yield* cache.set("a", new Uint8Array([1]))
      yield* cache.get("a")
      yield* cache.get("a")
      yield* cache.get("b")
      const target = AdminTarget.withCacheStats(AdminTarget.fromBackend(backend), cache)
      const stats = yield* target.stats
      expect(stats.hits).toBe(2)
      expect(stats.misses).toBe(1)
      expect(stats.staleServed).toBe(0)
      expect(stats.entries).toBe(1)
      expect(stats.tiers.map((t) => t.name)).toEqual(["mem"])
      expect(yield* target.invalidateKeys(["a", "zzz"])).toBe(1)
      expect(Option.isNone(yield* cache.get("a"))).toBe(true)
    }))

  it.scopedLive("layerDefaultRouter mounts the API on HttpRouter.Default beside other routes", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({})
      const Routes = Layer.mergeAll(
        AdminApi.layerDefaultRouter({ prefix: "/ops" }),
        HttpRouter.Default.use((router) => router.get("/hello", HttpServerResponse.text("hi")))
      ).pipe(
        Layer.provide(Layer.succeed(AdminTarget.AdminTargetTag, AdminTarget.fromBackend(backend))),
        Layer.provide(AdminAuth.layer({ adminToken: Redacted.make(ADMIN_TOKEN) })),
        Layer.provide(OperationLog.layer({ write: () => Effect.void }))
      )
      const ServerLive = HttpRouter.Default.serve().pipe(
        Layer.provide(Routes),
        Layer.provide(HttpRouter.Default.Live),
        Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }))
      )
      const ctx = yield* Layer.build(ServerLive)
      const address = Context.get(ctx, HttpServer.HttpServer).address
      const port = address._tag === "TcpAddress" ? address.port : 0
      expect((yield* raw({ port, path: "/hello" })).body).toBe("hi")
      expect((yield* raw({ port, path: "/ops/stats" })).status).toBe(401)
      const stats = yield* raw({ port, path: "/ops/stats", headers: bearer(ADMIN_TOKEN) })
      expect(stats.status).toBe(200)
      expect(stats.json).toMatchObject({ entries: 0 })
    }).pipe(Effect.timeout("20 seconds")))

  it.scopedLive("AdminApi.layer gives the built app and its mount for a server such as the proxy", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({})
      yield* seed(backend, "k")
      const ctx = yield* Layer.build(
        AdminApi.layer({ prefix: "/admin" }).pipe(
          Layer.provide(Layer.succeed(AdminTarget.AdminTargetTag, AdminTarget.fromBackend(backend))),
          Layer.provide(AdminAuth.layer({ adminToken: Redacted.make(ADMIN_TOKEN) })),
          Layer.provide(OperationLog.layer({ write: () => Effect.void }))
        )
      )
      const admin = Context.get(ctx, AdminApi.AdminAppTag)
      expect(admin.prefix).toBe("/admin")
      const app = admin.mount(Effect.succeed(HttpServerResponse.text("proxied")))
      const served = yield* Layer.build(
        HttpServer.serve(app).pipe(
          Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }))
        )
      )
      const address = Context.get(served, HttpServer.HttpServer).address
      const port = address._tag === "TcpAddress" ? address.port : 0
      expect((yield* raw({ port, path: "/x" })).body).toBe("proxied")
      const entry = yield* raw({ port, path: "/admin/entries/k", headers: bearer(ADMIN_TOKEN) })
      expect(entry.json).toMatchObject({ key: "k", size: 1 })
    }).pipe(Effect.timeout("20 seconds")))

  it.scopedLive("mount sends the prefix to the admin API and everything else to the app", () =>
    Effect.gen(function*() {
      const { HttpServer, HttpServerResponse } = yield* Effect.promise(() => import("@effect/platform"))
      const { NodeHttpServer } = yield* Effect.promise(() => import("@effect/platform-node"))
      const { createServer } = yield* Effect.promise(() => import("node:http"))
      const { AdminAuth, OperationLog } = yield* Effect.promise(() => import("@cachekit/admin"))
      const { Redacted, Context } = yield* Effect.promise(() => import("effect"))
      const backend = yield* MemoryBackend.make({})
      const mountAdmin = yield* AdminApi.mount({ prefix: "/_admin" }).pipe(
        Effect.provideService(AdminTarget.AdminTargetTag, AdminTarget.fromBackend(backend)),
        Effect.provide(AdminAuth.layer({ adminToken: Redacted.make(ADMIN_TOKEN) })),
        Effect.provide(OperationLog.layer({ write: () => Effect.void }))
      )
      const app = mountAdmin(Effect.succeed(HttpServerResponse.text("from the app")))
      const ctx = yield* Layer.build(
        HttpServer.serve(app).pipe(
          Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }))
        )
      )
      const address = Context.get(ctx, HttpServer.HttpServer).address
      const port = address._tag === "TcpAddress" ? address.port : 0
      expect((yield* raw({ port, path: "/anything" })).body).toBe("from the app")
      expect((yield* raw({ port, path: "/_admin/stats" })).status).toBe(401)
      expect((yield* raw({ port, path: "/_admin/stats", headers: bearer(ADMIN_TOKEN) })).status).toBe(200)
      const unknown = yield* raw({ port, path: "/_admin/nope", headers: bearer(ADMIN_TOKEN) })
      expect(unknown.status).toBe(404)
      expect(unknown.body).not.toBe("from the app")
    }).pipe(Effect.timeout("20 seconds")))
})
