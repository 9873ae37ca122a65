/**
 * Security of the caching proxy as a shared cache: responses to one user never reach another
 * (Authorization, Set-Cookie, concurrent coalesced misses), and no request shape (Host header,
 * absolute-form target, encoded slashes, dot segments, query order) can make the cache serve one
 * URL's response for another. The oracle for the key tests is the same proxy without a cache: for
 * every raw request target, the caching proxy must answer exactly what the forwarding-only proxy
 * answers, in any order and on repeat.
 */
import { MemoryBackend } from "@cachekit/core"
import { Proxy } from "@cachekit/http"
import { NodeHttpClient } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"

const MIB = 1024 * 1024

interface Origin {
  readonly url: string
  readonly port: number
  readonly hits: () => number
}

/** An origin whose bodies name the request target, Host and Authorization it saw. */
const makeOrigin = (name: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      let hits = 0
      const server = Http.createServer((req, res) => {
        hits++
        const path = (req.url ?? "").split("?")[0]!
        const auth = String(req.headers["authorization"] ?? "-")
        const headers: Record<string, string | Array<string>> = { "cache-control": "public, max-age=60" }
        if (path.startsWith("/profile")) headers["cache-control"] = "max-age=60"
        if (path.startsWith("/login")) headers["set-cookie"] = [`session=${auth}; HttpOnly`, "theme=dark"]
        if (path.startsWith("/slow-profile")) {
          headers["cache-control"] = "max-age=60"
          setTimeout(() => {
            res.writeHead(200, headers)
            res.end(`${name} ${req.url} auth=${auth}`)
          }, 100)
          return
        }
        res.writeHead(200, headers)
        res.end(`${name} ${req.url} auth=${auth}`)
      })
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
      const port = (server.address() as AddressInfo).port
      return { server, origin: { url: `http://127.0.0.1:${port}`, port, hits: () => hits } satisfies Origin }
    }),
    ({ server }) =>
      Effect.promise(() =>
        new Promise<void>((resolve) => {
          server.closeAllConnections()
          server.close(() => resolve())
        })
      )
  ).pipe(Effect.map(({ origin }) => origin))

const build = (layer: Layer.Layer<Proxy.ProxyTag, unknown>) =>
  Effect.map(Layer.build(layer), (ctx) => Context.get(ctx, Proxy.ProxyTag))

const caching = (upstream: string) =>
  build(
    Proxy.layerCaching({ upstream, port: 0 }).pipe(
      Layer.provide(MemoryBackend.layer({ maxBytes: 16 * MIB })),
      Layer.provide(NodeHttpClient.layerUndici)
    )
  )
const forwarding = (upstream: string) =>
  build(Proxy.layer({ upstream, port: 0 }).pipe(Layer.provide(NodeHttpClient.layerUndici)))

interface Raw {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly body: string
}

/** A request with the target sent exactly as given (node:http does not normalise `path`). */
const raw = (proxyPort: number, target: string, headers: Record<string, string> = {}): Effect.Effect<Raw> =>
  Effect.async<Raw>((resume) => {
    const req = Http.request(
      { host: "127.0.0.1", port: proxyPort, path: target, method: "GET", headers, agent: false },
      (res) => {
        const chunks: Array<Buffer> = []
        res.on("data", (c: Buffer) => chunks.push(c))
        res.on("end", () =>
          resume(Effect.succeed({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString("utf8")
          })))
        res.on("error", (e) => resume(Effect.succeed({ status: -1, headers: {}, body: String(e) })))
      }
    )
    req.on("error", (e) => resume(Effect.succeed({ status: -1, headers: {}, body: String(e) })))
    req.end()
  })

const portOf = (p: Proxy.Proxy) => p.port

describe("the caching proxy does not let one user's response reach another", () => {
  it.scopedLive("§3.5 64 users asking for the same URL at once with their own Authorization each get their own body", () =>
    Effect.gen(function*() {
      const origin = yield* makeOrigin("o")
      const proxy = yield* caching(origin.url)
      const users = Array.from({ length: 64 }, (_, i) => `Bearer user-${i}`)
      for (let round = 0; round < 2; round++) {
        const answers = yield* Effect.all(
          users.map((auth) => raw(portOf(proxy), "/slow-profile", { authorization: auth })),
          { concurrency: "unbounded" }
        )
        answers.forEach((a, i) => {
          expect(a.status).toBe(200)
          expect(a.body).toBe(`o /slow-profile auth=${users[i]}`)
        })
      }
      const anonymous = yield* raw(portOf(proxy), "/slow-profile")
      expect(anonymous.body).toBe("o /slow-profile auth=-")
    }))

  it.scopedLive("a response that sets a cookie is never replayed to another client with that cookie", () =>
    Effect.gen(function*() {
      const origin = yield* makeOrigin("o")
      const proxy = yield* caching(origin.url)
      const alice = yield* raw(portOf(proxy), "/login", { authorization: "Bearer alice" })
      expect(String(alice.headers["set-cookie"])).toContain("session=Bearer alice")
      for (const who of [undefined, "Bearer bob"]) {
        const other = yield* raw(portOf(proxy), "/login", who === undefined ? {} : { authorization: who })
        expect(String(other.headers["set-cookie"] ?? "")).not.toContain("session=Bearer alice")
        expect(other.body).not.toContain("alice")
      }
    }))
})

describe("cache key confusion cannot poison another key", () => {
  const targets = [
    "/page",
    "/page?a=1&b=2",
    "/page?b=2&a=1",
    "/page?a=1&a=2",
    "/dir/page",
    "/dir%2Fpage",
    "/dir%2fpage",
    "/dir/./page",
    "/dir/../page",
    "/x/../dir/page",
    "//page",
    "/page/",
    "/PAGE",
    "/p%61ge",
    "/page%3Fa=1",
    "/page#frag",
    "/page?",
    "/page;a=1"
  ]

  it.scopedLive(
    "every target, Host header and absolute form answers what the forwarding-only proxy answers",
    () =>
      Effect.gen(function*() {
        const origin = yield* makeOrigin("o")
        const other = yield* makeOrigin("other-origin")
        const cached = yield* caching(origin.url)
        const plain = yield* forwarding(origin.url)
        const variants: Array<{ target: string; headers: Record<string, string> }> = []
        for (const target of targets) {
          variants.push({ target, headers: {} })
          variants.push({ target, headers: { host: "evil.example" } })
          variants.push({ target, headers: { host: `127.0.0.1:${other.port}` } })
          variants.push({ target: `http://127.0.0.1:${other.port}${target}`, headers: {} })
          variants.push({ target: `http://evil.example${target}`, headers: {} })
        }
        // the oracle first, then the caching proxy in two different orders, twice each
        const expected = new Map<string, Raw>()
        for (const v of variants) {
          expected.set(JSON.stringify(v), yield* raw(portOf(plain), v.target, v.headers))
        }
        // not a vacuous oracle: most targets reach the origin, and they name many different URLs
        const answers = [...expected.values()]
        console.log(`reliability/key-confusion ${
          JSON.stringify({
            variants: variants.length,
            statuses: answers.reduce<Record<number, number>>(
              (m, a) => ({ ...m, [a.status]: (m[a.status] ?? 0) + 1 }),
              {}
            ),
            distinctBodies: new Set(answers.map((a) => a.body)).size
          })
        }`)
        expect(answers.filter((a) => a.status === 200).length).toBeGreaterThan(variants.length / 2)
        expect(new Set(answers.map((a) => a.body)).size).toBeGreaterThan(10)
        const orders = [variants, [...variants].reverse(), variants, [...variants].reverse()]
        let checked = 0
        for (const order of orders) {
          for (const v of order) {
            const got = yield* raw(portOf(cached), v.target, v.headers)
            const want = expected.get(JSON.stringify(v))!
            expect({ v, status: got.status, body: got.body }).toEqual({ v, status: want.status, body: want.body })
            checked++
          }
        }
        // the proxy never became an open proxy to another host, whatever the Host or target said
        expect(other.hits()).toBe(0)
        expect(checked).toBe(variants.length * 4)
      }),
    60_000
  )
})
