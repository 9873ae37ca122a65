import type { HttpApp, HttpRouter } from "@effect/platform"
import {
  HttpApiBuilder,
  HttpApiSwagger,
  HttpIncomingMessage,
  HttpServerError,
  HttpServerRequest,
  HttpServerResponse,
  OpenApi
} from "@effect/platform"
import { Cause, Clock, Effect, FiberRef, Layer, Metric, MetricBoundaries, Option } from "effect"
import type { Scope } from "effect"
import { randomUUID } from "node:crypto"
import * as A from "../AdminApi.js"
import type { Role } from "../AdminAuth.js"
import { AdminAuthTag } from "../AdminAuth.js"
import type { AdminTargetError, TierHealth } from "../AdminTarget.js"
import { AdminTargetTag } from "../AdminTarget.js"
import * as Dashboard from "../Dashboard.js"
import type { OperationRecord } from "../OperationLog.js"
import { currentRequestId, OperationLogTag, timed } from "../OperationLog.js"
import * as PrometheusMetrics from "../PrometheusMetrics.js"

// AdminApi.ts imports this file and this file uses AdminApi's classes: the cycle is safe because they
// are only used inside functions called after both modules are loaded.
type Api = typeof A.Api
type Options = A.Options
/** What a server provides to every app it runs (platform, etag generator, file system, path). */
export type AppServices = HttpRouter.HttpRouter.DefaultServices

const currentRole = FiberRef.unsafeMake<Role | undefined>(undefined)

// ---------------------------------------------------------------------------------------------
// Metrics of the admin API itself
// ---------------------------------------------------------------------------------------------

const requestsTotal = Metric.counter("cachekit_admin_requests_total", {
  description: "Admin API requests by route and status"
})
const requestDuration = Metric.histogram(
  "cachekit_admin_request_duration_seconds",
  MetricBoundaries.exponential({ start: 0.0005, factor: 2, count: 14 }),
  "Admin API request latency"
)
const tierGauge = (name: string, description: string) => Metric.gauge(name, { description })
const tierGauges = {
  hits: tierGauge("cachekit_tier_hits", "Hits counted by the tier (backend counter, read at scrape time)"),
  misses: tierGauge("cachekit_tier_misses", "Misses counted by the tier"),
  entries: tierGauge("cachekit_tier_entries", "Entries stored in the tier"),
  bytes: tierGauge("cachekit_tier_bytes", "Bytes stored in the tier"),
  evictions: tierGauge("cachekit_tier_evictions", "Evictions counted by the tier")
}
const hitRatioGauge = tierGauge("cachekit_hit_ratio", "hits / (hits + misses) of the whole cache")

const ROUTES = ["/health", "/stats", "/hot-keys", "/tags", "/keys", "/invalidate", "/clear", "/metrics", "/"]
const routeLabel = (path: string): string =>
  path.startsWith("/entries/") ? "/entries/:key" : ROUTES.includes(path) ? path : "other"

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** A glob with no literal character (only `*`, `?` and classes) matches (nearly) every key. */
export const matchesEverything = (pattern: string): boolean => {
  const withoutClasses = pattern.replace(/\[[^\]]*\]/g, "")
  return /^[*?]*$/.test(withoutClasses)
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

const jsonError = (status: number, tag: string, message: string) =>
  HttpServerResponse.unsafeJson({ _tag: tag, message }, { status })

const hasDotSegment = (path: string): boolean =>
  path.split("/").some((segment) => {
    let decoded: string
    try {
      decoded = decodeURIComponent(segment)
    } catch {
      return true // malformed percent-encoding: refuse rather than guess
    }
    return decoded === "." || decoded === ".." || decoded.includes("\\")
  })

const worst = (statuses: ReadonlyArray<"up" | "degraded" | "down">): "up" | "degraded" | "down" =>
  statuses.includes("down") ? "down" : statuses.includes("degraded") ? "degraded" : "up"

const base64 = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64")

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

export const makeApp = (
  api: Api,
  options: Options
): Effect.Effect<
  HttpApp.Default<never, AppServices>,
  never,
  AdminTargetTag | AdminAuthTag | OperationLogTag | Scope.Scope
> =>
  Effect.gen(function*() {
    const target = yield* AdminTargetTag
    const auth = yield* AdminAuthTag
    const oplog = yield* OperationLogTag
    const prefix = options.prefix === undefined || options.prefix === "/" ? "" : options.prefix.replace(/\/+$/, "")
    const maxBodyBytes = options.maxBodyBytes ?? 1024 * 1024
    const healthTimeoutMillis = options.healthTimeoutMillis ?? 5000
    const servedApi = api.annotate(OpenApi.Servers, [{ url: prefix === "" ? "/" : prefix }])
      .annotate(OpenApi.Title, "cachekit admin API")

    const toApiError = (e: AdminTargetError) =>
      e._tag === "NotSupported"
        ? new A.NotSupported({ capability: e.capability, message: e.message })
        : new A.Unavailable({ message: e.message })

    /** Runs a target operation, mapping its errors and writing one log line. */
    const op = <X, R>(
      effect: Effect.Effect<X, AdminTargetError, R>,
      describe: (result: Option.Option<X>) => Omit<OperationRecord, "durationMillis" | "role">
    ) =>
      Effect.flatMap(FiberRef.get(currentRole), (role) => {
        const base = describe(Option.none())
        return timed(oplog, Effect.mapError(effect, toApiError), (r) => ({
          ...describe(r),
          ...(role === undefined ? {} : { role })
        })).pipe(
          // a span per operation; exported only when the user provides a tracer (@effect/opentelemetry)
          Effect.withSpan(`cachekit.${base.op}`, {
            attributes: { "cachekit.op": base.op, ...(role === undefined ? {} : { "cachekit.role": role }) }
          })
        )
      })

    // The bearer value platform decodes is not used: it does not check the "Bearer " scheme.
    /** Rejected requests are always logged (never sampled): they are what an audit looks for. */
    const reject = <E>(error: E, outcome: string, path: string) =>
      Effect.zipRight(
        oplog.log({ op: "admin.auth", outcome, mutating: true, durationMillis: 0, detail: path }),
        Effect.fail(error)
      )
    const pathOf = (request: HttpServerRequest.HttpServerRequest) => request.url.split("?")[0]!.slice(0, 256)

    const authenticate = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const role = auth.authenticate(request.headers.authorization, Option.getOrUndefined(request.remoteAddress))
      if (role === undefined) {
        return yield* reject(
          new A.Unauthorized({ message: "a valid bearer token is required (Authorization: Bearer <token>)" }),
          "unauthorized",
          pathOf(request)
        )
      }
      yield* FiberRef.set(currentRole, role)
      return role
    })
    const requireAdmin = Effect.flatMap(authenticate, (role) =>
      role === "admin"
        ? Effect.void
        : Effect.flatMap(
          HttpServerRequest.HttpServerRequest,
          (request) =>
            reject(new A.Forbidden({ message: "this operation needs the admin token" }), "forbidden", pathOf(request))
        ))

    const ReadAccessLive = Layer.succeed(A.ReadAccess, { bearer: () => Effect.asVoid(authenticate) })
    const AdminAccessLive = Layer.succeed(A.AdminAccess, { bearer: () => requireAdmin })

    const ReadLive = HttpApiBuilder.group(api, "read", (handlers) =>
      handlers
        .handle("health", () =>
          Effect.map(
            Effect.timeoutTo(target.health, {
              duration: healthTimeoutMillis,
              onSuccess: (tiers): ReadonlyArray<TierHealth> => tiers,
              onTimeout: (): ReadonlyArray<TierHealth> => [{
                name: target.name,
                status: "down",
                latencyMillis: healthTimeoutMillis,
                detail: `health probe did not answer within ${healthTimeoutMillis} ms`
              }]
            }),
            (tiers) => ({
              status: worst(tiers.map((t) => t.status)),
              tiers: tiers.map((t) => ({
                name: t.name,
                status: t.status,
                latencyMillis: t.latencyMillis,
                ...(t.detail === undefined ? {} : { detail: t.detail })
              }))
            })
          ))
        .handle("stats", () =>
          op(target.stats, () => ({ op: "admin.stats", outcome: "ok", mutating: false })).pipe(
            Effect.map((s) => ({
              hits: s.hits,
              misses: s.misses,
              hitRatio: s.hitRatio,
              ...(s.staleServed === undefined ? {} : { staleServed: s.staleServed }),
              evictions: s.evictions,
              entries: s.entries,
              bytes: s.bytes,
              tiers: s.tiers
            }))
          ))
        .handle("hotKeys", ({ urlParams }) =>
          op(target.hotKeys(urlParams.limit ?? 20), (r) => ({
            op: "admin.hotKeys",
            outcome: "ok",
            mutating: false,
            count: Option.match(r, { onNone: () => 0, onSome: (k) => k.length })
          })).pipe(Effect.map((keys) => ({ keys }))))
        .handle("tags", () =>
          op(target.tags, () => ({ op: "admin.tags", outcome: "ok", mutating: false })).pipe(
            Effect.map((tags) => ({ tags }))
          ))
        .handle("keys", ({ urlParams }) =>
          op(
            target.keys(urlParams.pattern ?? "*", { cursor: urlParams.cursor, count: urlParams.count ?? 100 }),
            (r) => ({
              op: "admin.keys",
              outcome: "ok",
              mutating: false,
              pattern: urlParams.pattern ?? "*",
              count: Option.match(r, { onNone: () => 0, onSome: (p) => p.keys.length })
            })
          ).pipe(Effect.map((page) => ({ keys: page.keys, cursor: page.cursor ?? null }))))
        .handle("entry", ({ path, urlParams }) =>
          op(target.entry(path.key, { body: urlParams.body === true }), (r) => ({
            op: "admin.entry",
            outcome: Option.match(r, { onNone: () => "error", onSome: (o) => Option.isSome(o) ? "found" : "absent" }),
            mutating: false,
            keys: [path.key]
          })).pipe(
            Effect.flatMap(Option.match({
              onNone: () =>
                Effect.fail(new A.EntryNotFound({ key: path.key, message: `no entry for key "${path.key}"` })),
              onSome: (e) =>
                Effect.succeed({
                  key: e.key,
                  tier: e.tier,
                  size: e.size,
                  createdAt: e.createdAt,
                  ttlLeftMillis: e.ttlLeftMillis ?? null,
                  staleLeftMillis: e.staleLeftMillis ?? null,
                  tags: e.tags,
                  meta: e.meta,
                  ...(e.body === undefined ? {} : { bodyBase64: base64(e.body) })
                })
            }))
          )))

    const AdminLive = HttpApiBuilder.group(api, "admin", (handlers) =>
      handlers
        .handle("invalidate", ({ payload }) =>
          Effect.gen(function*() {
            const keys = payload.keys ?? []
            const tags = payload.tags ?? []
            // every check first, so a request that cannot be served completely changes nothing
            if (payload.pattern !== undefined && matchesEverything(payload.pattern) && payload.confirm !== true) {
              return yield* Effect.fail(
                new A.ConfirmationRequired({
                  message: `pattern "${payload.pattern}" matches every key; send "confirm": true to remove them all`
                })
              )
            }
            if (tags.length > 0 && !target.supports("tags")) {
              return yield* Effect.fail(
                new A.NotSupported({ capability: "tags", message: `"${target.name}" keeps no tag index` })
              )
            }
            if (payload.pattern !== undefined && !target.supports("scan")) {
              return yield* Effect.fail(
                new A.NotSupported({ capability: "scan", message: `"${target.name}" cannot remove keys by pattern` })
              )
            }
            const run = Effect.gen(function*() {
              const byKeys = keys.length > 0 ? yield* target.invalidateKeys(keys) : 0
              const byTags = tags.length > 0 ? yield* target.invalidateTags(tags) : 0
              const byPattern = payload.pattern !== undefined ? yield* target.invalidatePattern(payload.pattern) : 0
              return { removed: byKeys + byTags + byPattern, byKeys, byTags, byPattern }
            })
            return yield* op(run, (r) => ({
              op: "admin.invalidate",
              outcome: "ok",
              mutating: true,
              keys,
              tags,
              pattern: payload.pattern,
              count: Option.match(r, { onNone: () => 0, onSome: (x) => x.removed })
            }))
          }))
        .handle("clear", () =>
          op(target.clear, () => ({ op: "admin.clear", outcome: "ok", mutating: true })).pipe(
            Effect.as({ cleared: true as const })
          )))

    const ApiLive = HttpApiBuilder.api(servedApi).pipe(
      Layer.provide([ReadLive, AdminLive]),
      Layer.provide([ReadAccessLive, AdminAccessLive])
    )

    const requireRead = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      return auth.authenticate(request.headers.authorization, Option.getOrUndefined(request.remoteAddress)) !==
        undefined
    })

    const metricsHandler = Effect.gen(function*() {
      if (options.publicMetrics !== true && !(yield* requireRead)) {
        return jsonError(401, "Unauthorized", "a valid bearer token is required for /metrics")
      }
      if (target.supports("stats")) {
        yield* target.stats.pipe(
          Effect.tap((s) =>
            Effect.all([
              Metric.set(hitRatioGauge, s.hitRatio),
              ...s.tiers.flatMap((t) =>
                (["hits", "misses", "entries", "bytes", "evictions"] as const).map((field) =>
                  Metric.set(Metric.tagged(tierGauges[field], "tier", t.name), t[field])
                )
              )
            ], { discard: true })
          ),
          Effect.ignore
        )
      }
      const text = yield* PrometheusMetrics.snapshotText
      return HttpServerResponse.text(text, { contentType: PrometheusMetrics.contentType })
    })

    const dashboard = Dashboard.make({ base: prefix, pollMillis: options.dashboardPollMillis })
    const page = HttpServerResponse.html(dashboard.html).pipe(
      HttpServerResponse.setHeader("content-security-policy", dashboard.contentSecurityPolicy)
    )
    const openApiDoc = OpenApi.fromApi(servedApi)

    const extraRoutes = HttpApiBuilder.Router.use((router) =>
      Effect.gen(function*() {
        yield* router.get("/metrics", metricsHandler)
        if (options.dashboard !== false) {
          yield* router.get("/", Effect.succeed(page))
          yield* router.get("/dashboard", Effect.succeed(page))
        }
        if (options.docs !== false) {
          yield* router.get("/openapi.json", HttpServerResponse.json(openApiDoc))
        }
      })
    )
    const docs = options.docs === false ? Layer.empty : HttpApiSwagger.layer({ path: "/docs" })

    const full = Layer.mergeAll(ApiLive, extraRoutes, docs).pipe(
      Layer.provideMerge(ApiLive),
      Layer.provideMerge(HttpApiBuilder.Router.Live),
      Layer.provideMerge(HttpApiBuilder.Middleware.layer)
    )
    const context = yield* Layer.build(full)
    const inner = yield* Effect.provide(HttpApiBuilder.httpApp, context)

    const app: HttpApp.Default<never, AppServices> = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const started = yield* Clock.currentTimeNanos
      const header = request.headers["x-request-id"]
      const requestId = header !== undefined && REQUEST_ID.test(header) ? header : randomUUID()
      const queryAt = request.url.indexOf("?")
      const fullPath = queryAt === -1 ? request.url : request.url.slice(0, queryAt)
      const path = prefix === "" ? fullPath : fullPath === prefix ? "/" : fullPath.slice(prefix.length)

      const respond: Effect.Effect<HttpServerResponse.HttpServerResponse, never, AppServices> =
        prefix !== "" && fullPath !== prefix && !fullPath.startsWith(prefix + "/")
          ? Effect.succeed(jsonError(404, "NotFound", `not under ${prefix}`))
          : hasDotSegment(path)
          ? Effect.succeed(jsonError(400, "MalformedRequest", "paths with dot segments are refused"))
          : Number(request.headers["content-length"] ?? 0) > maxBodyBytes
          ? Effect.succeed(tooLarge(maxBodyBytes))
          : inner.pipe(
            Effect.provideService(
              HttpServerRequest.HttpServerRequest,
              prefix === "" ? request : request.modify({ url: request.url.slice(prefix.length) || "/" })
            ),
            HttpIncomingMessage.withMaxBodySize(Option.some(maxBodyBytes)),
            Effect.catchAllCause((cause) => failureResponse(cause, maxBodyBytes)),
            Effect.locally(currentRequestId, Option.some(requestId)),
            Effect.locally(currentRole, undefined)
          )
      const response = yield* respond
      const elapsed = Number((yield* Clock.currentTimeNanos) - started) / 1e9
      const route = routeLabel(path)
      yield* Metric.increment(
        Metric.tagged(Metric.tagged(requestsTotal, "route", route), "status", String(response.status))
      )
      yield* Metric.update(Metric.tagged(requestDuration, "route", route), elapsed)
      return HttpServerResponse.setHeaders(response, {
        "x-request-id": requestId,
        // admin answers are live data: never stored by a shared cache (the caching proxy included)
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer"
      })
    })
    return app
  })

const tooLarge = (maxBodyBytes: number) =>
  jsonError(413, "MalformedRequest", `request body is larger than ${maxBodyBytes} bytes`)

/** Turns what escaped the API (bad JSON, oversized bodies, unknown routes, defects) into a response. */
const failureResponse = (cause: Cause.Cause<unknown>, maxBodyBytes: number) => {
  const squashed = Cause.squash(cause)
  if (HttpServerError.isServerError(squashed) && squashed._tag === "RequestError") {
    const text = String(squashed.cause instanceof Error ? squashed.cause.message : squashed.cause ?? "")
    if (text.includes("maxBytes")) return Effect.succeed(tooLarge(maxBodyBytes))
    return Effect.succeed(jsonError(400, "MalformedRequest", `request body is not valid JSON: ${text}`))
  }
  if (HttpServerError.isServerError(squashed) && squashed._tag === "RouteNotFound") {
    return Effect.succeed(jsonError(404, "NotFound", "no such admin route"))
  }
  return Effect.zipRight(
    Effect.logError("admin API request failed", cause),
    Effect.map(HttpServerError.causeResponse(cause), ([response]) => response)
  )
}

export const mountWith = (admin: HttpApp.Default<never, AppServices>, prefix: `/${string}`) => {
  const base = prefix.replace(/\/+$/, "")
  return <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R | AppServices> =>
    Effect.flatMap(HttpServerRequest.HttpServerRequest, (request): HttpApp.Default<E, R | AppServices> => {
      const queryAt = request.url.indexOf("?")
      const path = queryAt === -1 ? request.url : request.url.slice(0, queryAt)
      return path === base || path.startsWith(base + "/") ? admin : app
    })
}

export const mount = (
  api: Api,
  options: Options & { readonly prefix: `/${string}` }
) => Effect.map(makeApp(api, options), (admin) => mountWith(admin, options.prefix))
