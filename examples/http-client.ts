/**
 * An RFC 9111 cache around an `HttpClient`: a small GitHub-like JSON API runs in this process (on a
 * free loopback port) and the program calls it through `HttpClientCache`. It shows a miss, a hit
 * served without touching the origin, a revalidation with `If-None-Match` answered 304 (the stored
 * body is reused), and the `Cache-Status` header (RFC 9211) on every response.
 *
 * Run: `npx tsx examples/http-client.ts`
 */
import { MemoryBackend } from "@cachekit/core"
import { HttpClientCache } from "@cachekit/http"
import { HttpClient, HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import { Console, Effect, Layer, Schema } from "effect"
import { createServer } from "node:http"

// --- the origin: a JSON API with ETags and a one-second freshness lifetime ---
const origin = { requests: 0, notModified: 0 }
// The version of the resource; an If-None-Match naming it gets a 304 with no body.
const repoVersion = "\"repo-v1\""

const api = HttpRouter.empty.pipe(
  HttpRouter.get(
    "/repos/:owner/:repo",
    Effect.gen(function*() {
      origin.requests++
      const request = yield* HttpServerRequest.HttpServerRequest
      const { owner, repo } = yield* HttpRouter.params
      const headers = { "cache-control": "public, max-age=60", etag: repoVersion }
      if (request.headers["if-none-match"] === repoVersion) {
        origin.notModified++
        return HttpServerResponse.empty({ status: 304, headers })
      }
      return yield* HttpServerResponse.json(
        { full_name: `${owner}/${repo}`, stargazers_count: 4242, default_branch: "main" },
        { headers }
      )
    })
  )
)

const OriginLive = HttpServer.serve(api).pipe(
  Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }))
)

// --- the client side: HttpClientCache over undici, entries in a memory backend ---
const Repo = Schema.Struct({ full_name: Schema.String, stargazers_count: Schema.Number })

const program = Effect.gen(function*() {
  const address = (yield* HttpServer.HttpServer).address
  const base = address._tag === "TcpAddress" ? `http://127.0.0.1:${address.port}` : ""
  const client = yield* HttpClient.HttpClient

  const fetchRepo = (label: string, headers: Record<string, string> = {}) =>
    Effect.gen(function*() {
      const response = yield* client.get(`${base}/repos/effect-ts/effect`, { headers })
      const repo = yield* Schema.decodeUnknown(Repo)(yield* response.json)
      yield* Console.log(
        `${label.padEnd(24)} ${response.status} ${repo.full_name} ★${repo.stargazers_count}  ` +
          `cache-status: ${response.headers["cache-status"]}  (origin: ${origin.requests} requests, ` +
          `${origin.notModified} x 304)`
      )
    })

  yield* fetchRepo("1. first call (miss)")
  yield* fetchRepo("2. second call (hit)")
  // A request that asks for a validated answer (like a browser reload): the cache sends
  // If-None-Match, the origin answers 304, and the stored body is served with the merged headers.
  // An entry past its max-age is revalidated the same way.
  yield* fetchRepo("3. no-cache -> 304", { "cache-control": "no-cache" })
  yield* fetchRepo("4. fresh again (hit)")
})

const MainLive = Layer.mergeAll(
  OriginLive,
  HttpClientCache.layer({ shared: false }).pipe(
    Layer.provide(NodeHttpClient.layerUndici),
    Layer.provide(MemoryBackend.layer({ maxBytes: 16 * 1024 * 1024 }))
  )
)

Effect.runPromise(program.pipe(Effect.provide(MainLive), Effect.scoped)).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
