/**
 * Distributed single-flight: N instances with M concurrent misses of one key run one compute in
 * total. It wraps the compute given to `Cache.getOrCompute` (the Cache already coalesces misses
 * inside one instance; this coalesces them across instances sharing a Redis):
 *
 * ```ts
 * const cache = yield* Cache.Cache
 * const flight = yield* RedisSingleFlight.RedisSingleFlight
 * yield* cache.getOrCompute(key, flight.wrap(key, fetchFromOrigin(key)))
 * ```
 *
 * How: the first caller takes a Redis lock (`RedisLock`, `<prefix>sf:lock{<key>}`) and computes,
 * the lock extended while it runs; on success one script writes the encoded result to a short-lived
 * handoff key (`<prefix>sf:result{<key>}`, same slot as the lock), releases the lock and publishes
 * the key on one Pub/Sub channel. Other callers wait: woken by that message,
 * or every `pollInterval` (messages can be missed), they read the handoff key, or take the lock
 * themselves when it is free again (the holder failed, was interrupted, or died and its lock
 * expired after `lockTtl`). A caller that has waited `waitTimeout` computes by itself.
 *
 * Redis trouble never fails a call: when Redis is down or the handoff does not decode, the caller
 * computes by itself, so the worst case is the stampede this prevents, not an outage. A circuit
 * breaker (core's, as for tiers) keeps a hung Redis from costing every call the command timeout:
 * after `failureThreshold` failed or timed-out commands in a row, calls compute without asking
 * Redis for `resetAfter`, then one call probes it; one log line per change of state, not per call.
 *
 * @since 0.1.0
 */
import type { Codec } from "@cachekit/core"
import type { Duration, Effect, Scope } from "effect"
import { Context, Layer } from "effect"
import type { ConnectionOptions } from "./internal/redisConnection.js"
import { makeRedisSingleFlight } from "./internal/redisSingleFlight.js"
import type { LockUnavailable } from "./RedisLock.js"

export interface RedisSingleFlight {
  /**
   * `compute` run once across every instance for concurrent callers of `key`; the others get its
   * result. Bytes need no codec; other values need one to travel between instances.
   */
  readonly wrap: {
    <E, R>(key: string, compute: Effect.Effect<Uint8Array, E, R>): Effect.Effect<Uint8Array, E, R>
    <A, E, R>(key: string, compute: Effect.Effect<A, E, R>, codec: Codec.Codec<A>): Effect.Effect<A, E, R>
  }
  /** Counters since `make`, and the breaker's state. */
  readonly stats: Effect.Effect<Stats>
}

export interface Stats {
  /** Calls that computed without asking Redis because the circuit was open. */
  readonly bypassed: number
  /** Redis commands of the gate (attempt, finish) that failed or timed out. */
  readonly failures: number
  /** `"none"` when the breaker is off. */
  readonly breaker: "closed" | "open" | "half-open" | "none"
  /** How many times the circuit opened. */
  readonly breakerOpened: number
}

export class RedisSingleFlightTag
  extends Context.Tag("@cachekit/backends/RedisSingleFlight")<RedisSingleFlightTag, RedisSingleFlight>()
{}
/** The service tag (`yield* RedisSingleFlight.RedisSingleFlight`). */
export const RedisSingleFlight = RedisSingleFlightTag

export interface Options extends ConnectionOptions {
  /** Prefix of the lock and handoff keys and of the channel. Default `cachekit:`. */
  readonly prefix?: string | undefined
  /** Lock TTL: how long waiters wait for a holder that died. Extended while the holder computes. Default 5 seconds. */
  readonly lockTtl?: Duration.DurationInput | undefined
  /** Longest a caller waits for another instance's compute before computing itself. Default 10 seconds. */
  readonly waitTimeout?: Duration.DurationInput | undefined
  /** Waiters re-check this often even without a message. Default 100 millis. */
  readonly pollInterval?: Duration.DurationInput | undefined
  /** How long the handoff result stays readable (for callers arriving just after). Default 5 seconds. */
  readonly resultTtl?: Duration.DurationInput | undefined
  /**
   * Circuit breaker over the gate's Redis commands, or `false` to ask Redis on every call (each
   * failure then logs a warning). Default: open after 5 consecutive failures, probe after 10 seconds.
   */
  readonly breaker?:
    | false
    | {
      /** Consecutive failed or timed-out commands that open the circuit. Default 5. */
      readonly failureThreshold?: number | undefined
      /** How long calls skip Redis before one probes it. Default 10 seconds. */
      readonly resetAfter?: Duration.DurationInput | undefined
    }
    | undefined
}

/** Connects a command connection and a subscriber connection, both closed with the scope. */
export const make = (options: Options = {}): Effect.Effect<RedisSingleFlight, LockUnavailable, Scope.Scope> =>
  makeRedisSingleFlight(options)

/** The service as a Layer. */
export const layer = (options: Options = {}): Layer.Layer<RedisSingleFlightTag, LockUnavailable> =>
  Layer.scoped(RedisSingleFlightTag, make(options))
