/**
 * `HttpServerCache` on an `HttpRouter` app: a slow product handler is cached per path and query,
 * concurrent misses run it once, clients get `Cache-Status` and a strong ETag (and a 304 when they
 * send it back), and a tag purges what changed.
 *
 * Run: `npx tsx examples/http-server.ts`
 */
import { HttpServerCache } from "@cachekit/http"
import { HttpRouter, HttpServer, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Console, Effect, Layer } from "effect"
import { createServer } from "node:http"

// --- the app: a slow handler (a database query, say) that we count ---
let handlerRuns = 0
const getProduct = Effect.gen(function*() {
  const { id } = yield* HttpRouter.params
  handlerRuns++
  yield* Effect.sleep("100 millis")
  return yield* HttpServerResponse.json({ id, name: `product ${id}`, price: 1999 })
})

const app = HttpRouter.empty.pipe(
  HttpRouter.get("/products/:id", getProduct),
  // Cache the whole router; each stored response is tagged with its product so it can be purged.
  HttpServerCache.middleware({
    tags: (request) => [`product:${new URL(request.url, "http://x").pathname.split("/")[2]}`]
  })
)

const ServerLive = HttpServer.serve(app).pipe(
  Layer.provideMerge(HttpServerCache.layerMemory({ ttl: "5 minutes", staleWhileRevalidate: "1 minute" })),
  Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }))
)

// --- a client calling it with plain fetch ---
const program = Effect.gen(function*() {
  const address = (yield* HttpServer.HttpServer).address
  const base = address._tag === "TcpAddress" ? `http://127.0.0.1:${address.port}` : ""
  const call = (label: string, headers: Record<string, string> = {}) =>
    Effect.promise(async () => {
      const response = await fetch(`${base}/products/7`, { headers })
      await response.arrayBuffer()
      console.log(
        `${label.padEnd(34)} ${response.status}  cache-status: ${response.headers.get("cache-status")}  ` +
          `(handler ran ${handlerRuns}x)`
      )
      return response.headers.get("etag") ?? ""
    })

  // Five concurrent requests for a product nobody asked for yet: the handler runs once.
  yield* Effect.all(Array.from({ length: 5 }, (_, i) => call(`concurrent miss #${i + 1}`)), {
    concurrency: "unbounded"
  })
  const etag = yield* call("later request (hit)")
  yield* call("conditional request (If-None-Match)", { "if-none-match": etag })

  const purged = yield* HttpServerCache.invalidateTags(["product:7"])
  yield* Console.log(`product 7 changed: invalidateTags(["product:7"]) purged ${purged} response(s)`)
  yield* call("after the purge (miss)")
})

Effect.runPromise(program.pipe(Effect.provide(ServerLive), Effect.scoped)).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
