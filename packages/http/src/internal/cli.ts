/**
 * The `cachekit` command: parses flags (which win over `CACHEKIT_*` environment variables), picks
 * the backend, starts the embedded demo origin when no upstream is given, runs the caching proxy
 * until SIGINT/SIGTERM, then drains.
 *
 * @internal
 */
import { DiskBackend, MemcachedBackend, RedisBackend } from "@cachekit/backends"
import type { CacheBackend, CacheError } from "@cachekit/core"
import { MemoryBackend } from "@cachekit/core"
import type { HttpClient } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Config, ConfigError, Console, Context, Effect, Either, Layer, Option } from "effect"
import * as Proxy from "../Proxy.js"
import type { BackendKind } from "./cliArgs.js"
import type { CliError } from "./cliArgs.js"
import { BACKENDS, configProvider } from "./cliArgs.js"
import * as DemoOrigin from "./demoOrigin.js"
import { durationConfig, millisConfig, portConfig } from "./proxy.js"
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
  upstreamTimeout: durationConfig("CACHEKIT_UPSTREAM_TIMEOUT", Proxy.defaults.upstreamTimeoutMillis),
  shutdownGrace: durationConfig("CACHEKIT_SHUTDOWN_GRACE", Proxy.defaults.shutdownGraceMillis),
  backend: Config.literal(...BACKENDS)("CACHEKIT_BACKEND").pipe(Config.withDefault<BackendKind>("memory")),
  memoryMaxBytes: sizeConfig("CACHEKIT_MEMORY_MAX_BYTES"),
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

const MIB = 1024 * 1024

/** The backend layer for `--backend`; each backend reads its own `CACHEKIT_<BACKEND>_*` settings too. */
const backendLayer = (
  settings: Settings
): Layer.Layer<CacheBackend.CacheBackendTag, CacheError.CacheError | ConfigError.ConfigError> => {
  switch (settings.backend) {
    case "disk":
      return DiskBackend.layerConfig()
    case "redis":
      return RedisBackend.layerConfig()
    case "memcached":
      return MemcachedBackend.layerConfig()
    case "memory":
    case "none":
      return MemoryBackend.layerConfig(
        Config.map(MemoryBackend.config, (options) => ({
          ...options,
          ...(Option.isSome(settings.memoryMaxBytes) ? { maxBytes: settings.memoryMaxBytes.value } : {})
        }))
      )
  }
}

/** The proxy's layer for these settings, over `HttpClient` (and a backend unless `none`). */
export const proxyLayer = (
  settings: Settings,
  upstream: string
): Layer.Layer<
  Proxy.ProxyTag,
  Proxy.InvalidUpstream | Proxy.ServeError | CacheError.CacheError | ConfigError.ConfigError,
  HttpClient.HttpClient
> => {
  const options: Proxy.Options = {
    upstream,
    port: settings.port,
    host: settings.host,
    upstreamTimeout: settings.upstreamTimeout,
    shutdownGrace: settings.shutdownGrace,
    stripResponseFields: settings.stripTargetedCacheControl ? settings.targetedCacheControl : undefined
  }
  if (settings.backend === "none") return Proxy.layer(options)
  return Proxy.layerCaching({
    ...options,
    cache: {
      name: settings.cacheStatusName,
      targetedCacheControl: settings.targetedCacheControl,
      ...(Option.isSome(settings.maxBodySize) ? { maxBodySize: settings.maxBodySize.value } : {}),
      ...(Option.isSome(settings.maxTtl) ? { maxTtl: settings.maxTtl.value } : {})
    }
  }).pipe(Layer.provide(backendLayer(settings)))
}

const describeBackend = (settings: Settings): string => {
  switch (settings.backend) {
    case "memory": {
      const bytes = Option.getOrElse(settings.memoryMaxBytes, () => 64 * MIB)
      return `memory (up to ${Math.round(bytes / MIB)} MiB)`
    }
    case "none":
      return "none (forwarding only, nothing is cached)"
    default:
      return settings.backend
  }
}

const banner = (proxy: Proxy.Proxy, settings: Settings, demo: DemoOrigin.DemoOrigin | undefined): string => {
  const lines = [
    `cachekit proxy listening on ${proxy.url}`,
    demo === undefined
      ? `  upstream: ${proxy.upstream.href}`
      : `  upstream: embedded demo origin at ${demo.url} (no --upstream given)`,
    `  backend:  ${describeBackend(settings)}`
  ]
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

/** Runs the proxy until interrupted. */
const runProxy = Effect.gen(function*() {
  const settings = yield* settingsConfig
  let demo: DemoOrigin.DemoOrigin | undefined
  let upstream: string
  if (Option.isSome(settings.upstream)) {
    upstream = settings.upstream.value
  } else {
    const context = yield* Layer.build(DemoOrigin.layer({ host: "127.0.0.1", port: 0 }))
    demo = Context.get(context, DemoOrigin.DemoOriginTag)
    upstream = demo.url
  }
  const context = yield* Layer.build(
    proxyLayer(settings, upstream).pipe(Layer.provide(NodeHttpClient.layerUndici))
  )
  const proxy = Context.get(context, Proxy.ProxyTag)
  yield* Console.log(banner(proxy, settings, demo))
  return yield* Effect.never
}).pipe(Effect.scoped)

/** A readable line for any failure the command can end with. */
export const describeFailure = (
  error: CliError | ConfigError.ConfigError | Proxy.InvalidUpstream | Proxy.ServeError | CacheError.CacheError
): string => {
  if (ConfigError.isConfigError(error)) return `bad setting: ${String(error)}`
  switch (error._tag) {
    case "CliError":
    case "InvalidUpstream":
      return error.message
    case "ServeError": {
      const cause = error.cause as { code?: string; message?: string } | undefined
      return cause?.code === "EADDRINUSE"
        ? `cannot listen: address already in use (${cause.message ?? ""}); pick another --port`
        : `cannot listen: ${cause?.message ?? String(error.cause)}`
    }
    default:
      return `backend failed: ${error.message}`
  }
}

/**
 * `cachekit proxy` with its parsed flags: resolves to the exit code (0 after a clean stop, 1 on a
 * runtime failure, 2 on a bad setting). Runs until interrupted (SIGINT/SIGTERM via `NodeRuntime`).
 */
export const runProxyCommand = (flags: ReadonlyMap<string, string>): Effect.Effect<number> =>
  runProxy.pipe(
    Effect.withConfigProvider(configProvider(flags)),
    Effect.as(0),
    Effect.catchAll((error) =>
      Effect.as(
        Console.error(`cachekit: ${describeFailure(error)}`),
        ConfigError.isConfigError(error) || error._tag === "InvalidUpstream" ? 2 : 1
      )
    )
  )
