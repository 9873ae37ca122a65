import type { CacheBackend as CB } from "@cachekit/core"
import { CacheBackend, CacheEntry, CacheError } from "@cachekit/core"
import { Cause, Clock, Effect, Either } from "effect"
import type { Scope } from "effect"
import memjs from "memjs"
import { createHash } from "node:crypto"
import type { Socket } from "node:net"
import * as HashRing from "./hashRing.js"
import { encodeWithin, readStored } from "./wireEntry.js"

export interface ResolvedOptions {
  readonly servers: ReadonlyArray<string>
  readonly prefix: string
  readonly timeoutMillis: number
  readonly maxEntrySize: number
  readonly pointsPerServer: number
  readonly name: string
  /** Consecutive failures (unreachable or timed out) after which a server is marked down. */
  readonly markDownAfter: number
  /** How long a server marked down is skipped before one probe is let through. */
  readonly retryDownAfterMillis: number
  /** What `get` returns for a key whose server is unreachable: a typed error, or a miss. */
  readonly onServerDown: "error" | "miss"
}

/** Memcached treats an expiration over 30 days as an absolute unix time. */
export const RELATIVE_EXPIRATION_LIMIT_SECONDS = 60 * 60 * 24 * 30

/**
 * The `expires` value memcached expects for keeping an item `retainMillis` (undefined: forever)
 * at `nowMillis`: 0 for never, seconds (rounded up) up to 30 days, an absolute unix time above.
 */
export const expiration = (retainMillis: number | undefined, nowMillis: number): number => {
  if (retainMillis === undefined) return 0
  const seconds = Math.max(1, Math.ceil(retainMillis / 1000))
  return seconds <= RELATIVE_EXPIRATION_LIMIT_SECONDS ? seconds : Math.floor(nowMillis / 1000) + seconds
}

const MAX_KEY_BYTES = 250
const STORABLE = /^[\x21-\x7e]+$/

/**
 * Memcached keys are at most 250 bytes of printable ASCII without spaces. Anything else is
 * replaced by `prefix#<sha256 base64url>`, which is printable and 53 bytes plus the prefix.
 */
export const storageKey = (prefix: string, key: string): string => {
  const full = prefix + key
  if (full.length <= MAX_KEY_BYTES && STORABLE.test(full)) return full
  return `${prefix}#${createHash("sha256").update(key, "utf8").digest("base64url")}`
}

/**
 * Whether a server is worth calling. `failures` consecutive failures at or over `markDownAfter`
 * mark it down: its keys fail at once (no timeout paid per request) until `downUntil`, then one
 * probe goes through; success brings it back, failure keeps it down for another period.
 */
interface ServerState {
  failures: number
  downUntil: number
  probing: boolean
}

interface Server {
  readonly address: string
  readonly client: memjs.Client
  readonly state: ServerState
}

const silent = { log: () => {} }

/** The open sockets of a memjs client (memjs keeps them on its `servers`, which its typings do not declare). */
const socketsOf = (client: memjs.Client): Array<Socket> => {
  const servers = (client as unknown as { readonly servers?: ReadonlyArray<{ readonly _socket?: Socket }> }).servers
  return (servers ?? []).flatMap((server) => server._socket === undefined ? [] : [server._socket])
}

export const makeMemcachedBackend = (
  options: ResolvedOptions
): Effect.Effect<CB.CacheBackend, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { name, prefix } = options
    const servers = yield* Effect.acquireRelease(
      Effect.sync(() =>
        options.servers.map((address): Server => ({
          address,
          // one client per server and no failover: a dead server fails its own keys, fast
          client: memjs.Client.create(address, {
            retries: 1,
            failover: false,
            timeout: options.timeoutMillis / 1000,
            conntimeout: options.timeoutMillis / 1000,
            keepAlive: true,
            logger: silent
          }),
          state: { failures: 0, downUntil: 0, probing: false }
        }))
      ),
      (all) =>
        Effect.sync(() =>
          all.forEach((s) => {
            const open = socketsOf(s.client)
            s.client.close()
            // close() only ends the sockets; a hung server never answers, which would keep them open
            open.forEach((socket) => socket.destroy())
          })
        )
    )
    const ring = HashRing.make(servers, (s) => s.address, options.pointsPerServer)

    /** One memjs call, its failure typed (no breaker: `health` uses it to see the real state). */
    const callDirect = <A>(server: Server, operation: string, f: () => Promise<A>) =>
      Effect.tryPromise({
        try: () => {
          const promise = f()
          // the socket the request went out on (memjs connects synchronously when it has none)
          const sockets = socketsOf(server.client)
          return promise.catch((cause: unknown) => {
            // memjs only ends a socket it timed out; a hung server never answers the FIN, so without
            // this every timed-out request (every probe of a hung server) would leave a socket open
            if (cause instanceof Error && /timed out/.test(cause.message)) sockets.forEach((s) => s.destroy())
            throw cause
          })
        },
        catch: (cause): CacheError.CacheError =>
          cause instanceof Error && /timed out/.test(cause.message) && !/connecting/.test(cause.message)
            ? CacheError.backendTimeout(name, `${operation} on ${server.address}`, options.timeoutMillis)
            : CacheError.backendUnavailable(
              name,
              `${operation} on ${server.address}`,
              cause,
              `memcached at ${server.address} is not reachable; start it or remove it from CACHEKIT_MEMCACHED_SERVERS`
            )
      })

    const markedDown = (server: Server, operation: string, now: number) =>
      CacheError.backendUnavailable(
        name,
        `${operation} on ${server.address}`,
        `marked down after ${server.state.failures} consecutive failures`,
        `${
          now < server.state.downUntil ? `next probe in ${server.state.downUntil - now} ms` : "a probe is in flight"
        }; its keys are not moved to other servers`
      )

    /**
     * A call through the server's breaker: while the server is marked down its keys fail at once
     * with `BackendUnavailable`; after `retryDownAfter` one call probes it. Keys are never sent to
     * another server (the ring does not change), so a server that comes back still has its keys
     * and no other server holds stale copies of them.
     */
    const call = <A>(server: Server, operation: string, f: () => Promise<A>) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const state = server.state
        const down = state.failures >= options.markDownAfter
        if (down && (now < state.downUntil || state.probing)) return Effect.fail(markedDown(server, operation, now))
        if (down) state.probing = true
        return callDirect(server, operation, f).pipe(
          Effect.onExit((exit) =>
            Effect.flatMap(Clock.currentTimeMillis, (after) =>
              Effect.sync(() => {
                if (down) state.probing = false
                if (exit._tag === "Success") {
                  state.failures = 0
                } else if (!Cause.isInterruptedOnly(exit.cause)) {
                  state.failures++
                  if (state.failures >= options.markDownAfter) state.downUntil = after + options.retryDownAfterMillis
                }
              }))
          )
        )
      })

    const locate = (key: string) =>
      Effect.map(CacheBackend.validateKey(key), (k) => {
        const stored = storageKey(prefix, k)
        return { stored, server: ring.locate(stored) }
      })

    const get = (key: string) =>
      Effect.gen(function*() {
        const { server, stored } = yield* locate(key)
        const read = call(server, "get", () => server.client.get(stored))
        const { value } = yield* options.onServerDown === "miss"
          ? Effect.catchTags(read, {
            BackendUnavailable: () => Effect.succeed({ value: null }),
            BackendTimeout: () => Effect.succeed({ value: null })
          })
          : read
        // memcached expires in whole seconds; the entry's own time (checked by readStored) is exact
        return yield* readStored(key, value, call(server, "delete undecodable", () => server.client.delete(stored)))
      })

    const set = (key: string, entry: CacheEntry.CacheEntry) =>
      Effect.gen(function*() {
        const { server, stored } = yield* locate(key)
        const value = yield* encodeWithin(
          key,
          entry,
          options.maxEntrySize,
          "the memcached backend's",
          "raise maxEntrySize and the server's -I item size"
        )
        const now = yield* Clock.currentTimeMillis
        const expires = expiration(CacheEntry.retainMillis(entry, now), now)
        const ok = yield* call(server, "set", () => server.client.set(stored, value, { expires }))
        if (!ok) {
          return yield* Effect.fail(
            CacheError.backendUnavailable(name, `set on ${server.address}`, "the server refused the item")
          )
        }
      })

    const del = (key: string) =>
      Effect.flatMap(locate(key), ({ server, stored }) => call(server, "delete", () => server.client.delete(stored)))

    const clear = Effect.forEach(servers, (server) => call(server, "flush", () => server.client.flush()), {
      concurrency: "unbounded",
      discard: true
    })

    const health: Effect.Effect<CB.Health> = Effect.gen(function*() {
      const start = yield* Clock.currentTimeNanos
      const results = yield* Effect.forEach(
        servers,
        (server) => Effect.either(callDirect(server, "health", () => server.client.get(`${prefix}#health`))),
        { concurrency: "unbounded" }
      )
      const latencyMillis = Number((yield* Clock.currentTimeNanos) - start) / 1e6
      const down = servers.filter((_, i) => Either.isLeft(results[i]!)).map((s) => s.address)
      const status = down.length === 0 ? "up" : down.length === servers.length ? "down" : "degraded"
      return {
        backend: name,
        status,
        latencyMillis,
        ...(down.length === 0 ? {} : { detail: `unreachable: ${down.join(", ")}` })
      } satisfies CB.Health
    })

    return {
      name,
      get,
      set,
      delete: del,
      clear,
      health,
      maxEntrySize: options.maxEntrySize
    } satisfies CB.CacheBackend
  })
