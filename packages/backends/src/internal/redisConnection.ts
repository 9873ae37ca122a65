/**
 * The connection part shared by RedisStreams, RedisLock and RedisSingleFlight: options, a scoped
 * client (standalone or Cluster) that fails fast while disconnected, and error classification.
 */
import type { Scope } from "effect"
import { Duration, Effect, Redacted } from "effect"
import type { Cluster, Redis, RedisOptions } from "ioredis"
import { makeClient } from "./redisCluster.js"

/** Which Redis server, which database and as whom: the fields every Redis service's options share. */
export interface ServerOptions {
  /** `redis://[user:password@]host:port[/db]` or `rediss://...`; wins over host/port. */
  readonly url?: string | undefined
  readonly host?: string | undefined
  readonly port?: number | undefined
  readonly db?: number | undefined
  readonly username?: string | undefined
  readonly password?: Redacted.Redacted<string> | string | undefined
}

/** The password in clear, as ioredis wants it. */
export const passwordOf = (password: Redacted.Redacted<string> | string | undefined): string | undefined =>
  password === undefined || typeof password === "string" ? password : Redacted.value(password)

/** `db`, `username` and `password` as ioredis options; the ones not given are left out. */
export const authOptions = (options: ServerOptions): Pick<RedisOptions, "db" | "username" | "password"> => {
  const password = passwordOf(options.password)
  return {
    ...(options.db === undefined ? {} : { db: options.db }),
    ...(options.username === undefined ? {} : { username: options.username }),
    ...(password === undefined ? {} : { password })
  }
}

/** Where and how to connect (the same fields as `RedisBackend.Options`). */
export interface ConnectionOptions extends ServerOptions {
  /** Redis Cluster seed nodes; when given, a `Cluster` client is used and url/host/port/db are ignored. */
  readonly cluster?: ReadonlyArray<{ readonly host: string; readonly port: number }> | undefined
  /** Connecting longer than this fails. Default 2 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** A command not answered within this fails. Default 1 second. */
  readonly commandTimeout?: Duration.DurationInput | undefined
  /** CLIENT SETNAME of every connection this service opens (shown by CLIENT LIST). */
  readonly connectionName?: string | undefined
}

export interface Connection {
  readonly client: Redis | Cluster
  /** A human description of where we connect, for error messages. */
  readonly where: string
  readonly commandTimeoutMillis: number
  /** A new client with the same settings (for blocking reads and subscribers); `commandTimeout` overridable. */
  readonly open: (overrides?: { readonly commandTimeoutMillis?: number | undefined }) => Promise<Redis | Cluster>
  /** Closes a client opened with `open`: QUIT when `graceful` (bounded), then disconnect. */
  readonly close: (client: Redis | Cluster, graceful: boolean) => Promise<void>
}

export const describe = (options: ConnectionOptions): string =>
  options.cluster !== undefined && options.cluster.length > 0
    ? `Redis Cluster (seeds ${options.cluster.map((n) => `${n.host}:${n.port}`).join(", ")})`
    : options.url !== undefined
    ? `Redis at ${options.url.replace(/\/\/[^@/]*@/, "//")}`
    : `Redis at ${options.host ?? "127.0.0.1"}:${options.port ?? 6379}`

/** Opens the main client in the scope (QUIT on release). Fails with the connect error's cause. */
export const acquireConnection = (options: ConnectionOptions): Effect.Effect<Connection, unknown, Scope.Scope> => {
  const commandTimeoutMillis = Duration.toMillis(options.commandTimeout ?? "1 second")
  const connectTimeoutMillis = Duration.toMillis(options.connectTimeout ?? "2 seconds")
  const cluster = options.cluster !== undefined && options.cluster.length > 0 ? options.cluster : undefined
  const open = async (overrides?: { readonly commandTimeoutMillis?: number | undefined }) => {
    const timeout = overrides?.commandTimeoutMillis ?? commandTimeoutMillis
    const redisOptions: RedisOptions = {
      // fail fast instead of queueing commands while disconnected
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      connectTimeout: connectTimeoutMillis,
      ...(timeout > 0 ? { commandTimeout: timeout } : {}),
      ...(options.connectionName === undefined ? {} : { connectionName: options.connectionName }),
      ...authOptions(options)
    }
    let lastError: unknown = undefined
    const client = makeClient({
      host: options.host ?? "127.0.0.1",
      port: options.port ?? 6379,
      url: options.url,
      cluster,
      redisOptions
    })
    // failures are reported through the commands that fail; without listeners ioredis logs them
    client.on("error", (error: unknown) => {
      lastError = error
    })
    client.on("node error", (error: unknown) => {
      lastError = error
    })
    try {
      await client.connect()
    } catch (cause) {
      client.disconnect()
      throw lastError ?? cause
    }
    return client
  }
  const close = async (client: Redis | Cluster, graceful: boolean) => {
    if (graceful && client.status === "ready") {
      await Promise.race([client.quit().catch(() => "failed"), new Promise((r) => setTimeout(r, 1000))])
    }
    client.disconnect()
  }
  return Effect.map(
    Effect.acquireRelease(
      Effect.tryPromise({ try: () => open(), catch: (cause) => cause }),
      (client) => Effect.promise(() => close(client, true))
    ),
    (client): Connection => ({ client, where: describe(options), commandTimeoutMillis, open, close })
  )
}

/** How a failed command is reported. */
export type FailureKind = "timeout" | "unavailable" | "rejected"

/**
 * `timeout`: no answer within commandTimeout; `rejected`: the server answered with an error
 * (WRONGTYPE, a bad stream id...); `unavailable`: anything else (connection down, refused).
 */
export const classify = (cause: unknown): FailureKind => {
  if (cause instanceof Error && /Command timed out/i.test(cause.message)) return "timeout"
  if (cause instanceof Error && cause.name === "ReplyError") return "rejected"
  return "unavailable"
}

export const messageOf = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)
