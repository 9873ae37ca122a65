/**
 * Fixtures for the HttpClientCache tests: a real origin server on port 0 whose routes each test
 * defines (and whose calls it counts), a streaming backend on temporary files, and the layer that
 * puts the caching client over the undici client.
 */
import { CacheBackend, CacheEntry, MemoryBackend } from "@cachekit/core"
import { HttpClientCache } from "@cachekit/http"
import {
  FileSystem,
  HttpClient,
  HttpClientRequest,
  HttpServer,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import { NodeFileSystem, NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import { Clock, Context, Effect, Layer, Option, Stream } from "effect"
import { createServer } from "node:http"

/** What a route handler sees: the request and how many times this route was called (1 = first). */
export interface Call {
  readonly request: HttpServerRequest.HttpServerRequest
  readonly n: number
}

export type Handler = (call: Call) => Effect.Effect<HttpServerResponse.HttpServerResponse>

export interface Origin {
  readonly url: (path: string) => string
  readonly route: (path: string, handler: Handler) => void
  readonly calls: (path: string) => number
}
export class OriginTag extends Context.Tag("test/Origin")<OriginTag, Origin>() {}

/** A real NodeHttpServer on a free port; unknown paths answer 404. */
export const OriginLive: Layer.Layer<OriginTag> = Layer.scoped(
  OriginTag,
  Effect.gen(function*() {
    const routes = new Map<string, Handler>()
    const counts = new Map<string, number>()
    const app = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const path = new URL(request.url, "http://origin").pathname
      const n = (counts.get(path) ?? 0) + 1
      counts.set(path, n)
      const handler = routes.get(path)
      return handler === undefined
        ? HttpServerResponse.text("no route", { status: 404 })
        : yield* handler({ request, n })
    })
    yield* HttpServer.serveEffect(app)
    const server = yield* HttpServer.HttpServer
    const address = server.address
    const port = address._tag === "TcpAddress" ? address.port : 0
    return {
      url: (path) => `http://127.0.0.1:${port}${path}`,
      route: (path, handler) => void routes.set(path, handler),
      calls: (path) => counts.get(path) ?? 0
    }
  })
).pipe(Layer.provide(NodeHttpServer.layer(() => createServer(), { port: 0 })), Layer.orDie)

/** Entries a file-backed streaming fixture holds, for assertions. */
export interface FileStore {
  readonly keys: () => ReadonlyArray<string>
}
export class FileStoreTag extends Context.Tag("test/FileStore")<FileStoreTag, FileStore>() {}

/**
 * A streaming backend on temporary files (bodies never held whole in memory): `setStream` writes
 * to a temporary file and publishes the entry only when the body completed, `getStream` streams
 * the file back.
 */
export const FileStreamingBackend: Layer.Layer<CacheBackend.CacheBackendTag | FileStoreTag> = Layer.scopedContext(
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped()
    const entries = new Map<string, { readonly entry: CacheEntry.CacheEntry; readonly file: string }>()
    let counter = 0
    const live = (key: string) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const found = entries.get(key)
        if (found === undefined || !CacheEntry.isServable(found.entry, now)) return undefined
        return found
      })
    const backend: CacheBackend.CacheBackend = {
      name: "file-fixture",
      get: (key) =>
        Effect.flatMap(live(key), (found) =>
          found === undefined
            ? CacheBackend.miss
            : fs.readFile(found.file).pipe(
              Effect.map((value) => Option.some({ ...found.entry, value })),
              Effect.orDie
            )),
      set: (key, entry) =>
        Effect.gen(function*() {
          const file = `${dir}/${++counter}`
          yield* Effect.orDie(fs.writeFile(file, entry.value))
          entries.set(key, { entry: { ...entry, value: new Uint8Array(0) }, file })
        }),
      delete: (key) => Effect.sync(() => entries.delete(key)),
      clear: Effect.sync(() => entries.clear()),
      health: Effect.succeed({ backend: "file-fixture", status: "up", latencyMillis: 0 }),
      streaming: {
        getStream: (key) =>
          Effect.map(live(key), (found) =>
            found === undefined
              ? Option.none()
              : Option.some({ entry: found.entry, body: Stream.orDie(fs.stream(found.file)) })),
        setStream: (key, template, body) =>
          Effect.gen(function*() {
            const file = `${dir}/${++counter}`
            let size = 0
            yield* Effect.scoped(Effect.gen(function*() {
              const handle = yield* Effect.orDie(fs.open(file, { flag: "w" }))
              yield* Stream.runForEach(body, (chunk) => {
                size += chunk.byteLength
                return Effect.orDie(handle.writeAll(chunk))
              })
            }))
            const entry: CacheEntry.CacheEntry = { ...template, value: new Uint8Array(0), size }
            entries.set(key, { entry, file })
            return entry
          })
      }
    }
    return Context.make(CacheBackend.CacheBackendTag, backend).pipe(
      Context.add(FileStoreTag, { keys: () => [...entries.keys()] })
    )
  })
).pipe(Layer.provide(NodeFileSystem.layer), Layer.orDie)

/** The memory backend used by most tests (in-process, `unsafeGetSync` hot path). */
export const MemoryLive = MemoryBackend.layer({ maxBytes: 256 * 1024 * 1024, maxEntrySize: 64 * 1024 * 1024 })

/** Origin + backend + the caching undici client; the origin stays reachable for route setup. */
export const cachedClient = (
  options: HttpClientCache.Options = {},
  backend: Layer.Layer<CacheBackend.CacheBackendTag> = MemoryLive
): Layer.Layer<HttpClient.HttpClient | OriginTag | CacheBackend.CacheBackendTag> =>
  HttpClientCache.layer(options).pipe(
    Layer.provideMerge(Layer.merge(NodeHttpClient.layerUndici, backend)),
    Layer.merge(OriginLive)
  )

/** GET (or another method) through the cached client, body read whole. */
export const fetchText = (
  path: string,
  init: { readonly method?: "GET" | "HEAD" | "POST" | "PUT" | "DELETE"; readonly headers?: Record<string, string> } = {}
) =>
  Effect.gen(function*() {
    const origin = yield* OriginTag
    const client = yield* HttpClient.HttpClient
    const response = yield* client.execute(
      HttpClientRequest.make(init.method ?? "GET")(origin.url(path), { headers: init.headers ?? {} })
    )
    const body = yield* response.text
    return { status: response.status, headers: response.headers, body }
  })
