/**
 * The `cachekit` command: parses flags (which win over `CACHEKIT_*` environment variables), picks
 * the backend, starts the embedded demo origin when no upstream is given, runs the caching proxy
 * until SIGINT/SIGTERM, then drains.
 *
 * @internal
 */
import { AdminApi, AdminAuth, AdminServer, AdminTarget, OperationLog } from "@cachekit/admin"
import type { CacheError, InvalidationBus } from "@cachekit/core"
import { CacheBackend } from "@cachekit/core"
import type { HttpApp, HttpClient, HttpServerError } from "@effect/platform"
import { HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import type { Scope } from "effect"
import { Config, ConfigError, Console, Context, Data, Effect, Either, Layer, Option } from "effect"
import type * as HttpClientCache from "../HttpClientCache.js"
import * as Proxy from "../Proxy.js"
import type { BackendKind, BusKind, CliError } from "./cliArgs.js"
import { BACKENDS, BUSES, configProvider } from "./cliArgs.js"
import * as DemoOrigin from "./demoOrigin.js"
import { durationConfig, millisConfig, portConfig, targetPath } from "./proxy.js"
import * as ProxyBackends from "./proxyBackends.js"
import * as ProxyCluster from "./proxyCluster.js"
import { parseSize } from "./units.js"

const sizeConfig = (name: string): Config.Config<Option.Option<number>> =>
  Config.option(
    Config.string(name).pipe(Config.mapOrFail((text) => {
      const bytes = parseSize(text)
      return bytes === undefined || bytes <= 0
        ? Either.left(ConfigError.InvalidData([], `${name}: "${text}" is not a size (examples: 1048576, 512k, 64MiB)`))
        : Either.right(bytes)
    }))
  )

/** Everything `cachekit proxy` reads, from flags then environment. */
export const settingsConfig = Config.all({
  upstream: Config.option(Config.string("CACHEKIT_UPSTREAM")),
  port: portConfig("CACHEKIT_PORT", Proxy.defaults.port),
  host: Config.string("CACHEKIT_HOST").pipe(Config.withDefault(Proxy.defaults.host)),
  instances: ProxyCluster.instancesConfig,
  upstreamTimeout: durationConfig("CACHEKIT_UPSTREAM_TIMEOUT", Proxy.defaults.upstreamTimeoutMillis),
  shutdownGrace: durationConfig("CACHEKIT_SHUTDOWN_GRACE", Proxy.defaults.shutdownGraceMillis),
  backend: Config.literal(...BACKENDS)("CACHEKIT_BACKEND").pipe(
    Config.withDefault<BackendKind>(ProxyBackends.defaults.backend)
  ),
  memoryMaxBytes: sizeConfig("CACHEKIT_MEMORY_MAX_BYTES"),
  l1MaxEntrySize: sizeConfig("CACHEKIT_L1_MAX_ENTRY_SIZE"),
  diskDir: Config.option(Config.string("CACHEKIT_DISK_DIR")),
  bus: Config.literal(...BUSES)("CACHEKIT_BUS").pipe(Config.withDefault<BusKind>("auto")),
  admin: Config.boolean("CACHEKIT_ADMIN").pipe(Config.withDefault(false)),
  adminPrefix: Config.string("CACHEKIT_ADMIN_PREFIX").pipe(
    Config.withDefault("/_cachekit"),
    Config.validate({
      message: "CACHEKIT_ADMIN_PREFIX must be a path such as /_cachekit",
      validation: (prefix): prefix is `/${string}` => /^\/[A-Za-z0-9._~/-]*[A-Za-z0-9._~-]$/.test(prefix)
    })
  ),
  adminPort: Config.option(
    Config.integer("CACHEKIT_ADMIN_PORT").pipe(Config.validate({
      message: "CACHEKIT_ADMIN_PORT must be a port number from 0 to 65535",
      validation: (n) => n >= 0 && n <= 65535
    }))
  ),
  maxBodySize: sizeConfig("CACHEKIT_MAX_BODY_SIZE"),
  maxTtl: Config.option(millisConfig("CACHEKIT_MAX_TTL")),
  cacheStatusName: Config.string("CACHEKIT_CACHE_STATUS_NAME").pipe(Config.withDefault("cachekit")),
  targetedCacheControl: Config.string("CACHEKIT_TARGETED_CACHE_CONTROL").pipe(
    Config.withDefault("cdn-cache-control"),
    Config.map((list) => list.split(",").map((name) => name.trim().toLowerCase()).filter((name) => name !== ""))
  ),
  stripTargetedCacheControl: Config.boolean("CACHEKIT_STRIP_TARGETED_CACHE_CONTROL").pipe(Config.withDefault(false))
})
export type Settings = Config.Config.Success<typeof settingsConfig>

// ---------------------------------------------------------------------------------------------
// Admin API
// ---------------------------------------------------------------------------------------------

/** `--admin` without a safe way in: no token, a bad token, or anonymous mode off loopback. */
export class AdminNotSecured extends Data.TaggedError("AdminNotSecured")<{ readonly message: string }> {}

const isLoopbackHost = (host: string) => AdminAuth.isLoopback(host) || host === "localhost"

/** The authenticator from `CACHEKIT_ADMIN_TOKEN` & co., or why the admin API cannot start. */
const adminAuth = (host: string): Effect.Effect<AdminAuth.AdminAuth, AdminNotSecured | ConfigError.ConfigError> =>
  Effect.flatMap(AdminAuth.config, (options) =>
    Either.match(AdminAuth.make(options), {
      onLeft: (error) =>
        Effect.fail(
          new AdminNotSecured({
            message:
              `the admin API (--admin) cannot start: ${
                error._op === "InvalidData" ? error.message : String(error)
              }. Set CACHEKIT_ADMIN_TOKEN to a secret of 16+ characters (CACHEKIT_ADMIN_READ_TOKEN for a ` +
              "read-only one), or CACHEKIT_ADMIN_ALLOW_ANONYMOUS=true for loopback-only development"
          })
        ),
      onRight: (auth) =>
        auth.anonymous && !isLoopbackHost(host)
          ? Effect.fail(
            new AdminNotSecured({
              message: `anonymous admin access (CACHEKIT_ADMIN_ALLOW_ANONYMOUS) is only allowed on loopback, ` +
                `but the admin API would listen on ${host}; set CACHEKIT_ADMIN_TOKEN instead`
            })
          )
          : Effect.succeed(auth)
    }))

/** Sends requests under `prefix` to `admin` and PURGE requests to `purge`, everything else to the proxy. */
const mountAt = (prefix: string, admin: HttpApp.Default, purge: HttpApp.Default | undefined) => {
  const base = prefix.replace(/\/+$/, "")
  return (app: HttpApp.Default): HttpApp.Default =>
    Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
      if (purge !== undefined && isPurge(request)) return purge
      const url = request.url
      if (url.charCodeAt(1) !== base.charCodeAt(1)) return app // most proxied paths leave here
      const queryAt = url.indexOf("?")
      const path = queryAt === -1 ? url : url.slice(0, queryAt)
      return path === base || path.startsWith(base + "/") ? admin : app
    })
}

const NO_STORE = { "cache-control": "no-store" }

/** PURGE is no `HttpMethod` of the platform's, but Node parses it and the request carries it as is. */
const isPurge = (request: HttpServerRequest.HttpServerRequest): boolean => {
  const method: string = request.method
  return method === "PURGE"
}

/**
 * `PURGE <path>` on the proxy port (with `--admin`): removes the cached GET and HEAD responses of
 * that path from every tier (and, with a bus, every instance's L1). Needs the admin token, like
 * `/invalidate`; the answer is `{ purged, key }`. Keys are built the way the cache builds them: the
 * method, a space, the upstream URL the proxy would fetch.
 */
const purgeApp = (
  upstream: string,
  auth: AdminAuth.AdminAuth,
  target: AdminTarget.AdminTarget,
  log: OperationLog.OperationLog
): HttpApp.Default => {
  const parsed = new URL(upstream)
  const upstreamBase = parsed.origin + parsed.pathname.replace(/\/+$/, "")
  return Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const started = performance.now()
    const role = auth.authenticate(request.headers["authorization"], Option.getOrUndefined(request.remoteAddress))
    if (role !== "admin") {
      const status = role === undefined ? 401 : 403
      yield* log.log({
        op: "proxy.purge",
        outcome: role === undefined ? "unauthorized" : "forbidden",
        durationMillis: performance.now() - started,
        mutating: true,
        status
      })
      return HttpServerResponse.text(
        role === undefined
          ? "PURGE needs the admin token (Authorization: Bearer ...)\n"
          : "PURGE needs the admin role\n",
        { status, headers: role === undefined ? { ...NO_STORE, "www-authenticate": "Bearer" } : NO_STORE }
      )
    }
    const url = new URL(upstreamBase + targetPath(request.url)).href
    const keys = [`GET ${url}`, `HEAD ${url}`]
    const purged = yield* Effect.either(target.invalidateKeys(keys))
    yield* log.log({
      op: "proxy.purge",
      outcome: purged._tag === "Right" ? "ok" : "error",
      durationMillis: performance.now() - started,
      mutating: true,
      keys,
      role,
      ...(purged._tag === "Right" ? { count: purged.right } : { detail: purged.left.message })
    })
    return purged._tag === "Right"
      ? HttpServerResponse.unsafeJson({ purged: purged.right, key: keys[0] }, { headers: NO_STORE })
      : HttpServerResponse.text(`PURGE failed: ${purged.left.message}\n`, { status: 503, headers: NO_STORE })
  })
}

// ---------------------------------------------------------------------------------------------
// Starting
// ---------------------------------------------------------------------------------------------

/** A started proxy with what it caches in and where its admin API answers. */
export interface Running {
  readonly proxy: Proxy.Proxy
  readonly cache: ProxyBackends.ProxyCache
  /** The admin API's base URL (with its prefix), when enabled. */
  readonly adminUrl: string | undefined
}

export type StartError =
  | Proxy.InvalidUpstream
  | Proxy.ServeError
  | HttpServerError.ServeError
  | CacheError.CacheError
  | ConfigError.ConfigError
  | InvalidationBus.InvalidationBusError
  | AdminNotSecured

/**
 * Starts the proxy for `settings` in front of `upstream` (`demo`: the embedded demo origin, so the
 * disk tier goes to a temp dir), with the admin API when enabled. Reads admin tokens, backend and
 * operation-log settings from the `ConfigProvider`. Everything stops when the scope closes.
 */
export const start = (
  settings: Settings,
  upstream: string,
  demo: boolean,
  /** A worker of `--instances N`: every response carries `Cachekit-Instance: <worker id>`. */
  worker?: ProxyCluster.WorkerIdentity
): Effect.Effect<Running, StartError, Scope.Scope | HttpClient.HttpClient> =>
  Effect.gen(function*() {
    // Checked before anything listens: a proxy must not come up with an unusable admin API.
    const adminHost = Option.isSome(settings.adminPort)
      ? yield* Config.string("CACHEKIT_ADMIN_HOST").pipe(Config.withDefault("127.0.0.1"))
      : settings.host
    const auth = settings.admin ? yield* adminAuth(adminHost) : undefined
    const cache = yield* ProxyBackends.make({
      backend: settings.backend,
      memoryMaxBytes: settings.memoryMaxBytes,
      l1MaxEntrySize: settings.l1MaxEntrySize,
      diskDir: settings.diskDir,
      bus: settings.bus,
      demo
    })
    const adminServices = auth === undefined ? undefined : Context.make(AdminAuth.AdminAuthTag, auth).pipe(
      Context.add(AdminTarget.AdminTargetTag, cache.adminTarget),
      Context.add(
        OperationLog.OperationLogTag,
        yield* OperationLog.layerConfig.pipe(
          Layer.build,
          Effect.map(Context.get(OperationLog.OperationLogTag))
        )
      )
    )
    let mount: ((app: HttpApp.Default) => HttpApp.Default) | undefined
    let adminUrl: ((proxy: Proxy.Proxy) => string) | undefined
    if (auth !== undefined && adminServices !== undefined) {
      const prefix = settings.adminPrefix
      const purge = settings.backend === "none"
        ? undefined
        : purgeApp(upstream, auth, cache.adminTarget, Context.get(adminServices, OperationLog.OperationLogTag))
      if (Option.isSome(settings.adminPort)) {
        const server = yield* Layer.build(
          AdminServer.layer({ port: settings.adminPort.value, host: adminHost, prefix }).pipe(
            Layer.provide(Layer.succeedContext(adminServices))
          )
        )
        const address = Context.get(server, HttpServer.HttpServer).address
        const port = address._tag === "TcpAddress" ? address.port : 0
        const host = adminHost.includes(":") ? `[${adminHost}]` : adminHost
        adminUrl = () => `http://${host}:${port}${prefix}`
        if (purge !== undefined) {
          mount = (app) =>
            Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => isPurge(request) ? purge : app)
        }
      } else {
        // The proxy's server provides no platform services; the admin app needs them.
        const platform = yield* Layer.build(NodeHttpServer.layerContext)
        const admin = yield* AdminApi.makeApp({ prefix }).pipe(Effect.provide(adminServices))
        mount = mountAt(prefix, Effect.provide(admin, platform), purge)
        adminUrl = (proxy) => `${proxy.url}${prefix}`
      }
    }
    const context = yield* Layer.build(
      proxyLayer(settings, upstream, mount, worker, cache.singleFlight).pipe(
        Layer.provide(Layer.succeed(CacheBackend.CacheBackendTag, cache.backend))
      )
    )
    const proxy = Context.get(context, Proxy.ProxyTag)
    return { proxy, cache, adminUrl: adminUrl?.(proxy) }
  })

/** The proxy's layer for these settings over `HttpClient` and (unless `none`) a `CacheBackendTag`. */
const proxyLayer = (
  settings: Settings,
  upstream: string,
  mount: ((app: HttpApp.Default) => HttpApp.Default) | undefined,
  worker: ProxyCluster.WorkerIdentity | undefined,
  /** The cross-process gate of misses (`--single-flight`), when on. */
  singleFlight: HttpClientCache.DistributedSingleFlight | undefined
): Layer.Layer<
  Proxy.ProxyTag,
  Proxy.InvalidUpstream | Proxy.ServeError,
  HttpClient.HttpClient | CacheBackend.CacheBackendTag
> => {
  const options: Proxy.Options = {
    upstream,
    port: settings.port,
    host: settings.host,
    upstreamTimeout: settings.upstreamTimeout,
    shutdownGrace: settings.shutdownGrace,
    stripResponseFields: settings.stripTargetedCacheControl ? settings.targetedCacheControl : undefined,
    mount,
    responseHeaders: worker === undefined ? undefined : { "cachekit-instance": String(worker.id) }
  }
  if (settings.backend === "none") return Proxy.layer(options)
  return Proxy.layerCaching({
    ...options,
    cache: {
      name: settings.cacheStatusName,
      targetedCacheControl: settings.targetedCacheControl,
      ...(Option.isSome(settings.maxBodySize) ? { maxBodySize: settings.maxBodySize.value } : {}),
      ...(Option.isSome(settings.maxTtl) ? { maxTtl: settings.maxTtl.value } : {}),
      ...(singleFlight === undefined ? {} : { distributedSingleFlight: singleFlight })
    }
  })
}

const banner = (
  running: Running,
  settings: Settings,
  demo: DemoOrigin.DemoOrigin | undefined,
  worker: ProxyCluster.WorkerIdentity | undefined
): string => {
  const { proxy } = running
  const lines = [
    `cachekit proxy listening on ${proxy.url}`,
    ...(worker === undefined ? [] : [
      `  instance: worker ${worker.id} in slot ${worker.slot} of ${
        ProxyCluster.resolveInstances(settings.instances)
      }, ` +
      `pid ${worker.pid} (responses carry Cachekit-Instance: ${worker.id})`
    ]),
    demo === undefined
      ? `  upstream: ${proxy.upstream.href}`
      : `  upstream: embedded demo origin at ${demo.url} (no --upstream given)`,
    `  backend:  ${
      settings.backend === "none" ? "none (forwarding only, nothing is cached)" : running.cache.description
    }`
  ]
  if (running.adminUrl !== undefined) lines.push(`cachekit admin listening on ${running.adminUrl}`)
  if (demo !== undefined) {
    lines.push(
      "",
      "Try (run it twice: the second answer comes from the cache, see Cache-Status and Age):",
      `  curl -si ${proxy.url}/cacheable`,
      "",
      "Demo routes:",
      ...DemoOrigin.routes.map((route) => `  ${route.path.padEnd(16)} ${route.shows}`)
    )
  }
  lines.push("", "Ctrl-C stops it (in-flight requests finish first).")
  return lines.join("\n")
}

/** Runs the proxy (one process, or one worker of `--instances N`) until interrupted. */
const runProxy = (settings: Settings) =>
  Effect.gen(function*() {
    const worker = ProxyCluster.currentWorker()
    let demo: DemoOrigin.DemoOrigin | undefined
    let upstream: string
    if (Option.isSome(settings.upstream)) {
      upstream = settings.upstream.value
    } else {
      const context = yield* Layer.build(DemoOrigin.layer({ host: "127.0.0.1", port: 0 }))
      demo = Context.get(context, DemoOrigin.DemoOriginTag)
      upstream = demo.url
    }
    const client = yield* Layer.build(NodeHttpClient.layerUndici)
    const running = yield* start(settings, upstream, demo !== undefined, worker).pipe(Effect.provide(client))
    yield* Console.log(banner(running, settings, demo, worker))
    return yield* Effect.never
  }).pipe(Effect.scoped)

/** One process, or (`--instances N` in the process started from the command line) the cluster's primary. */
const runCommand = Effect.gen(function*() {
  const settings = yield* settingsConfig
  const instances = ProxyCluster.resolveInstances(settings.instances)
  if (instances > 1 && !ProxyCluster.isWorker()) {
    yield* ProxyCluster.checkShareable(instances, settings.backend, settings.bus)
    return yield* ProxyCluster.runPrimary({ instances, shutdownGraceMillis: settings.shutdownGrace })
  }
  return yield* runProxy(settings)
})

/** A readable line for any failure the command can end with. */
export const describeFailure = (
  error: CliError | StartError | ProxyCluster.InstancesNotShareable | ProxyCluster.WorkerFailed
): string => {
  if (ConfigError.isConfigError(error)) return `bad setting: ${String(error)}`
  switch (error._tag) {
    case "CliError":
    case "InvalidUpstream":
    case "AdminNotSecured":
    case "InstancesNotShareable":
    case "WorkerFailed":
      return error.message
    case "ServeError": {
      const cause = error.cause as { code?: string; message?: string } | undefined
      return cause?.code === "EADDRINUSE"
        ? `cannot listen: address already in use (${cause.message ?? ""}); pick another --port`
        : `cannot listen: ${cause?.message ?? String(error.cause)}`
    }
    case "InvalidationBusError":
      return `invalidation bus failed: ${error.message}`
    default:
      return `backend failed: ${error.message}`
  }
}

/**
 * `cachekit proxy` with its parsed flags: resolves to the exit code (0 after a clean stop, 1 on a
 * runtime failure, 2 on a bad setting). Runs until interrupted (SIGINT/SIGTERM via `NodeRuntime`).
 */
export const runProxyCommand = (flags: ReadonlyMap<string, string>): Effect.Effect<number> =>
  runCommand.pipe(
    Effect.withConfigProvider(configProvider(flags)),
    Effect.as(0),
    Effect.catchAll((error) =>
      Effect.as(
        Console.error(`cachekit: ${describeFailure(error)}`),
        ConfigError.isConfigError(error) || error._tag === "InvalidUpstream" || error._tag === "AdminNotSecured" ||
          error._tag === "InstancesNotShareable"
          ? 2
          : error._tag === "WorkerFailed"
          ? error.exitCode
          : 1
      )
    )
  )
