/**
 * The admin REST API as an `@effect/platform` `HttpApi`: Schema-typed endpoints, two roles (read,
 * admin), an OpenAPI document, a Swagger page, Prometheus `/metrics` and a live dashboard.
 *
 * Serve it on its own port with `AdminServer.layer`, or mount it under a prefix on any server with
 * `AdminApi.makeApp` / `AdminApi.mount`. Scripts and tests talk to it with `AdminApi.client`.
 *
 * @example
 * ```ts
 * const client = yield* AdminApi.client({ baseUrl: "http://127.0.0.1:9464/admin", token })
 * const stats = yield* client.read.stats()
 * yield* client.admin.invalidate({ payload: { tags: ["user:42"] } })
 * ```
 *
 * @since 0.1.0
 */
import {
  HttpApi,
  HttpApiClient,
  HttpApiEndpoint,
  HttpApiGroup,
  HttpApiMiddleware,
  HttpApiSchema,
  HttpApiSecurity,
  HttpClient,
  HttpClientRequest,
  HttpRouter
} from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { Context, Effect, Layer, Redacted, Schema } from "effect"
import type { Scope } from "effect"
import type { AdminAuthTag } from "./AdminAuth.js"
import type { AdminTargetTag } from "./AdminTarget.js"
import * as internal from "./internal/adminApp.js"
import type { OperationLogTag } from "./OperationLog.js"

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/** Longest glob pattern accepted by `/keys` and `/invalidate`. */
export const MAX_PATTERN_LENGTH = 256
/** Largest page of `/keys`, and largest `limit` of `/hot-keys`. */
export const MAX_PAGE = 1000
/** Most keys or tags one `/invalidate` request may name. */
export const MAX_ITEMS = 1000
/** Longest key. */
export const MAX_KEY_LENGTH = 4096

const strict = { parseOptions: { onExcessProperty: "error" } } as const

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

export class Unauthorized extends Schema.TaggedError<Unauthorized>()(
  "Unauthorized",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 401 })
) {}

export class Forbidden extends Schema.TaggedError<Forbidden>()(
  "Forbidden",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 403 })
) {}

export class EntryNotFound extends Schema.TaggedError<EntryNotFound>()(
  "EntryNotFound",
  { key: Schema.String, message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

/** A request that would remove (nearly) everything without `confirm: true`. */
export class ConfirmationRequired extends Schema.TaggedError<ConfirmationRequired>()(
  "ConfirmationRequired",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 400 })
) {}

/** A body that is not JSON, or a path with dot segments. */
export class MalformedRequest extends Schema.TaggedError<MalformedRequest>()(
  "MalformedRequest",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 400 })
) {}

/** The cache lacks the capability (no tag index, no key scan...). */
export class NotSupported extends Schema.TaggedError<NotSupported>()(
  "NotSupported",
  { capability: Schema.String, message: Schema.String },
  HttpApiSchema.annotations({ status: 501 })
) {}

/** The cache failed while serving the request. */
export class Unavailable extends Schema.TaggedError<Unavailable>()(
  "Unavailable",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 503 })
) {}

// ---------------------------------------------------------------------------------------------
// Auth middleware
// ---------------------------------------------------------------------------------------------

/** Any valid token (read or admin role). */
export class ReadAccess extends HttpApiMiddleware.Tag<ReadAccess>()("@cachekit/admin/ReadAccess", {
  failure: Unauthorized,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

/** The admin token only: 401 without a valid token, 403 with the read token. */
export class AdminAccess extends HttpApiMiddleware.Tag<AdminAccess>()("@cachekit/admin/AdminAccess", {
  failure: Schema.Union(Unauthorized, Forbidden),
  security: { bearer: HttpApiSecurity.bearer }
}) {}

// ---------------------------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------------------------

const Count = Schema.NonNegative.pipe(Schema.finite())

export const TierHealth = Schema.Struct({
  name: Schema.String,
  status: Schema.Literal("up", "degraded", "down"),
  latencyMillis: Count,
  detail: Schema.optional(Schema.String)
})

export const HealthResponse = Schema.Struct({
  status: Schema.Literal("up", "degraded", "down"),
  tiers: Schema.Array(TierHealth)
})

export const TierStats = Schema.Struct({
  name: Schema.String,
  hits: Count,
  misses: Count,
  entries: Count,
  bytes: Count,
  evictions: Count
})

export const StatsResponse = Schema.Struct({
  hits: Count,
  misses: Count,
  hitRatio: Schema.Number.pipe(Schema.between(0, 1)),
  staleServed: Schema.optional(Count),
  evictions: Count,
  entries: Count,
  bytes: Count,
  tiers: Schema.Array(TierStats)
})

const PageSize = Schema.NumberFromString.pipe(Schema.int(), Schema.between(1, MAX_PAGE))
const Pattern = Schema.String.pipe(
  Schema.minLength(1),
  Schema.maxLength(MAX_PATTERN_LENGTH, {
    message: () => `pattern is longer than ${MAX_PATTERN_LENGTH} characters`
  })
)
const Key = Schema.String.pipe(Schema.minLength(1), Schema.maxLength(MAX_KEY_LENGTH))
const Tag = Schema.String.pipe(Schema.minLength(1), Schema.maxLength(MAX_KEY_LENGTH))

export const HotKeysParams = Schema.Struct({ limit: Schema.optional(PageSize) }).annotations(strict)
export const HotKeysResponse = Schema.Struct({
  keys: Schema.Array(Schema.Struct({ key: Schema.String, hits: Count }))
})

export const TagsResponse = Schema.Struct({ tags: Schema.Array(Schema.String) })

export const KeysParams = Schema.Struct({
  pattern: Schema.optional(Pattern),
  cursor: Schema.optional(Schema.String.pipe(Schema.maxLength(256))),
  count: Schema.optional(PageSize)
}).annotations(strict)
export const KeysResponse = Schema.Struct({
  keys: Schema.Array(Schema.String),
  /** `null` when the scan is complete. */
  cursor: Schema.NullOr(Schema.String)
})

export const EntryParams = Schema.Struct({
  body: Schema.optional(Schema.BooleanFromString)
}).annotations(strict)
export const EntryResponse = Schema.Struct({
  key: Schema.String,
  tier: Schema.String,
  size: Count,
  createdAt: Schema.Number,
  /** `null` for an entry that never expires. */
  ttlLeftMillis: Schema.NullOr(Count),
  staleLeftMillis: Schema.NullOr(Count),
  tags: Schema.Array(Schema.String),
  meta: Schema.Record({ key: Schema.String, value: Schema.String }),
  /** Base64 of the stored bytes, only with `?body=true`. */
  bodyBase64: Schema.optional(Schema.String)
})

export const InvalidateRequest = Schema.Struct({
  keys: Schema.optional(Schema.Array(Key).pipe(Schema.maxItems(MAX_ITEMS))),
  tags: Schema.optional(Schema.Array(Tag).pipe(Schema.maxItems(MAX_ITEMS))),
  pattern: Schema.optional(Pattern),
  /** Required for a pattern that matches every key (`*`, `?*`, `[a-z]*`...). */
  confirm: Schema.optional(Schema.Boolean)
}).annotations(strict).pipe(
  Schema.filter((r) =>
    (r.keys?.length ?? 0) + (r.tags?.length ?? 0) > 0 || r.pattern !== undefined ||
    "name at least one of keys, tags or pattern"
  )
)
export const InvalidateResponse = Schema.Struct({
  removed: Count,
  byKeys: Count,
  byTags: Count,
  byPattern: Count
})

export const ClearRequest = Schema.Struct({ confirm: Schema.Literal(true) }).annotations(strict)
export const ClearResponse = Schema.Struct({ cleared: Schema.Literal(true) })

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

export class ReadGroup extends HttpApiGroup.make("read")
  .add(HttpApiEndpoint.get("health", "/health").addSuccess(HealthResponse))
  .add(HttpApiEndpoint.get("stats", "/stats").addSuccess(StatsResponse))
  .add(
    HttpApiEndpoint.get("hotKeys", "/hot-keys").setUrlParams(HotKeysParams).addSuccess(HotKeysResponse)
  )
  .add(HttpApiEndpoint.get("tags", "/tags").addSuccess(TagsResponse))
  .add(HttpApiEndpoint.get("keys", "/keys").setUrlParams(KeysParams).addSuccess(KeysResponse))
  .add(
    HttpApiEndpoint.get("entry", "/entries/:key")
      .setPath(Schema.Struct({ key: Key }))
      .setUrlParams(EntryParams)
      .addSuccess(EntryResponse)
      .addError(EntryNotFound)
  )
  .middleware(ReadAccess)
{}

export class AdminGroup extends HttpApiGroup.make("admin")
  .add(
    HttpApiEndpoint.post("invalidate", "/invalidate")
      .setPayload(InvalidateRequest)
      .addSuccess(InvalidateResponse)
      .addError(ConfirmationRequired)
  )
  .add(HttpApiEndpoint.post("clear", "/clear").setPayload(ClearRequest).addSuccess(ClearResponse))
  .middleware(AdminAccess)
{}

/** The admin API. Paths are relative to the mount prefix. */
export class Api extends HttpApi.make("cachekit-admin")
  .add(ReadGroup)
  .add(AdminGroup)
  .addError(MalformedRequest)
  .addError(NotSupported)
  .addError(Unavailable)
{}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

export interface Options {
  /** Mount prefix, e.g. `"/admin"` (default: none, the API answers at the root). */
  readonly prefix?: `/${string}` | undefined
  /** Serve `/metrics` without a token (default false: the read token is required). */
  readonly publicMetrics?: boolean | undefined
  /** Serve the dashboard page at `/` and `/dashboard` (default true). */
  readonly dashboard?: boolean | undefined
  /** Serve `/openapi.json` and the Swagger page at `/docs` (default true). */
  readonly docs?: boolean | undefined
  /** How often the dashboard polls, in milliseconds (default 1000). */
  readonly dashboardPollMillis?: number | undefined
  /** A health probe slower than this reports the target `down` (default 5000). */
  readonly healthTimeoutMillis?: number | undefined
  /** Largest request body in bytes (default 1 MiB). */
  readonly maxBodyBytes?: number | undefined
}

/**
 * The admin API as an `HttpApp` answering paths under `prefix` (others get 404). Needs the target,
 * the authenticator and the operation log; the app lives as long as the scope.
 */
export const makeApp = (
  options: Options = {}
): Effect.Effect<
  HttpApp.Default<never, internal.AppServices>,
  never,
  AdminTargetTag | AdminAuthTag | OperationLogTag | Scope.Scope
> => internal.makeApp(Api, options)

/**
 * A middleware sending requests under `prefix` to the admin app and everything else to the wrapped
 * app: how a server (the caching proxy) mounts the admin API beside its own routes.
 */
export const mount = (
  options: Options & { readonly prefix: `/${string}` }
): Effect.Effect<
  <E, R>(app: HttpApp.Default<E, R>) => HttpApp.Default<E, R | internal.AppServices>,
  never,
  AdminTargetTag | AdminAuthTag | OperationLogTag | Scope.Scope
> => internal.mount(Api, options)

/** The admin app, built once, for a server that mounts it (e.g. the caching proxy with its admin flag). */
export interface AdminApp {
  /** The mount prefix, e.g. `"/admin"`. */
  readonly prefix: `/${string}`
  /** Answers paths under `prefix`. */
  readonly app: HttpApp.Default<never, internal.AppServices>
  /** Sends paths under `prefix` to the admin app and everything else to `app`. */
  readonly mount: <E, R>(app: HttpApp.Default<E, R>) => HttpApp.Default<E, R | internal.AppServices>
}

export class AdminAppTag extends Context.Tag("@cachekit/admin/AdminApp")<AdminAppTag, AdminApp>() {}

/** Builds the admin app under `prefix` for the lifetime of the layer. */
export const layer = (
  options: Options & { readonly prefix: `/${string}` }
): Layer.Layer<AdminAppTag, never, AdminTargetTag | AdminAuthTag | OperationLogTag> =>
  Layer.scoped(
    AdminAppTag,
    Effect.map(makeApp(options), (app) => ({
      prefix: options.prefix,
      app,
      mount: internal.mountWith(app, options.prefix)
    }))
  )

/** Mounts the admin API under `prefix` on the platform's default router (`HttpRouter.Default`). */
export const layerDefaultRouter = (
  options: Options & { readonly prefix: `/${string}` }
): Layer.Layer<never, never, AdminTargetTag | AdminAuthTag | OperationLogTag | HttpRouter.Default> =>
  Layer.scopedDiscard(
    Effect.gen(function*() {
      const router = yield* HttpRouter.Default
      const app = yield* makeApp(options)
      // the app checks the prefix itself, so it is given the full path
      yield* router.mountApp(options.prefix, app, { includePrefix: true })
    })
  )

/** A typed client for scripts and tests; `token` is sent as `Authorization: Bearer <token>`. */
export const client = (options: {
  readonly baseUrl: string
  readonly token?: Redacted.Redacted<string> | string | undefined
}) =>
  HttpApiClient.make(Api, {
    baseUrl: options.baseUrl,
    ...(options.token === undefined ? {} : {
      transformClient: HttpClient.mapRequest(
        HttpClientRequest.bearerToken(
          typeof options.token === "string" ? options.token : Redacted.value(options.token)
        )
      )
    })
  })
