import { AdminAuth, AdminServer, AdminTarget, OperationLog } from "@cachekit/admin"
import type { AdminApi } from "@cachekit/admin"
import { CacheEntry, MemoryBackend } from "@cachekit/core"
import type { CacheBackend } from "@cachekit/core"
import { FetchHttpClient, HttpServer } from "@effect/platform"
import { Clock, Context, Effect, Layer, Redacted } from "effect"
import { request as httpRequest } from "node:http"

export const ADMIN_TOKEN = "admin-token-0123456789abcdef"
export const READ_TOKEN = "read-token-0123456789abcdef00"

export interface Harness {
  readonly origin: string
  readonly baseUrl: string
  readonly port: number
  readonly backend: CacheBackend.CacheBackend
  readonly lines: Array<string>
}
export class HarnessTag extends Context.Tag("test/Harness")<HarnessTag, Harness>() {}

export interface HarnessOptions extends Partial<AdminApi.Options> {
  readonly auth?: AdminAuth.Options
  readonly log?: OperationLog.Options
  /** Builds the target from the backend (default: `AdminTarget.fromBackend`). */
  readonly target?: (backend: CacheBackend.CacheBackend) => AdminTarget.AdminTarget
  /** A backend to serve instead of a fresh MemoryBackend. */
  readonly backend?: CacheBackend.CacheBackend
}

/** A MemoryBackend served by a real admin server on 127.0.0.1, port 0, under `/admin` by default. */
export const harness = (options: HarnessOptions = {}) =>
  Layer.scoped(
    HarnessTag,
    Effect.gen(function*() {
      const backend = options.backend ?? (yield* MemoryBackend.make({ maxEntries: 1000 }))
      const lines: Array<string> = []
      const prefix = options.prefix ?? "/admin"
      const context = yield* Layer.build(
        AdminServer.layer({ ...options, port: 0, prefix }).pipe(
          Layer.provide(
            Layer.succeed(AdminTarget.AdminTargetTag, (options.target ?? AdminTarget.fromBackend)(backend))
          ),
          Layer.provide(AdminAuth.layer(
            options.auth ?? {
              adminToken: Redacted.make(ADMIN_TOKEN),
              readToken: Redacted.make(READ_TOKEN)
            }
          )),
          Layer.provide(
            OperationLog.layer({ ...options.log, write: (line) => Effect.sync(() => void lines.push(line)) })
          )
        )
      )
      const address = Context.get(context, HttpServer.HttpServer).address
      const port = address._tag === "TcpAddress" ? address.port : 0
      const origin = `http://127.0.0.1:${port}`
      return { origin, baseUrl: origin + (prefix === "/" ? "" : prefix), port, backend, lines }
    })
  )

/** Stores `key` for a minute with `tags`. */
export const seed = (backend: CacheBackend.CacheBackend, key: string, value = "v", tags: ReadonlyArray<string> = []) =>
  Effect.flatMap(Clock.currentTimeMillis, (now) =>
    backend.set(
      key,
      CacheEntry.make({ value: new TextEncoder().encode(value), createdAt: now, expiresAt: now + 60_000, tags })
    ))

export const exists = (backend: CacheBackend.CacheBackend, key: string) =>
  Effect.map(backend.get(key), (o) => o._tag === "Some")

export interface RawResponse {
  readonly status: number
  readonly headers: Record<string, string | Array<string> | undefined>
  readonly body: string
  readonly json: unknown
}

/**
 * A request through node:http, so the path goes out byte for byte (fetch would normalize `..` and
 * `%2e%2e` away before sending).
 */
export const raw = (options: {
  readonly port: number
  readonly method?: string
  readonly path: string
  readonly headers?: Record<string, string>
  readonly body?: string
}) =>
  Effect.async<RawResponse, Error>((resume) => {
    const req = httpRequest({
      host: "127.0.0.1",
      port: options.port,
      agent: false, // a fresh connection per request: no keep-alive state shared between cases
      method: options.method ?? "GET",
      path: options.path,
      headers: {
        ...options.headers,
        ...(options.body === undefined ? {} : { "content-length": String(Buffer.byteLength(options.body)) })
      }
    }, (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (c: Buffer) => chunks.push(c))
      res.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8")
        let json: unknown
        try {
          json = JSON.parse(body)
        } catch {
          json = undefined
        }
        resume(Effect.succeed({ status: res.statusCode ?? 0, headers: res.headers, body, json }))
      })
    })
    req.on("error", (e) => resume(Effect.fail(e)))
    if (options.body !== undefined) req.write(options.body)
    req.end()
    return Effect.sync(() => req.destroy())
  }).pipe(Effect.timeout("5 seconds"))

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
export const jsonHeaders = (token: string) => ({ ...bearer(token), "content-type": "application/json" })

export const ClientLayer = FetchHttpClient.layer
