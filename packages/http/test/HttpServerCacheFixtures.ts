/**
 * Fixtures for the HttpServerCache tests: a real NodeHttpServer on port 0 serving an app behind
 * the cache, a raw node:http client (it never decompresses, so content codings are visible), and
 * a direct caller for TestClock tests (the app run in-process, no socket).
 */
import { MemoryBackend } from "@cachekit/core"
import type { CacheBackend } from "@cachekit/core"
import { HttpServerCache } from "@cachekit/http"
import { HttpServer, HttpServerRequest } from "@effect/platform"
import type { HttpApp, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Chunk, Context, Effect, Layer, Stream } from "effect"
import type { Scope } from "effect"
import { createServer, request as httpRequest } from "node:http"

export interface Reply {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: Buffer
  readonly text: string
}

/** Serves `app` (which may use the middleware) with a cache layer over `backend`; returns its base URL. */
export const serve = <E>(
  app: HttpApp.Default<E, HttpServerCache.HttpServerCacheTag | HttpServerRequest.HttpServerRequest | Scope.Scope>,
  options: HttpServerCache.Options = {},
  backend: Layer.Layer<CacheBackend.CacheBackendTag> = MemoryBackend.layer({ maxBytes: 256 * 1024 * 1024 })
): Effect.Effect<{ readonly base: string; readonly cache: HttpServerCache.HttpServerCache }, never, Scope.Scope> =>
  Effect.gen(function*() {
    const context = yield* Layer.build(
      Layer.merge(
        NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }),
        HttpServerCache.layer(options).pipe(Layer.provide(backend))
      )
    ).pipe(Effect.orDie)
    yield* HttpServer.serveEffect(app).pipe(Effect.provide(context))
    const address = Context.get(context, HttpServer.HttpServer).address
    const port = address._tag === "TcpAddress" ? address.port : 0
    return { base: `http://127.0.0.1:${port}`, cache: Context.get(context, HttpServerCache.HttpServerCacheTag) }
  })

/** A GET (or `method`) with node:http; the whole body is read. */
export const fetchRaw = (
  url: string,
  headers: Record<string, string> = {},
  method = "GET"
): Effect.Effect<Reply> =>
  Effect.async<Reply>((resume) => {
    const req = httpRequest(url, { method, headers, agent: false }, (res) => {
      const parts: Array<Buffer> = []
      res.on("data", (part: Buffer) => parts.push(part))
      res.on("end", () => {
        const body = Buffer.concat(parts)
        const out: Record<string, string> = {}
        for (const [name, value] of Object.entries(res.headers)) {
          if (value !== undefined) out[name] = Array.isArray(value) ? value.join(", ") : value
        }
        resume(Effect.succeed({ status: res.statusCode ?? 0, headers: out, body, text: body.toString("utf8") }))
      })
      res.on("error", (error) => resume(Effect.die(error)))
    })
    req.on("error", (error) => resume(Effect.die(error)))
    req.end()
  })

/** Runs `app` in-process for a request to `path` (TestClock-friendly: no socket). */
export const call = <E>(
  app: HttpApp.Default<E, HttpServerRequest.HttpServerRequest>,
  path: string,
  headers: Record<string, string> = {}
): Effect.Effect<{ readonly response: HttpServerResponse.HttpServerResponse; readonly text: string }, E> =>
  Effect.gen(function*() {
    const request = HttpServerRequest.fromWeb(new Request(`http://local${path}`, { headers }))
    const response = yield* Effect.provideService(app, HttpServerRequest.HttpServerRequest, request)
    const body = response.body
    let bytes: Uint8Array = new Uint8Array(0)
    if (body._tag === "Uint8Array") bytes = body.body
    else if (body._tag === "Stream") {
      const chunks = yield* Stream.runCollect(Stream.orDie(body.stream))
      bytes = Buffer.concat(Chunk.toArray(chunks))
    }
    return { response, text: Buffer.from(bytes).toString("utf8") }
  })

/** Lets forked fibers (background refreshes) run to completion. */
export const settle = Effect.forEach(Array.from({ length: 20 }), () => Effect.yieldNow(), { discard: true })
