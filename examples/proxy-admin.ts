/**
 * The caching reverse proxy in front of a slow origin, with the admin API beside it on its own
 * port, both on one memory backend: two requests through the proxy (miss, then hit), then the
 * admin API lists the stored keys, reads the stats and invalidates the entry, and the next request
 * goes to the origin again. Everything listens on free loopback ports.
 *
 * (The same proxy runs from the command line: `npx cachekit proxy --upstream http://127.0.0.1:8080`.)
 *
 * Run: `npx tsx examples/proxy-admin.ts`
 */
import { AdminAuth, AdminServer, AdminTarget, OperationLog } from "@cachekit/admin"
import { MemoryBackend } from "@cachekit/core"
import { Proxy } from "@cachekit/http"
import { HttpRouter, HttpServer, HttpServerResponse } from "@effect/platform"
import { NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import { Console, Context, Effect, Layer, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { createServer } from "node:http"

// --- a slow origin that says how to cache its answers ---
let originCalls = 0
const originApp = HttpRouter.empty.pipe(
  HttpRouter.get(
    "/reports/daily",
    Effect.gen(function*() {
      originCalls++
      yield* Effect.sleep("200 millis")
      return HttpServerResponse.text(`daily report #${originCalls}\n`, {
        headers: { "cache-control": "public, s-maxage=60" }
      })
    })
  )
)

const serverUrl = Effect.map(
  HttpServer.HttpServer,
  (server) => server.address._tag === "TcpAddress" ? `http://127.0.0.1:${server.address.port}` : ""
)

/** Starts a layer that provides an HttpServer in the current scope and returns its URL. */
const start = <E>(layer: Layer.Layer<HttpServer.HttpServer, E>) =>
  Effect.flatMap(Layer.build(layer), (context) => Effect.provide(serverUrl, context))

const adminToken = randomBytes(16).toString("hex")

const program = Effect.gen(function*() {
  const origin = yield* start(
    HttpServer.serve(originApp).pipe(
      Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }))
    )
  )

  // One memory backend shared by the proxy's cache and the admin API.
  const backend = yield* Layer.build(MemoryBackend.layer({ maxBytes: 64 * 1024 * 1024 }))

  const proxyContext = yield* Layer.build(
    Proxy.layerCaching({ upstream: origin, port: 0, host: "127.0.0.1" }).pipe(
      Layer.provide(NodeHttpClient.layerUndici),
      Layer.provide(Layer.succeedContext(backend))
    )
  )
  const proxy = Context.get(proxyContext, Proxy.ProxyTag).url

  const admin = yield* start(
    AdminServer.layer({ port: 0, prefix: "/admin" }).pipe(
      Layer.provide(AdminTarget.layerFromBackend()),
      Layer.provide(AdminAuth.layer({ adminToken: Redacted.make(adminToken) })),
      // The operation log writes sampled JSON lines; off here to keep the output short.
      Layer.provide(Layer.succeed(OperationLog.OperationLogTag, OperationLog.disabled)),
      Layer.provide(Layer.succeedContext(backend))
    )
  )
  yield* Console.log(`origin ${origin}, proxy ${proxy}, admin ${admin}/admin/ (dashboard at /admin/dashboard)`)

  const get = (label: string) =>
    Effect.promise(async () => {
      const response = await fetch(`${proxy}/reports/daily`)
      const body = (await response.text()).trim()
      console.log(
        `${label.padEnd(26)} "${body}"  cache-status: ${response.headers.get("cache-status")}  ` +
          `age: ${response.headers.get("age")}  (origin called ${originCalls}x)`
      )
    })
  const adminCall = (method: "GET" | "POST", path: string, body?: unknown) =>
    Effect.promise(async () => {
      const response = await fetch(`${admin}/admin${path}`, {
        method,
        headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) })
      })
      return { status: response.status, json: await response.json() as Record<string, unknown> }
    })

  yield* get("1. through the proxy")
  yield* get("2. again (from cache)")

  const keys = yield* adminCall("GET", "/keys?pattern=*")
  yield* Console.log(`admin GET /keys -> ${keys.status} ${JSON.stringify(keys.json)}`)
  const stats = yield* adminCall("GET", "/stats")
  yield* Console.log(`admin GET /stats -> ${stats.status} ${JSON.stringify(stats.json)}`)
  const storedKeys = (keys.json["keys"] as ReadonlyArray<string> | undefined) ?? []
  const invalidated = yield* adminCall("POST", "/invalidate", { keys: storedKeys })
  yield* Console.log(`admin POST /invalidate -> ${invalidated.status} ${JSON.stringify(invalidated.json)}`)
  const unauthorised = yield* Effect.promise(() => fetch(`${admin}/admin/stats`))
  yield* Console.log(`admin GET /stats without the token -> ${unauthorised.status}`)

  yield* get("3. after the invalidation")
})

Effect.runPromise(Effect.scoped(program)).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
