/**
 * The proxy's synchronous hit path (internal/proxyFastPath.ts) against the Effect path:
 * - the same requests to two proxies sharing one memory backend, one with the fast path and one
 *   without (its backend view hides `unsafeGetSync`), give the same status, headers and body;
 * - the fast path answers fresh GET hits itself and hands everything else to the next listener.
 */
import { CacheBackend, MemoryBackend } from "@cachekit/core"
import { HttpClientCache, Proxy } from "@cachekit/http"
import { HttpClient, HttpClientRequest, HttpClientResponse, HttpServerResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option } from "effect"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as internal from "../src/internal/proxy.js"
import * as proxyBackends from "../src/internal/proxyBackends.js"
import * as fastPath from "../src/internal/proxyFastPath.js"
import type { Fetched, Routes } from "./fixtures/proxyOrigin.js"
import { agent, fetchVia, layerOrigin, OriginTag } from "./fixtures/proxyOrigin.js"
import { tempDir } from "./fixtures/proxyRun.js"

const BIG = 2.5 * 1024 * 1024 + 1

const text = (body: string, headers: Record<string, string>, status = 200) =>
  Effect.succeed(HttpServerResponse.text(body, { status, headers }))

const routes: Routes = {
  "/fresh": () => text("fresh body", { "cache-control": "public, max-age=600", etag: "\"f1\"" }),
  "/big": () =>
    Effect.succeed(
      // over the fast path's 1 MiB view size, not a multiple of it: written in views with back-pressure
      HttpServerResponse.uint8Array(new Uint8Array(BIG).fill(7), {
        headers: { "cache-control": "public, max-age=600", "content-type": "application/octet-stream" }
      })
    ),
  "/stale": () => text("stale body", { "cache-control": "public, max-age=60", age: "100", etag: "\"s1\"" }),
  "/must": () => text("must body", { "cache-control": "public, max-age=600, must-revalidate", etag: "\"m1\"" }),
  "/vary": (seen) =>
    text(`lang=${String(seen.headers["accept-language"] ?? "-")}`, {
      "cache-control": "public, max-age=600",
      vary: "Accept-Language"
    }),
  "/auth": (seen) => text(`for ${String(seen.headers["authorization"] ?? "-")}`, { "cache-control": "max-age=600" }),
  "/hop": () => text("hop", { "cache-control": "public, max-age=600", connection: "x-secret", "x-secret": "1" }),
  "/cookie": () => text("cookie", { "cache-control": "public, max-age=600", "set-cookie": "a=1" }),
  "/moved": () => text("gone", { "cache-control": "public, max-age=600" }, 404)
}

class Slow extends Context.Tag("test/SlowProxy")<Slow, Proxy.Proxy>() {}

/** Two proxies over one memory backend: the default one (fast path) and one whose backend view has no `unsafeGetSync`. */
const env = Layer.unwrapEffect(
  Effect.gen(function*() {
    const origin = yield* OriginTag
    const backend = yield* CacheBackend.CacheBackendTag
    const fast = Proxy.layerCaching({ upstream: origin.url, port: 0 }).pipe(
      Layer.provide(Layer.succeed(CacheBackend.CacheBackendTag, backend))
    )
    const slow = Layer.effect(Slow, Proxy.ProxyTag).pipe(
      Layer.provide(Proxy.layerCaching({ upstream: origin.url, port: 0 })),
      Layer.provide(Layer.succeed(CacheBackend.CacheBackendTag, { ...backend, unsafeGetSync: undefined }))
    )
    return Layer.mergeAll(fast, slow).pipe(Layer.provide(NodeHttpClient.layerUndici))
  })
).pipe(
  Layer.provideMerge(layerOrigin(routes)),
  Layer.provideMerge(MemoryBackend.layer({ maxBytes: 16 * 1024 * 1024 }))
)

/** Headers to compare: no Date; Age and Cache-Status ttl may differ by the second that passed. */
const comparable = (fetched: Fetched) => {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(fetched.headers)) {
    if (value === undefined || name === "date" || name === "keep-alive") continue
    out[name] = Array.isArray(value) ? value.join("\n") : value
  }
  const age = out["age"] === undefined ? undefined : Number(out["age"])
  const ttl = /ttl=(-?\d+)/.exec(out["cache-status"] ?? "")?.[1]
  delete out["age"]
  if (out["cache-status"] !== undefined) out["cache-status"] = out["cache-status"].replace(/ttl=-?\d+/, "ttl=N")
  return {
    status: fetched.status,
    headers: out,
    body: fetched.text,
    age,
    ttl: ttl === undefined ? undefined : Number(ttl)
  }
}

const expectSame = (fast: Fetched, slow: Fetched, label: string) => {
  const f = comparable(fast)
  const s = comparable(slow)
  expect({ label, status: f.status, headers: f.headers, body: f.body }).toStrictEqual({
    label,
    status: s.status,
    headers: s.headers,
    body: s.body
  })
  expect(f.age === undefined, label).toBe(s.age === undefined)
  if (f.age !== undefined && s.age !== undefined) expect(Math.abs(f.age - s.age), label).toBeLessThanOrEqual(1)
  if (f.ttl !== undefined && s.ttl !== undefined) expect(Math.abs(f.ttl - s.ttl), label).toBeLessThanOrEqual(1)
}

describe("Proxy fast path", () => {
  it.scopedLive("answers every request like the Effect path (hits, Vary, Authorization, request directives, conditionals)", () =>
    Effect.gen(function*() {
      const fast = yield* Proxy.ProxyTag
      const slow = yield* Slow
      const dispatcher = yield* agent
      const cases: ReadonlyArray<readonly [string, Record<string, string>, "GET" | "HEAD"]> = [
        ["/fresh", {}, "GET"],
        ["/fresh?q=a%20b&x=1", {}, "GET"],
        ["/fresh", { "cache-control": "max-age=0" }, "GET"],
        ["/fresh", { "cache-control": "min-fresh=100000" }, "GET"],
        ["/fresh", { "cache-control": "no-cache" }, "GET"],
        ["/fresh", { pragma: "no-cache" }, "GET"],
        ["/fresh", { "cache-control": "only-if-cached" }, "GET"],
        ["/fresh", { "if-none-match": "\"f1\"" }, "GET"],
        ["/fresh", { range: "bytes=0-3" }, "GET"],
        ["/fresh", {}, "HEAD"],
        ["/big", {}, "GET"],
        ["/stale", {}, "GET"],
        ["/stale", { "cache-control": "max-stale=1000" }, "GET"],
        ["/stale", { "cache-control": "only-if-cached" }, "GET"],
        ["/must", {}, "GET"],
        ["/vary", { "accept-language": "fr" }, "GET"],
        ["/vary", { "accept-language": "de" }, "GET"],
        ["/vary", {}, "GET"],
        ["/auth", { authorization: "Bearer a" }, "GET"],
        ["/auth", {}, "GET"],
        ["/fresh", { authorization: "Bearer a" }, "GET"],
        ["/hop", {}, "GET"],
        ["/cookie", {}, "GET"],
        ["/moved", {}, "GET"],
        ["/missing-route", {}, "GET"]
      ]
      for (const [path, headers, method] of cases) {
        const label = `${method} ${path} ${JSON.stringify(headers)}`
        // The first request may store (or revalidate); compare the answers once the state is settled.
        yield* fetchVia(`${slow.url}${path}`, { method, headers, dispatcher })
        const viaSlow = yield* fetchVia(`${slow.url}${path}`, { method, headers, dispatcher })
        const viaFast = yield* fetchVia(`${fast.url}${path}`, { method, headers, dispatcher })
        expectSame(viaFast, viaSlow, label)
      }
      const hit = comparable(yield* fetchVia(`${fast.url}/fresh`, { dispatcher }))
      expect(hit.headers["cache-status"]).toBe("cachekit; hit; ttl=N")
      expect(hit.headers["via"]).toBe("1.1 cachekit")
      const big = yield* fetchVia(`${fast.url}/big`, { dispatcher })
      expect(big.headers["cache-status"]).toMatch(/^cachekit; hit/)
      expect(big.body.byteLength).toBe(BIG)
      expect(big.body.every((b) => b === 7)).toBe(true)
    }).pipe(Effect.provide(env)))
})

/** A caching client over a fixed upstream, and a server with the fast path whose next listener answers 599. */
const rig = Effect.gen(function*() {
  const upstreamCalls = { n: 0 }
  const upstream = HttpClient.make((request) =>
    Effect.sync(() => {
      upstreamCalls.n++
      const path = new URL(request.url).pathname
      const headers: Record<string, string> = path === "/stale"
        ? { "cache-control": "public, max-age=1", age: "50", etag: "\"e\"" }
        : { "cache-control": "public, max-age=600", etag: "\"e\"", "content-length": "5" }
      return HttpClientResponse.fromWeb(request, new Response("hello", { status: 200, headers }))
    })
  )
  const client = yield* HttpClientCache.withCache({ shared: true })(upstream)
  const server = Http.createServer()
  const tracker = internal.trackRequests(server)
  const resolved = internal.resolve({ upstream: new URL("http://origin.test") })
  yield* fastPath.install(server, tracker, client, resolved)
  const fellThrough = { n: 0 }
  server.on("request", (_req: Http.IncomingMessage, res: Http.ServerResponse) => {
    fellThrough.n++
    res.writeHead(599)
    res.end()
  })
  yield* Effect.acquireRelease(
    Effect.async<void>((resume) => void server.listen(0, "127.0.0.1", () => resume(Effect.void))),
    () => Effect.sync(() => server.close())
  )
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  // Primes the cache through the client, as the Effect path would.
  const prime = (path: string) =>
    Effect.flatMap(
      client.execute(HttpClientRequest.get(`http://origin.test${path}`)),
      (response) => response.arrayBuffer
    ).pipe(Effect.orDie)
  return { url, prime, fellThrough, upstreamCalls, tracker }
})

describe("Proxy fast path, which requests it takes", () => {
  it.scopedLive("answers fresh GET hits itself and passes misses, stale, conditionals, Range, HEAD and bodies on", () =>
    Effect.gen(function*() {
      const { fellThrough, prime, upstreamCalls, url } = yield* rig
      const dispatcher = yield* agent
      yield* prime("/a")
      yield* prime("/stale")
      expect(upstreamCalls.n).toBe(2)

      const hit = yield* fetchVia(`${url}/a`, { dispatcher })
      expect(hit.status).toBe(200)
      expect(hit.text).toBe("hello")
      expect(hit.headers["cache-status"]).toMatch(/^cachekit; hit; ttl=\d+$/)
      expect(hit.headers["age"]).toBe("0")
      expect(hit.headers["via"]).toBe("1.1 cachekit")
      expect(fellThrough.n).toBe(0)

      const passedOn: ReadonlyArray<
        readonly [string, { method?: "HEAD" | "POST"; headers?: Record<string, string>; body?: string }]
      > = [
        ["/missing", {}],
        ["/stale", {}],
        ["/a", { headers: { "if-none-match": "\"e\"" } }],
        ["/a", { headers: { "if-modified-since": "Sun, 01 Jan 2034 00:00:00 GMT" } }],
        ["/a", { headers: { range: "bytes=0-1" } }],
        ["/a", { headers: { "cache-control": "no-cache" } }],
        ["/a", { method: "HEAD" }],
        ["/a", { method: "POST", body: "x" }]
      ]
      for (const [path, options] of passedOn) {
        const res = yield* fetchVia(`${url}${path}`, { ...options, dispatcher })
        expect(res.status, `${path} ${JSON.stringify(options)}`).toBe(599)
      }
      expect(fellThrough.n).toBe(passedOn.length)
      // Nothing the fast path did reached the upstream.
      expect(upstreamCalls.n).toBe(2)
    }).pipe(Effect.provide(MemoryBackend.layer({ maxBytes: 1024 * 1024 }))))

  it.scopedLive("counts its answers as in flight until they close, and closes connections while draining", () =>
    Effect.gen(function*() {
      const { prime, tracker, url } = yield* rig
      const dispatcher = yield* agent
      yield* prime("/a")
      tracker.draining = true
      const res = yield* fetchVia(`${url}/a`, { dispatcher })
      expect(res.status).toBe(200)
      expect(res.headers["connection"]).toBe("close")
      expect(tracker.inFlight).toBe(0)
    }).pipe(Effect.provide(MemoryBackend.layer({ maxBytes: 1024 * 1024 }))))
})

describe("Proxy fast path over the command's default backend (memory L1 + disk L2 tiers)", () => {
  /** The rig over what `cachekit proxy` builds by default, in a temporary directory. */
  const tiers = Effect.gen(function*() {
    const cache = yield* proxyBackends.make({
      backend: proxyBackends.defaults.backend,
      memoryMaxBytes: Option.none(),
      l1MaxEntrySize: Option.none(),
      diskDir: Option.some(yield* tempDir),
      bus: "auto",
      demo: false
    })
    const running = yield* Effect.provideService(rig, CacheBackend.CacheBackendTag, cache.backend)
    const tiered = cache.tiered
    if (tiered === undefined) return expect.fail("expected the default backend to be tiered")
    const counts = Effect.map(tiered.stats, (all) => all.map((t) => [t.name, t.hits, t.misses]))
    return { ...running, tiered, counts }
  })

  it.scopedLive("answers an L1 hit itself (counted once in the tier stats) and passes an L1 miss on to the Effect path uncounted", () =>
    Effect.gen(function*() {
      const { counts, fellThrough, prime, tiered, upstreamCalls, url } = yield* tiers
      const dispatcher = yield* agent
      expect(proxyBackends.defaults.backend).toBe("memory+disk")
      yield* prime("/a")
      const primed = yield* counts

      const hit = yield* fetchVia(`${url}/a`, { dispatcher })
      expect([hit.status, hit.text]).toEqual([200, "hello"])
      expect(hit.headers["cache-status"]).toMatch(/^cachekit; hit; ttl=\d+$/)
      expect(fellThrough.n).toBe(0)
      expect(yield* counts).toEqual([["memory", primed[0]![1] as number + 1, primed[0]![2]], primed[1]])

      // L1 lost it (eviction, bus reconnect): the disk L2 still has it, so the fast path must not answer
      yield* tiered.clearLocal
      const passed = yield* fetchVia(`${url}/a`, { dispatcher })
      expect(passed.status).toBe(599)
      expect(fellThrough.n).toBe(1)
      expect(yield* counts).toEqual([["memory", primed[0]![1] as number + 1, primed[0]![2]], primed[1]])
      // ... and the client (the Effect path) finds it in L2 and promotes it
      yield* prime("/a")
      expect(upstreamCalls.n).toBe(1)
      const after = yield* counts
      expect([after[0]![2], after[1]![1]]).toEqual([primed[0]![2] as number + 1, primed[1]![1] as number + 1])
      const again = yield* fetchVia(`${url}/a`, { dispatcher })
      expect([again.status, again.text, fellThrough.n]).toEqual([200, "hello", 1])
    }))
})
