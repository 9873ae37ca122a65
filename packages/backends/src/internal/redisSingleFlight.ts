import type { Codec } from "@cachekit/core"
import { Codec as Codecs } from "@cachekit/core"
import { CircuitBreaker } from "@cachekit/core/internal/circuitBreaker"
import type { Scope } from "effect"
import { Clock, Deferred, Duration, Effect, Exit, Schedule } from "effect"
import type { Result } from "ioredis"
import { randomUUID } from "node:crypto"
import type { Lease } from "../RedisLock.js"
import { LockUnavailable } from "../RedisLock.js"
import type * as SF from "../RedisSingleFlight.js"
import { acquireConnection, classify, messageOf } from "./redisConnection.js"
import { makeLockOn } from "./redisLock.js"

declare module "ioredis" {
  interface RedisCommander<Context> {
    /** One waiter step; see ATTEMPT_LUA. */
    cachekitFlightAttempt(
      lockKey: string,
      resultKey: string,
      token: string,
      ttl: string,
      acceptedTokens: string
    ): Result<[number, string], Context>
    /** The same with binary replies (a result is bytes). */
    cachekitFlightAttemptBuffer(
      lockKey: string,
      resultKey: string,
      token: string,
      ttl: string,
      acceptedTokens: string
    ): Result<[number, Buffer], Context>
    /** Stores the handoff result, releases the lock if still held by `token`, publishes `key` on `channel`. */
    cachekitFlightFinish(
      lockKey: string,
      resultKey: string,
      token: string,
      result: Buffer,
      resultTtl: string,
      channel: string,
      key: string
    ): Result<number, Context>
  }
}

/**
 * One step of a caller, atomic (lock and result share a slot). Returns
 *   {1, result}  a result from a flight this caller saw running (its token is in ARGV[3]);
 *   {2, holder}  someone holds the lock: its token (the caller will accept that flight's result);
 *   {3, ''}      the lock was free and is now ours (token ARGV[1], TTL ARGV[2] ms).
 * A result from a flight the caller never saw is ignored: it may predate an invalidation.
 * Results are stored as "<token> <bytes>".
 */
const ATTEMPT_LUA = `
local r = redis.call('GET', KEYS[2])
if r and ARGV[3] ~= '' then
  local sep = string.find(r, ' ', 1, true)
  if sep and string.find(' ' .. ARGV[3] .. ' ', ' ' .. string.sub(r, 1, sep - 1) .. ' ', 1, true) then
    return {1, r}
  end
end
local holder = redis.call('GET', KEYS[1])
if holder then return {2, holder} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {3, ''}
`

/** Hand over the result, release the lock if still ours, and tell the waiters: one round trip. */
const FINISH_LUA = `
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
`

export const makeRedisSingleFlight = (
  options: SF.Options
): Effect.Effect<SF.RedisSingleFlight, LockUnavailable, Scope.Scope> =>
  Effect.gen(function*() {
    const prefix = options.prefix ?? "cachekit:"
    const lockTtlMillis = Math.max(1, Duration.toMillis(options.lockTtl ?? "5 seconds"))
    const waitTimeoutMillis = Duration.toMillis(options.waitTimeout ?? "10 seconds")
    const pollMillis = Math.max(1, Duration.toMillis(options.pollInterval ?? "100 millis"))
    const resultTtlMillis = Math.max(1, Duration.toMillis(options.resultTtl ?? "5 seconds"))
    const channel = `${prefix}sf:done`
    const breakerOptions = options.breaker === false ? undefined : options.breaker ?? {}
    const resetAfterMillis = Duration.toMillis(breakerOptions?.resetAfter ?? "10 seconds")
    const breaker = breakerOptions === undefined ? undefined : new CircuitBreaker({
      failureThreshold: Math.max(1, breakerOptions.failureThreshold ?? 5),
      resetAfterMillis
    })
    const counters = { bypassed: 0, failures: 0 }
    const connectError = (cause: unknown) =>
      new LockUnavailable({
        operation: "connect",
        resource: "",
        cause,
        message: `redis single-flight: cannot connect: ${messageOf(cause)}; is redis-server running?`
      })
    const connection = yield* Effect.mapError(acquireConnection(options), connectError)
    const { client, where } = connection
    client.defineCommand("cachekitFlightAttempt", { numberOfKeys: 2, lua: ATTEMPT_LUA })
    client.defineCommand("cachekitFlightFinish", { numberOfKeys: 2, lua: FINISH_LUA })
    const lockKey = (key: string) => `${prefix}sf:lock{${key}}`
    const resultKey = (key: string) => `${prefix}sf:result{${key}}`
    const lock = makeLockOn(connection, { keyOf: lockKey, ttlMillis: lockTtlMillis })

    // Leases of the computes running here, all extended by one fiber living in the layer's scope
    // every third of the TTL (a fiber per compute would cost a fork and an interrupt per miss).
    const held = new Set<Lease>()
    yield* Effect.forkScoped(
      Effect.suspend(() =>
        Effect.forEach([...held], (lease) =>
          Effect.flatMap(
            Effect.orElseSucceed(lock.extend(lease), () => true),
            // lost (expired and taken): stop extending it; the compute still finishes and hands over
            (stillOurs) => stillOurs ? Effect.void : Effect.sync(() => held.delete(lease))
          ), { concurrency: "unbounded", discard: true })
      ).pipe(Effect.repeat(Schedule.spaced(Math.max(1, Math.floor(lockTtlMillis / 3)))))
    )

    // waiters of this instance, woken when a holder anywhere publishes their key
    const wakers = new Map<string, Set<Deferred.Deferred<void>>>()
    const wake = (key: string) => {
      const waiting = wakers.get(key)
      if (waiting === undefined) return
      for (const d of waiting) Deferred.unsafeDone(d, Exit.void)
    }
    yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const sub = await connection.open()
          sub.on("message", (_channel: string, key: string) => wake(key))
          await sub.subscribe(channel)
          return sub
        },
        catch: connectError
      }),
      (sub) => Effect.promise(() => connection.close(sub, true))
    )

    const call = <A>(operation: string, key: string, f: () => Promise<A>) =>
      Effect.tryPromise({
        try: f,
        catch: (cause) =>
          new LockUnavailable({
            operation,
            resource: key,
            cause,
            message: classify(cause) === "timeout"
              ? `redis single-flight: ${operation} "${key}" got no answer within ${connection.commandTimeoutMillis} ms from ${where}`
              : `redis single-flight: ${operation} "${key}" failed: ${messageOf(cause)} (${where})`
          })
      })

    /** A call of the gate that may be the half-open breaker's probe: its fate is told to the breaker once. */
    interface Probe {
      pending: boolean
    }

    /** Redis answered a gate command: the breaker closes (logged when it was not closed). */
    const answered = (probe: Probe) =>
      Effect.suspend(() => {
        probe.pending = false
        if (breaker === undefined || (breaker.state === "closed" && breaker.consecutiveFailures === 0)) {
          return Effect.void
        }
        const was = breaker.state
        breaker.onSuccess()
        return was === "closed"
          ? Effect.void
          : Effect.logInfo(`redis single-flight: ${where} answers again; misses are coalesced across instances again`)
      })

    /**
     * A gate command failed or timed out: counted, fed to the breaker. With a breaker, only its
     * opening is a warning (a failed probe is a debug line); without one, every failure is.
     */
    const unreachable = (probe: Probe, error: LockUnavailable) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        probe.pending = false
        counters.failures++
        if (breaker === undefined) return Effect.logWarning(error.message)
        const was = breaker.state
        breaker.onFailure(now)
        if (breaker.state !== "open" || was === "open") return Effect.logDebug(error.message)
        return was === "closed"
          ? Effect.logWarning(
            `redis single-flight: ${breaker.options.failureThreshold} failed commands in a row (last: ${error.message}); ` +
              `misses compute without coordination for ${resetAfterMillis} ms, then one probes ${where}`
          )
          : Effect.logDebug(`redis single-flight: probe failed (${error.message}); circuit open again`)
      })

    /** `call` with the breaker's bookkeeping. */
    const guardedCall = <A>(probe: Probe, operation: string, key: string, f: () => Promise<A>) =>
      call(operation, key, f).pipe(
        Effect.tapBoth({ onFailure: (error) => unreachable(probe, error), onSuccess: () => answered(probe) })
      )

    const publishDone = (key: string) => Effect.ignore(call("publish", key, () => client.publish(channel, key)))

    /** Registers a waker for `key` around `use`. */
    const withWaker = <A, E, R>(key: string, use: (woken: Deferred.Deferred<void>) => Effect.Effect<A, E, R>) =>
      Effect.acquireUseRelease(
        Effect.tap(Deferred.make<void>(), (d) =>
          Effect.sync(() => {
            const set = wakers.get(key)
            if (set === undefined) wakers.set(key, new Set([d]))
            else set.add(d)
          })),
        use,
        (d) =>
          Effect.sync(() => {
            const set = wakers.get(key)
            set?.delete(d)
            if (set?.size === 0) wakers.delete(key)
          })
      )

    /** Computes holding the lease: keeps it alive, hands the result over, releases, tells the others. */
    const runAsHolder = <A, E, R>(
      key: string,
      lease: Lease,
      compute: Effect.Effect<A, E, R>,
      codec: Codec.Codec<A>,
      probe: Probe
    ) =>
      Effect.gen(function*() {
        held.add(lease)
        const exit = yield* Effect.exit(Effect.ensuring(compute, Effect.sync(() => held.delete(lease))))
        if (Exit.isSuccess(exit)) {
          const encoded = yield* Effect.either(codec.encode(key, exit.value))
          if (encoded._tag === "Right") {
            const bytes = encoded.right
            const payload = Buffer.concat([
              Buffer.from(`${lease.token} `),
              Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
            ])
            const stored = yield* Effect.either(guardedCall(
              probe,
              "finish",
              key,
              () =>
                client.cachekitFlightFinish(
                  lease.key,
                  resultKey(key),
                  lease.token,
                  payload,
                  String(resultTtlMillis),
                  channel,
                  key
                )
            ))
            if (stored._tag === "Right") return exit.value
          }
        }
        // failure, interruption or a result that could not be handed over: free the lock so a
        // waiter takes over at once instead of after the TTL
        yield* Effect.ignore(lock.release(lease))
        yield* publishDone(key)
        return yield* exit
      }).pipe(
        Effect.onInterrupt(() => Effect.zipRight(Effect.ignore(lock.release(lease)), publishDone(key)))
      )

    const wrapWith = <A, E, R>(key: string, compute: Effect.Effect<A, E, R>, codec: Codec.Codec<A>) =>
      Effect.flatMap(Clock.currentTimeMillis, (start) => {
        const decision = breaker === undefined ? "call" : breaker.decide(start)
        if (decision === "skip") {
          counters.bypassed++
          return compute
        }
        if (decision === "call") return gated(key, compute, codec, start, { pending: false })
        // the half-open breaker's one probe: when it is interrupted before Redis answered, the next call probes
        const probe: Probe = { pending: true }
        return gated(key, compute, codec, start, probe).pipe(
          Effect.onInterrupt(() => Effect.sync(() => probe.pending && breaker!.onAbandon()))
        )
      })

    const gated = <A, E, R>(
      key: string,
      compute: Effect.Effect<A, E, R>,
      codec: Codec.Codec<A>,
      start: number,
      probe: Probe
    ) =>
      Effect.gen(function*() {
        const seenHolders = new Set<string>()
        // a Redis failure was logged by `unreachable` (with a breaker, once per change of state)
        const alone = (why: string, redisFailed: boolean) =>
          redisFailed
            ? compute
            : Effect.zipRight(Effect.logWarning(`redis single-flight: computing "${key}" alone: ${why}`), compute)
        while (true) {
          const step = yield* withWaker(key, (woken) =>
            Effect.gen(function*() {
              const token = randomUUID()
              const reply = yield* Effect.either(guardedCall(
                probe,
                "attempt",
                key,
                () =>
                  client.cachekitFlightAttemptBuffer(
                    lockKey(key),
                    resultKey(key),
                    token,
                    String(lockTtlMillis),
                    [...seenHolders].join(" ")
                  )
              ))
              if (reply._tag === "Left") return { _tag: "Alone", why: reply.left.message, redisFailed: true } as const
              const [kind, data] = reply.right
              if (kind === 1) {
                const bytes = data.subarray(data.indexOf(32) + 1)
                const decoded = yield* Effect.either(codec.decode(key, new Uint8Array(bytes)))
                return decoded._tag === "Right"
                  ? { _tag: "Done", value: decoded.right } as const
                  : { _tag: "Alone", why: decoded.left.message, redisFailed: false } as const
              }
              if (kind === 3) {
                const lease: Lease = { resource: key, key: lockKey(key), token, ttlMillis: lockTtlMillis }
                return { _tag: "Holder", lease } as const
              }
              seenHolders.add(data.toString())
              const waited = (yield* Clock.currentTimeMillis) - start
              if (waited >= waitTimeoutMillis) {
                return { _tag: "Alone", why: `waited ${waited} ms for another instance`, redisFailed: false } as const
              }
              // woken by the holder's message, or re-check after pollInterval (messages can be missed)
              yield* Effect.timeoutOption(Deferred.await(woken), Math.min(pollMillis, waitTimeoutMillis - waited))
              return { _tag: "Again" } as const
            }))
          switch (step._tag) {
            case "Done":
              return step.value
            case "Holder":
              return yield* runAsHolder(key, step.lease, compute, codec, probe)
            case "Alone":
              return yield* alone(step.why, step.redisFailed)
            case "Again":
              continue
          }
        }
      })

    const wrap: SF.RedisSingleFlight["wrap"] = <A, E, R>(
      key: string,
      compute: Effect.Effect<A, E, R>,
      codec?: Codec.Codec<A>
    ) => wrapWith(key, compute, codec ?? (Codecs.bytes as unknown as Codec.Codec<A>))

    const stats = Effect.sync((): SF.Stats => ({
      bypassed: counters.bypassed,
      failures: counters.failures,
      breaker: breaker?.state ?? "none",
      breakerOpened: breaker?.opened ?? 0
    }))

    return { wrap, stats } satisfies SF.RedisSingleFlight
  })
