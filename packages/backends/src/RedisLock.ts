/**
 * A Redis lock for one resource at a time (ioredis 5): `SET key token NX PX ttl` to take it, Lua
 * compare-and-delete to release it and compare-and-pexpire to extend it, so an instance only ever
 * releases or extends a lock it still holds. A holder that dies stops extending; its lock expires
 * after `ttl` and someone else can take it. Works on Redis Cluster (each lock is one key).
 *
 * Like every single-key Redis lock it is advisory and bounded by time: a holder paused longer than
 * the TTL (GC, network partition) can overlap with the next holder, and a failover to a replica
 * that had not received the SET can grant it twice. Use it to avoid duplicate work (stampedes),
 * not for mutual exclusion that correctness depends on.
 *
 * @example
 * ```ts
 * const program = Effect.gen(function*() {
 *   const locks = yield* RedisLock.RedisLock
 *   yield* locks.withLock("rebuild-index", rebuildIndex, { ttl: "10 seconds", wait: "30 seconds" })
 * })
 * program.pipe(Effect.provide(RedisLock.layer({ url: "redis://127.0.0.1:6379" })))
 * ```
 *
 * @since 0.1.0
 */
import type { Duration, Effect, Option, Scope } from "effect"
import { Context, Data, Layer } from "effect"
import type { ConnectionOptions } from "./internal/redisConnection.js"
import { makeRedisLock } from "./internal/redisLock.js"

/** A lock held: the resource, its Redis key and the random token that proves ownership. */
export interface Lease {
  readonly resource: string
  readonly key: string
  readonly token: string
  readonly ttlMillis: number
}

export interface AcquireOptions {
  /** Lifetime of the lock unless extended. Default: the layer's `ttl` (10 seconds). */
  readonly ttl?: Duration.DurationInput | undefined
  /** How long to keep trying before `LockNotAcquired`. Default 0 (one attempt). */
  readonly wait?: Duration.DurationInput | undefined
  /** Delay between attempts while waiting. Default 50 millis. */
  readonly retryEvery?: Duration.DurationInput | undefined
}

export interface RedisLock {
  /** One attempt: `Some(lease)` when taken, `None` when someone else holds it. */
  readonly tryAcquire: (
    resource: string,
    ttl?: Duration.DurationInput
  ) => Effect.Effect<Option.Option<Lease>, LockUnavailable>
  /** Attempts until taken or `wait` is over. */
  readonly acquire: (resource: string, options?: AcquireOptions) => Effect.Effect<Lease, LockError>
  /** Deletes the lock if it is still this lease's; `false` when it had expired or been taken over. */
  readonly release: (lease: Lease) => Effect.Effect<boolean, LockUnavailable>
  /** Resets the TTL if the lock is still this lease's; `false` when it was lost. */
  readonly extend: (lease: Lease, ttl?: Duration.DurationInput) => Effect.Effect<boolean, LockUnavailable>
  /**
   * Runs `effect` holding the lock: acquired first (per `options`), extended every third of its TTL
   * while `effect` runs, released afterwards whatever the outcome (interruption included).
   */
  readonly withLock: <A, E, R>(
    resource: string,
    effect: Effect.Effect<A, E, R>,
    options?: AcquireOptions
  ) => Effect.Effect<A, E | LockError, R>
}

export class RedisLockTag extends Context.Tag("@cachekit/backends/RedisLock")<RedisLockTag, RedisLock>() {}
/** The service tag (`yield* RedisLock.RedisLock`). */
export const RedisLock = RedisLockTag

/** Redis could not be reached or did not answer in time. */
export class LockUnavailable extends Data.TaggedError("LockUnavailable")<{
  readonly operation: string
  readonly resource: string
  readonly cause: unknown
  readonly message: string
}> {}

/** Someone else held the lock for the whole `wait`. */
export class LockNotAcquired extends Data.TaggedError("LockNotAcquired")<{
  readonly resource: string
  readonly waitedMillis: number
  readonly message: string
}> {}

export type LockError = LockUnavailable | LockNotAcquired

export interface Options extends ConnectionOptions {
  /** Prefix of lock keys: a lock is `<prefix>lock{<resource>}`. Default `cachekit:`. */
  readonly prefix?: string | undefined
  /** Default lock TTL. Default 10 seconds. */
  readonly ttl?: Duration.DurationInput | undefined
}

/** Connects (the connection lives in the scope). */
export const make = (options: Options = {}): Effect.Effect<RedisLock, LockUnavailable, Scope.Scope> =>
  makeRedisLock(options)

/** The lock service as a Layer. */
export const layer = (options: Options = {}): Layer.Layer<RedisLockTag, LockUnavailable> =>
  Layer.scoped(RedisLockTag, make(options))
