/**
 * The admin API on its own port (Node HTTP server), bound to loopback unless told otherwise.
 *
 * @example
 * ```ts
 * const AdminLive = AdminServer.layer({ port: 9464 }).pipe(
 *   Layer.provide(AdminTarget.layerFromBackend()),
 *   Layer.provide(AdminAuth.layerConfig),       // CACHEKIT_ADMIN_TOKEN, CACHEKIT_ADMIN_READ_TOKEN
 *   Layer.provide(OperationLog.layerConfig)
 * )
 * ```
 *
 * @since 0.1.0
 */
import { HttpServer } from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Config, ConfigError, Effect, Layer } from "effect"
import { createServer } from "node:http"
import * as AdminApi from "./AdminApi.js"
import { AdminAuthTag, isLoopback } from "./AdminAuth.js"
import type { AdminTargetTag } from "./AdminTarget.js"
import type { OperationLogTag } from "./OperationLog.js"

export interface Options extends AdminApi.Options {
  /** Port to listen on; 0 picks a free one (read it from `HttpServer.address`). */
  readonly port: number
  /** Address to bind (default `127.0.0.1`). Anonymous mode refuses anything but loopback. */
  readonly host?: string | undefined
}

/** Serves the admin API; the server is closed when the layer's scope closes. Provides `HttpServer`. */
export const layer = (
  options: Options
): Layer.Layer<
  HttpServer.HttpServer,
  HttpServerError.ServeError | ConfigError.ConfigError,
  AdminTargetTag | AdminAuthTag | OperationLogTag
> => {
  const host = options.host ?? "127.0.0.1"
  const serve = Layer.unwrapScoped(
    Effect.gen(function*() {
      const auth = yield* AdminAuthTag
      if (auth.anonymous && !isLoopback(host)) {
        return yield* Effect.fail(
          ConfigError.InvalidData(
            [],
            `anonymous admin access is only allowed on loopback, but the admin server would bind ${host}`
          )
        )
      }
      const app = yield* AdminApi.makeApp(options)
      return HttpServer.serve(app)
    })
  )
  return serve.pipe(Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: options.port, host })))
}

/** `layer` with `CACHEKIT_ADMIN_PORT` (default 9464), `CACHEKIT_ADMIN_HOST`, `CACHEKIT_ADMIN_PUBLIC_METRICS`. */
export const layerConfig = (
  options: AdminApi.Options = {}
): Layer.Layer<
  HttpServer.HttpServer,
  HttpServerError.ServeError | ConfigError.ConfigError,
  AdminTargetTag | AdminAuthTag | OperationLogTag
> =>
  Layer.unwrapEffect(
    Effect.map(
      Config.all({
        port: Config.port("CACHEKIT_ADMIN_PORT").pipe(Config.withDefault(9464)),
        host: Config.string("CACHEKIT_ADMIN_HOST").pipe(Config.withDefault("127.0.0.1")),
        publicMetrics: Config.boolean("CACHEKIT_ADMIN_PUBLIC_METRICS").pipe(Config.withDefault(false))
      }),
      (c) => layer({ ...options, ...c })
    )
  )
