/**
 * The reverse proxy end to end: a real undici / node:http client -> the proxy -> a real
 * NodeHttpServer origin, all on loopback port 0.
 */
import { Proxy } from "@cachekit/http"
import type { HttpServerRequest } from "@effect/platform"
import { HttpBody, HttpServerResponse } from "@effect/platform"
import { NodeHttpClient, NodeHttpServerRequest } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Scope } from "effect"
import { createHash } from "node:crypto"
import * as Net from "node:net"
import { Readable } from "node:stream"
import { request } from "undici"
import type { Seen } from "./fixtures/proxyOrigin.js"
import {
  agent,
  bigBodySha256,
  fetchVia,
  layerOrigin,
  layerProxy,
  OriginTag,
  rawRequest
} from "./fixtures/proxyOrigin.js"

const extraRoutes = {
  "/base/echo": (seen: Seen) => Effect.succeed(HttpServerResponse.unsafeJson(seen)),
  "/no-type": () =>
    Effect.succeed(
      HttpServerResponse.setBody(HttpServerResponse.empty({ status: 200 }), HttpBody.raw(Buffer.from("untyped")))
    ),
  // promises 1 MB, sends 1 KB, then drops the connection
  "/half": (_seen: Seen, request: HttpServerRequest.HttpServerRequest) =>
    Effect.async<HttpServerResponse.HttpServerResponse>(() => {
      const res = NodeHttpServerRequest.toServerResponse(request)
      res.writeHead(200, { "content-length": "1000000", "cache-control": "no-store" })
      res.write(Buffer.alloc(1000, 1))
      setTimeout(() => res.destroy(), 50)
    }),
  // promises 2 KB (a small body, read whole before answering), sends 100 bytes, then drops
  "/half-small": (_seen: Seen, request: HttpServerRequest.HttpServerRequest) =>
    Effect.async<HttpServerResponse.HttpServerResponse>(() => {
      const res = NodeHttpServerRequest.toServerResponse(request)
      res.writeHead(200, { "content-length": "2000", "cache-control": "no-store" })
      res.write(Buffer.alloc(100, 1))
      setTimeout(() => res.destroy(), 50)
    })
}

const env = (options: Partial<Proxy.Options> = {}) =>
  layerProxy(options).pipe(Layer.provideMerge(layerOrigin(extraRoutes)))

const echoOf = (text: string): Seen => JSON.parse(text) as Seen

/** A loopback port nobody listens on. */
const closedPort = Effect.async<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address() as Net.AddressInfo
    server.close(() => resume(Effect.succeed(address.port)))
  })
})

const sha256 = (data: Buffer | string) => createHash("sha256").update(data).digest("hex")

describe("Proxy forwarding", () => {
  it.scopedLive("forwards every method with its body and query string", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const dispatcher = yield* agent
      for (const method of ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] as const) {
        const body = method === "GET" ? undefined : `payload of ${method} `.repeat(100)
        const res = yield* fetchVia(`${proxy.url}/echo?q=a%20b&method=${method}&flag`, {
          method,
          dispatcher,
          ...(body === undefined ? {} : { body, headers: { "content-type": "text/plain" } })
        })
        expect(res.status).toBe(200)
        const seen = echoOf(res.text)
        expect(seen.method).toBe(method)
        expect(seen.url).toBe(`/echo?q=a%20b&method=${method}&flag`)
        expect(seen.bodyBytes).toBe(body === undefined ? 0 : Buffer.byteLength(body))
        if (body !== undefined) {
          expect(seen.bodySha256).toBe(sha256(body))
          expect(seen.headers["content-type"]).toBe("text/plain")
        }
      }
      const origin = yield* OriginTag
      expect(yield* origin.count("/echo")).toBe(6)
    }).pipe(Effect.provide(env())))

  it.scopedLive("forwards HEAD without a body and keeps the upstream Content-Length", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const res = yield* fetchVia(`${proxy.url}/big?mib=1`, { method: "HEAD" })
      expect(res.status).toBe(200)
      expect(res.headers["content-length"]).toBe(String(1024 * 1024))
      expect(res.body.byteLength).toBe(0)
      const origin = yield* OriginTag
      expect((yield* origin.seen).map((s) => s.method)).toEqual(["HEAD"])
    }).pipe(Effect.provide(env())))

  it.scopedLive("does not forward hop-by-hop request fields, including the ones named in Connection (RFC 9110 §7.6.1)", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      yield* rawRequest(`${proxy.url}/echo`, {
        headers: {
          connection: "close, x-client-secret",
          "x-client-secret": "hop only",
          te: "trailers",
          "proxy-authorization": "Basic cHJveHk6c2VjcmV0",
          "proxy-connection": "keep-alive",
          "x-end-to-end": "kept"
        }
      })
      const origin = yield* OriginTag
      const [seen] = yield* origin.seen
      expect(seen!.headers["x-end-to-end"]).toBe("kept")
      for (const name of ["x-client-secret", "te", "proxy-authorization", "proxy-connection"]) {
        expect(seen!.rawHeaderNames).not.toContain(name)
      }
      // the proxy's own connection to the origin is keep-alive, not the client's "close, x-client-secret"
      expect(seen!.headers["connection"] ?? "keep-alive").not.toContain("x-client-secret")
    }).pipe(Effect.provide(env())))

  it.scopedLive("does not pass hop-by-hop response fields back to the client", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      // agent:false sends "Connection: close", so the proxy adds no Keep-Alive of its own either
      const res = yield* rawRequest(`${proxy.url}/echo`)
      expect(res.status).toBe(200)
      expect(res.headers["x-origin-secret"]).toBeUndefined()
      expect(res.headers["proxy-authenticate"]).toBeUndefined()
      expect(res.headers["trailer"]).toBeUndefined()
      expect(res.headers["keep-alive"]).toBeUndefined()
      expect(res.headers["connection"]).toBe("close")
      expect(res.headers["content-type"]).toContain("application/json")
    }).pipe(Effect.provide(env())))

  it.scopedLive("sets Host for the upstream, adds X-Forwarded-For/Proto/Host and appends Via both ways", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const res = yield* fetchVia(`${proxy.url}/echo`, { headers: { "x-forwarded-for": "203.0.113.9" } })
      const seen = echoOf(res.text)
      expect(seen.headers["host"]).toBe(new URL(origin.url).host)
      expect(seen.headers["x-forwarded-host"]).toBe(new URL(proxy.url).host)
      expect(seen.headers["x-forwarded-for"]).toBe("203.0.113.9, 127.0.0.1")
      expect(seen.headers["x-forwarded-proto"]).toBe("http")
      expect(seen.headers["via"]).toBe("1.1 cachekit")
      expect(res.headers["via"]).toBe("1.1 origin-gateway, 1.1 cachekit")
    }).pipe(Effect.provide(env())))

  it.scopedLive("keeps the path prefix of the upstream URL", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const res = yield* fetchVia(`${proxy.url}/echo?x=1`)
      expect(res.status).toBe(200)
      expect(echoOf(res.text).url).toBe("/base/echo?x=1")
    }).pipe(
      Effect.provide(
        Layer.unwrapEffect(Effect.map(OriginTag, (origin) =>
          Proxy.layer({ upstream: `${origin.url}/base/`, port: 0 }).pipe(Layer.provide(NodeHttpClient.layerUndici))))
          .pipe(Layer.provideMerge(layerOrigin(extraRoutes)))
      )
    ))

  it.scopedLive("passes several Set-Cookie fields as separate fields", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const res = yield* fetchVia(`${proxy.url}/cookies`)
      const cookies = res.headers["set-cookie"]
      expect(Array.isArray(cookies)).toBe(true)
      expect(cookies).toHaveLength(2)
      expect((cookies as Array<string>).join("\n")).toMatch(/a=1; Path=\/[\s\S]*b=2; HttpOnly/)
    }).pipe(Effect.provide(env())))

  it.scopedLive("forwards 204 and 404 as they are, and adds no Content-Type the upstream did not send", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const noContent = yield* fetchVia(`${proxy.url}/status/204`)
      expect(noContent.status).toBe(204)
      expect(noContent.headers["x-kind"]).toBe("no content")
      expect((yield* fetchVia(`${proxy.url}/status/404`)).status).toBe(404)
      const untyped = yield* fetchVia(`${proxy.url}/no-type`)
      expect(untyped.text).toBe("untyped")
      expect(untyped.headers["content-type"]).toBeUndefined()
    }).pipe(Effect.provide(env())))

  it.scopedLive("answers 502 with a clear body when the upstream is unreachable", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const port = proxy.upstream.port
      const res = yield* fetchVia(`${proxy.url}/anything`)
      expect(res.status).toBe(502)
      expect(res.text).toContain(`upstream http://127.0.0.1:${port} is unreachable`)
      expect(res.text).toContain("ECONNREFUSED")
      expect(res.headers["proxy-status"]).toBe("cachekit; error=destination_unavailable")
      expect(res.headers["cache-control"]).toBe("no-store")
    }).pipe(
      Effect.provide(
        Layer.unwrapEffect(Effect.map(closedPort, (port) =>
          Proxy.layer({ upstream: `http://127.0.0.1:${port}`, port: 0 }).pipe(
            Layer.provide(NodeHttpClient.layerUndici)
          )))
      )
    ))

  it.scopedLive("answers 504 when the upstream sends no response head within the timeout", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const started = Date.now()
      const res = yield* fetchVia(`${proxy.url}/hang`)
      expect(res.status).toBe(504)
      expect(res.text).toContain("did not answer within 300 ms")
      expect(Date.now() - started).toBeLessThan(5000)
      expect(res.headers["proxy-status"]).toBe("cachekit; error=http_response_timeout")
      expect(Date.now() - started).toBeGreaterThanOrEqual(290)
    }).pipe(Effect.provide(env({ upstreamTimeout: "300 millis" }))))

  it.live("refuses an upstream that is not an absolute http(s) URL", () =>
    Effect.gen(function*() {
      const exit = yield* Layer.build(
        Proxy.layer({ upstream: "ftp://example/", port: 0 }).pipe(Layer.provide(NodeHttpClient.layerUndici))
      ).pipe(Effect.scoped, Effect.exit)
      expect(exit).toStrictEqual(Exit.fail(
        new Proxy.InvalidUpstream({
          upstream: "ftp://example/",
          message:
            `upstream "ftp://example/" is not an absolute http:// or https:// URL (example: http://127.0.0.1:8080)`
        })
      ))
    }))
})

describe("Proxy streaming", () => {
  it.scopedLive("streams a 50 MiB response through, whole and intact", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const before = process.memoryUsage().rss
      let peakRss = before
      const result = yield* Effect.promise(async () => {
        const res = await request(`${proxy.url}/big?mib=50`)
        const hash = createHash("sha256")
        let bytes = 0
        for await (const chunk of res.body) {
          hash.update(chunk as Buffer)
          bytes += (chunk as Buffer).byteLength
          peakRss = Math.max(peakRss, process.memoryUsage().rss)
        }
        return { status: res.statusCode, bytes, sha: hash.digest("hex") }
      })
      expect(result.status).toBe(200)
      expect(result.bytes).toBe(50 * 1024 * 1024)
      expect(result.sha).toBe(bigBodySha256(50))
      // Sanity bound only (origin, proxy and client share this process and the GC runs when it
      // likes); the back-pressure test below is the precise one.
      expect((peakRss - before) / (1024 * 1024)).toBeLessThan(150)
    }).pipe(Effect.provide(env())))

  it.scopedLive("applies back-pressure: a client that stops reading stops the upstream too", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const origin = yield* OriginTag
      const res = yield* Effect.promise(() => request(`${proxy.url}/big?mib=50`))
      const iterator = res.body[Symbol.asyncIterator]()
      let read = 0
      while (read < 1024 * 1024) {
        const next = yield* Effect.promise(() => iterator.next())
        read += (next.value as Buffer).byteLength
      }
      // the client holds still; whatever the proxy buffers, it must not pull the whole body
      yield* Effect.sleep("300 millis")
      const produced = yield* origin.bigBytesProduced
      expect(produced / (1024 * 1024)).toBeLessThan(24)
      res.body.destroy()
    }).pipe(Effect.provide(env())))

  it.scopedLive("streams a 50 MiB upload to the upstream without buffering it", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const chunk = Buffer.alloc(64 * 1024, 7)
      const chunks = 800 // 50 MiB
      const expected = createHash("sha256")
      for (let i = 0; i < chunks; i++) expected.update(chunk)
      let sent = 0
      const body = new Readable({
        read() {
          this.push(sent++ < chunks ? chunk : null)
        }
      })
      const res = yield* fetchVia(`${proxy.url}/echo`, { method: "PUT", body })
      expect(res.status).toBe(200)
      const seen = echoOf(res.text)
      expect(seen.bodyBytes).toBe(chunks * chunk.byteLength)
      expect(seen.bodySha256).toBe(expected.digest("hex"))
      // no Content-Length was given: the body went up chunked, as it came
      expect(seen.headers["transfer-encoding"]).toBe("chunked")
    }).pipe(Effect.provide(env())))

  it.scopedLive("cuts the client connection when the upstream body breaks half-way", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const outcome = yield* Effect.tryPromise(async () => {
        const res = await request(`${proxy.url}/half`)
        return Buffer.from(await res.body.arrayBuffer()).byteLength
      }).pipe(Effect.either)
      // a truncated body must never look complete
      expect(outcome._tag).toBe("Left")
    }).pipe(Effect.provide(env())))
})

describe("Proxy small bodies", () => {
  it.scopedLive("answers 502 when a small upstream body breaks before it is complete", () =>
    Effect.gen(function*() {
      const proxy = yield* Proxy.ProxyTag
      const res = yield* fetchVia(`${proxy.url}/half-small`)
      expect(res.status).toBe(502)
      expect(res.text).toContain("sent a broken response")
    }).pipe(Effect.provide(env())))
})

describe("Proxy shutdown", () => {
  it.live("lets an in-flight request finish, then refuses new connections", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(env(), scope)
      const proxy = Effect.runSync(Effect.provide(Proxy.ProxyTag, context))
      const inFlight = yield* Effect.fork(fetchVia(`${proxy.url}/slow?ms=400`))
      // wait until the request is in the proxy
      while ((yield* proxy.inFlight) === 0) yield* Effect.sleep("10 millis")
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      const res = yield* Fiber.join(inFlight)
      expect(res.status).toBe(200)
      expect(res.text).toBe("slow done")
      expect(res.headers["connection"]).toBe("close")
      yield* Fiber.join(closing)
      const after = yield* Effect.tryPromise(() => request(`${proxy.url}/echo`)).pipe(Effect.either)
      expect(after._tag).toBe("Left")
      expect(String(after._tag === "Left" ? (after.left.cause as Error).message : "")).toContain("ECONNREFUSED")
    }))

  it.live("cuts requests still running when the grace period ends", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(env({ shutdownGrace: "200 millis" }), scope)
      const proxy = Effect.runSync(Effect.provide(Proxy.ProxyTag, context))
      const hanging = yield* Effect.fork(
        Effect.tryPromise(() => request(`${proxy.url}/slow?ms=5000`).then((r) => r.body.text())).pipe(Effect.either)
      )
      while ((yield* proxy.inFlight) === 0) yield* Effect.sleep("10 millis")
      const started = Date.now()
      yield* Scope.close(scope, Exit.void)
      expect(Date.now() - started).toBeLessThan(2000)
      const outcome = yield* Fiber.join(hanging)
      expect(outcome._tag).toBe("Left")
    }))
})
