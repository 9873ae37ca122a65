/**
 * The embedded demo origin the proxy runs in front of when no `--upstream` is given: a small
 * loopback server whose routes show each caching behaviour (fresh hits, shared-only freshness,
 * revalidation with 304, Vary, no-store, private, invalidation by POST, a large streamed body).
 *
 * @internal
 */
import type { HttpServerError } from "@effect/platform"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Clock, Context, Effect, Layer, Ref, Stream } from "effect"
import * as Http from "node:http"

export interface DemoOrigin {
  readonly url: string
  /** Requests the origin answered, per route path (to show what the cache saved). */
  readonly hits: Effect.Effect<Readonly<Record<string, number>>>
}

export class DemoOriginTag extends Context.Tag("@cachekit/http/DemoOrigin")<DemoOriginTag, DemoOrigin>() {}

/** Routes, with what each one demonstrates (printed by the CLI and served at `/`). */
export const routes: ReadonlyArray<{ readonly path: string; readonly shows: string }> = [
  { path: "/cacheable", shows: "Cache-Control: public, max-age=30 -> served from cache for 30 s (Age grows)" },
  { path: "/slow", shows: "takes 500 ms at the origin; s-maxage=60 -> instant from the shared cache" },
  { path: "/revalidate", shows: "max-age=5 with ETag -> after 5 s the proxy revalidates and gets 304" },
  { path: "/vary", shows: "Vary: Accept-Language -> one cached copy per language (try -H 'Accept-Language: fr')" },
  { path: "/no-store", shows: "Cache-Control: no-store -> never stored, every request reaches the origin" },
  { path: "/private", shows: "Cache-Control: private -> a shared cache must not store it" },
  { path: "/big?mib=8", shows: "a streamed body of N MiB (max 256), cacheable for 60 s" },
  { path: "POST /cacheable", shows: "an unsafe method: invalidates the cached /cacheable" }
]

const MIB = 1024 * 1024
const chunk = new Uint8Array(64 * 1024).fill(0x61)

/** Serves the demo routes on `host:port` (port 0 = any free port). */
export const layer = (options: { readonly port?: number; readonly host?: string } = {}): Layer.Layer<
  DemoOriginTag,
  HttpServerError.ServeError
> =>
  Layer.scoped(
    DemoOriginTag,
    Effect.gen(function*() {
      const counts = yield* Ref.make<Record<string, number>>({})
      const count = (path: string) => Ref.update(counts, (c) => ({ ...c, [path]: (c[path] ?? 0) + 1 }))
      const body = (route: string, extra: Record<string, unknown> = {}) =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const hits = (yield* Ref.get(counts))[route] ?? 0
          return JSON.stringify({ route, generatedAt: new Date(now).toISOString(), originHits: hits, ...extra }) + "\n"
        })
      const json = (text: string, headers: Record<string, string>, status = 200) =>
        HttpServerResponse.text(text, { status, contentType: "application/json", headers })

      const router = HttpRouter.empty.pipe(
        HttpRouter.get(
          "/",
          Effect.succeed(HttpServerResponse.text(
            "cachekit demo origin. Routes:\n" + routes.map((r) => `  ${r.path.padEnd(16)} ${r.shows}\n`).join(""),
            { headers: { "cache-control": "public, max-age=60" } }
          ))
        ),
        HttpRouter.get(
          "/cacheable",
          Effect.zipRight(count("/cacheable"), body("/cacheable")).pipe(
            Effect.map((text) => json(text, { "cache-control": "public, max-age=30" }))
          )
        ),
        HttpRouter.post(
          "/cacheable",
          Effect.zipRight(count("POST /cacheable"), body("POST /cacheable", { note: "cached GET /cacheable dropped" }))
            .pipe(
              Effect.map((text) => json(text, { "cache-control": "no-store" }))
            )
        ),
        HttpRouter.get(
          "/slow",
          Effect.zipRight(count("/slow"), Effect.sleep("500 millis")).pipe(
            Effect.zipRight(body("/slow", { tookMillis: 500 })),
            // Browsers must ask again (max-age=0); shared caches such as this proxy keep it 60 s.
            Effect.map((text) => json(text, { "cache-control": "public, max-age=0, s-maxage=60" }))
          )
        ),
        HttpRouter.get(
          "/revalidate",
          Effect.gen(function*() {
            yield* count("/revalidate")
            const request = yield* HttpServerRequest.HttpServerRequest
            // The representation changes once a minute; the ETag names the minute.
            const minute = Math.floor((yield* Clock.currentTimeMillis) / 60_000)
            const etag = `"minute-${minute}"`
            const headers = { "cache-control": "public, max-age=5", etag }
            if (request.headers["if-none-match"] === etag) {
              return HttpServerResponse.empty({ status: 304, headers })
            }
            return json(yield* body("/revalidate", { etag }), headers)
          })
        ),
        HttpRouter.get(
          "/vary",
          Effect.gen(function*() {
            yield* count("/vary")
            const request = yield* HttpServerRequest.HttpServerRequest
            const language = (request.headers["accept-language"] ?? "en").slice(0, 2).toLowerCase()
            const greeting = language === "fr" ? "bonjour" : language === "de" ? "hallo" : "hello"
            return json(yield* body("/vary", { language, greeting }), {
              "cache-control": "public, max-age=60",
              vary: "accept-language"
            })
          })
        ),
        HttpRouter.get(
          "/no-store",
          Effect.zipRight(count("/no-store"), body("/no-store")).pipe(
            Effect.map((text) => json(text, { "cache-control": "no-store" }))
          )
        ),
        HttpRouter.get(
          "/private",
          Effect.zipRight(count("/private"), body("/private")).pipe(
            Effect.map((text) => json(text, { "cache-control": "private, max-age=60" }))
          )
        ),
        HttpRouter.get(
          "/big",
          Effect.gen(function*() {
            yield* count("/big")
            const request = yield* HttpServerRequest.HttpServerRequest
            const asked = Number(new URL(request.url, "http://origin").searchParams.get("mib") ?? "8")
            const mib = Number.isFinite(asked) ? Math.min(Math.max(Math.floor(asked), 0), 256) : 8
            const chunks = (mib * MIB) / chunk.byteLength
            return HttpServerResponse.stream(Stream.repeatValue(chunk).pipe(Stream.take(chunks)), {
              contentType: "application/octet-stream",
              contentLength: mib * MIB,
              headers: { "cache-control": "public, max-age=60" }
            })
          })
        )
      )
      const server = yield* NodeHttpServer.make(() => Http.createServer(), {
        port: options.port ?? 0,
        host: options.host ?? "127.0.0.1"
      })
      yield* server.serve(router)
      const address = server.address
      const url = address._tag === "TcpAddress" ? `http://${address.hostname}:${address.port}` : "http://localhost"
      return { url, hits: Ref.get(counts) }
    })
  )
