import type { Scope } from "effect"
import { Clock, Duration, Effect, Option, Schedule } from "effect"
import type { Result } from "ioredis"
import { randomUUID } from "node:crypto"
import type * as RL from "../RedisLock.js"
import { LockNotAcquired, LockUnavailable } from "../RedisLock.js"
import type { Connection } from "./redisConnection.js"
import { acquireConnection, classify, messageOf } from "./redisConnection.js"

declare module "ioredis" {
  interface RedisCommander<Context> {
    /** DEL KEYS[1] if its value is ARGV[1]; 1 when deleted. */
    cachekitLockRelease(key: string, token: string): Result<number, Context>
    /** PEXPIRE KEYS[1] ARGV[2] if its value is ARGV[1]; 1 when extended. */
    cachekitLockExtend(key: string, token: string, ttl: string): Result<number, Context>
  }
}

// compare-and-delete / compare-and-pexpire: only the token's owner may release or extend
const RELEASE_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`
const EXTEND_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`

export const makeRedisLock = (options: RL.Options): Effect.Effect<RL.RedisLock, LockUnavailable, Scope.Scope> =>
  Effect.flatMap(
    Effect.mapError(acquireConnection(options), (cause) =>
      new LockUnavailable({
        operation: "connect",
        resource: "",
        cause,
        message: `redis lock: cannot connect: ${messageOf(cause)}; is redis-server running?`
      })),
    (connection) =>
      Effect.succeed(
        makeLockOn(connection, {
          keyOf: (resource) => `${options.prefix ?? "cachekit:"}lock{${resource}}`,
          ttlMillis: Duration.toMillis(options.ttl ?? "10 seconds")
        })
      )
  )

export interface LockSettings {
  readonly keyOf: (resource: string) => string
  readonly ttlMillis: number
}

/** The lock on an open connection (RedisSingleFlight shares its connection this way). */
export const makeLockOn = (connection: Connection, settings: LockSettings): RL.RedisLock => {
  const { client, where } = connection
  client.defineCommand("cachekitLockRelease", { numberOfKeys: 1, lua: RELEASE_LUA })
  client.defineCommand("cachekitLockExtend", { numberOfKeys: 1, lua: EXTEND_LUA })

  const call = <A>(operation: string, resource: string, f: () => Promise<A>) =>
    Effect.tryPromise({
      try: f,
      catch: (cause) =>
        new LockUnavailable({
          operation,
          resource,
          cause,
          message: classify(cause) === "timeout"
            ? `redis lock: ${operation} "${resource}" got no answer within ${connection.commandTimeoutMillis} ms from ${where}`
            : `redis lock: ${operation} "${resource}" failed: ${messageOf(cause)} (${where})`
        })
    })

  const ttlOf = (ttl: Duration.DurationInput | undefined) =>
    Math.max(1, Math.round(ttl === undefined ? settings.ttlMillis : Duration.toMillis(ttl)))

  const tryAcquire = (resource: string, ttl?: Duration.DurationInput) =>
    Effect.suspend(() => {
      const lease: RL.Lease = { resource, key: settings.keyOf(resource), token: randomUUID(), ttlMillis: ttlOf(ttl) }
      return Effect.map(
        call("acquire", resource, () => client.set(lease.key, lease.token, "PX", lease.ttlMillis, "NX")),
        (reply) => reply === "OK" ? Option.some(lease) : Option.none()
      )
    })

  const acquire = (resource: string, acquireOptions?: RL.AcquireOptions) =>
    Effect.gen(function*() {
      const waitMillis = Duration.toMillis(acquireOptions?.wait ?? 0)
      const retryMillis = Math.max(1, Duration.toMillis(acquireOptions?.retryEvery ?? "50 millis"))
      const start = yield* Clock.currentTimeMillis
      while (true) {
        const lease = yield* tryAcquire(resource, acquireOptions?.ttl)
        if (Option.isSome(lease)) return lease.value
        const waited = (yield* Clock.currentTimeMillis) - start
        if (waited >= waitMillis) {
          return yield* Effect.fail(
            new LockNotAcquired({
              resource,
              waitedMillis: waited,
              message: `redis lock: "${resource}" is held by someone else (waited ${waited} ms)`
            })
          )
        }
        yield* Effect.sleep(Math.min(retryMillis, waitMillis - waited))
      }
    })

  const release = (lease: RL.Lease) =>
    Effect.map(
      call("release", lease.resource, () => client.cachekitLockRelease(lease.key, lease.token)),
      (n) => n === 1
    )

  const extend = (lease: RL.Lease, ttl?: Duration.DurationInput) =>
    Effect.map(
      call("extend", lease.resource, () => client.cachekitLockExtend(lease.key, lease.token, String(ttlOf(ttl)))),
      (n) => n === 1
    )

  const keepAlive = keepAliveWith(extend)

  const withLock = <A, E, R>(resource: string, effect: Effect.Effect<A, E, R>, acquireOptions?: RL.AcquireOptions) =>
    Effect.acquireUseRelease(
      acquire(resource, acquireOptions),
      (lease) =>
        Effect.scoped(
          Effect.flatMap(Effect.forkScoped(keepAlive(lease)), () => effect)
        ),
      (lease) => Effect.ignore(release(lease))
    )

  return { tryAcquire, acquire, release, extend, withLock } satisfies RL.RedisLock
}

/**
 * Extends a lease every third of its TTL until interrupted or the lock is lost (a failed extension
 * is retried on the next tick: the lock may still be ours). Fork it in the scope of the work.
 */
export const keepAliveWith = (
  extend: (lease: RL.Lease) => Effect.Effect<boolean, LockUnavailable>
) =>
(lease: RL.Lease): Effect.Effect<unknown> => {
  const every = Math.max(1, Math.floor(lease.ttlMillis / 3))
  return extend(lease).pipe(
    Effect.catchAll(() => Effect.succeed(true)),
    Effect.repeat({ schedule: Schedule.spaced(every), while: (stillOurs) => stillOurs }),
    Effect.delay(every)
  )
}
