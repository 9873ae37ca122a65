/**
 * The circuit breaker of `RedisSingleFlight` against a redis-server of this file that is hung
 * (SIGSTOP), not down: the TCP connection stays up and every command waits the command timeout.
 * The cool-down runs on the TestClock; only the hung commands take real time (the short timeout).
 */
import { RedisSingleFlight } from "@cachekit/backends"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger, LogLevel, TestClock } from "effect"
import { hasBinary, startRedis } from "./servers.js"

const text = (s: string) => new TextEncoder().encode(s)

/** Collects the messages logged at `Warning` and above. */
const warnings = () => {
  const seen: Array<string> = []
  const logger = Logger.make(({ logLevel, message }) => {
    if (LogLevel.greaterThanEqual(logLevel, LogLevel.Warning)) seen.push(String(message))
  })
  return { seen, layer: Logger.replace(Logger.defaultLogger, logger) }
}

/** A redis-server of the test's own (the test hangs it with SIGSTOP), resumed and killed with the scope. */
const ownRedis = Effect.acquireRelease(Effect.promise(() => startRedis()), (s) =>
  Effect.promise(() => {
    s.signal("SIGCONT")
    return s.kill()
  }))

describe("RedisSingleFlight circuit breaker over a hung Redis", () => {
  it.scoped.skipIf(!hasBinary("redis-server"))(
    "opens after N failures (one warning), computes without Redis while open, probes after the cool-down",
    () => {
      const logs = warnings()
      return Effect.gen(function*() {
        const server = yield* ownRedis
        const flight = yield* RedisSingleFlight.make({
          port: server.port,
          prefix: "sf-breaker:",
          commandTimeout: "200 millis",
          breaker: { failureThreshold: 2, resetAfter: "30 seconds" }
        })
        let computes = 0
        const compute = Effect.sync(() => text(`computed ${++computes}`))

        // healthy: one round trip, the compute runs as the holder
        expect(new TextDecoder().decode(yield* flight.wrap("k0", compute))).toBe("computed 1")
        expect(yield* flight.stats).toEqual({ bypassed: 0, failures: 0, breaker: "closed", breakerOpened: 0 })

        server.signal("SIGSTOP")
        // each of these waits the command timeout, then computes alone; the second opens the circuit
        yield* flight.wrap("k1", compute)
        expect((yield* flight.stats).breaker).toBe("closed")
        yield* flight.wrap("k2", compute)
        expect(yield* flight.stats).toEqual({ bypassed: 0, failures: 2, breaker: "open", breakerOpened: 1 })

        // open: Redis is not asked (no failure added), every call still gets its compute
        for (let i = 0; i < 5; i++) yield* flight.wrap(`open-${i}`, compute)
        expect(computes).toBe(8)
        expect(yield* flight.stats).toEqual({ bypassed: 5, failures: 2, breaker: "open", breakerOpened: 1 })
        // one warning for the change of state, none per call
        expect(logs.seen.length).toBe(1)
        expect(logs.seen[0]).toContain("2 failed commands in a row")

        // after the cool-down, one probe goes to the still hung Redis: it fails, the circuit re-opens
        yield* TestClock.adjust("29 seconds")
        yield* flight.wrap("still-open", compute)
        expect((yield* flight.stats).bypassed).toBe(6)
        yield* TestClock.adjust("2 seconds")
        yield* flight.wrap("probe-1", compute)
        expect(yield* flight.stats).toEqual({ bypassed: 6, failures: 3, breaker: "open", breakerOpened: 2 })
        expect(logs.seen.length).toBe(1)

        // Redis resumes; the next probe after the cool-down gets an answer and closes the circuit
        server.signal("SIGCONT")
        yield* TestClock.adjust("31 seconds")
        yield* flight.wrap("probe-2", compute)
        expect(yield* flight.stats).toEqual({ bypassed: 6, failures: 3, breaker: "closed", breakerOpened: 2 })
        // every call got its value from its own compute, once
        expect(computes).toBe(11)
        expect(logs.seen.length).toBe(1)
      }).pipe(Effect.provide(logs.layer))
    },
    20_000
  )

  it.scoped.skipIf(!hasBinary("redis-server"))(
    "with `breaker: false` every failure is a warning and Redis is always asked",
    () => {
      const logs = warnings()
      return Effect.gen(function*() {
        const server = yield* ownRedis
        const flight = yield* RedisSingleFlight.make({
          port: server.port,
          prefix: "sf-no-breaker:",
          commandTimeout: "100 millis",
          breaker: false
        })
        server.signal("SIGSTOP")
        for (let i = 0; i < 3; i++) yield* flight.wrap(`k${i}`, Effect.succeed(text("v")))
        expect(yield* flight.stats).toEqual({ bypassed: 0, failures: 3, breaker: "none", breakerOpened: 0 })
        expect(logs.seen.length).toBe(3)
      }).pipe(Effect.provide(logs.layer))
    },
    20_000
  )
})
