/**
 * A pool of three memcached servers losing one mid-run (issue 10), on real servers this file
 * starts itself (so the shared ones of the other suites are not disturbed).
 *
 * - The per-server breaker, on TestClock: `markDownAfter` failures mark a server down (its keys
 *   fail at once), one probe per `retryDownAfter`, back up after a probe succeeds; `onServerDown:
 *   "miss"` turns the dead server's reads into misses.
 * - A hung server's timed-out sockets are closed (memjs only ends them, and a hung server never
 *   answers), and every socket is closed with the scope.
 * - Under load through `Cache.getOrCompute`: one server hung (SIGSTOP), then killed and restarted
 *   empty on the same port. Keys on the two live servers keep hitting (no compute, same values);
 *   keys of the dead one are misses that compute, never failed requests; they are not moved to
 *   the live servers; only a bounded number of requests pay the timeout; after the server returns
 *   its keys are re-filled once and hit again.
 */
import { MemcachedBackend } from "@cachekit/backends"
import { Cache, CacheBackend, CacheEntry } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import type { Scope } from "effect"
import { Effect, Either, Exit, Option, TestClock } from "effect"
import memjs from "memjs"
import { Socket } from "node:net"
import * as HashRing from "../../src/internal/hashRing.js"
import { freePort, hasBinary, type ServerProcess, startMemcached } from "../servers.js"

const available = hasBinary("memcached")
const TIMEOUT_MILLIS = 300

const memcached = (port?: number): Effect.Effect<ServerProcess, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.promise(() => startMemcached(port)), (s) =>
    Effect.promise(async () => {
      s.signal("SIGCONT")
      await s.kill()
    }))

const entry = (value: string) =>
  Effect.map(
    Effect.clockWith((c) => c.currentTimeMillis),
    (now) => CacheEntry.make({ value: new TextEncoder().encode(value), createdAt: now, expiresAt: now + 60_000 })
  )

const failureOf = <A, E>(result: Either.Either<A, E>): string =>
  Either.isRight(result)
    ? "ok"
    : `${(result.left as { _tag: string })._tag}: ${(result.left as { message: string }).message}`

describe.skipIf(!available)("MemcachedBackend per-server breaker", () => {
  it.scoped("marks a refusing server down, probes it once per retryDownAfter, and takes it back when it answers", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(() => freePort())
      const backend = yield* MemcachedBackend.make({
        servers: [`127.0.0.1:${port}`],
        prefix: "breaker:",
        timeout: `${TIMEOUT_MILLIS} millis`,
        markDownAfter: 2,
        retryDownAfter: "1 second"
      })
      const get = Effect.map(Effect.either(backend.get("k")), failureOf)
      // nothing listens: the first two reads are refused by the OS, then the server is marked down
      expect(yield* get).toMatch(/^BackendUnavailable: .*ECONNREFUSED/)
      expect(yield* get).toMatch(/^BackendUnavailable: .*ECONNREFUSED/)
      expect(yield* get).toMatch(/^BackendUnavailable: .*marked down after 2 consecutive failures/)
      yield* TestClock.adjust("999 millis")
      expect(yield* get).toMatch(/marked down/)
      // one probe after the period; it fails, so the server stays down for another period
      yield* TestClock.adjust("1 millis")
      expect(yield* get).toMatch(/^BackendUnavailable: .*ECONNREFUSED/)
      expect(yield* get).toMatch(/marked down after 3 consecutive failures/)
      // the server starts; the next probe succeeds and every call goes through again
      yield* memcached(port)
      yield* TestClock.adjust("1 second")
      expect(yield* get).toBe("ok")
      yield* backend.set("k", yield* entry("v"))
      expect(Option.map(yield* backend.get("k"), (e) => new TextDecoder().decode(e.value))).toEqual(Option.some("v"))
    }))

  it.scoped("onServerDown: miss reads a down server's keys as misses, while writes and deletes still fail typed", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(() => freePort())
      const backend = yield* MemcachedBackend.make({
        servers: [`127.0.0.1:${port}`],
        prefix: "miss:",
        timeout: `${TIMEOUT_MILLIS} millis`,
        markDownAfter: 1,
        onServerDown: "miss"
      })
      // refused, then marked down: both read as misses
      expect(yield* backend.get("k")).toEqual(Option.none())
      expect(yield* backend.get("k")).toEqual(Option.none())
      expect(failureOf(yield* Effect.either(backend.set("k", yield* entry("v"))))).toMatch(/^BackendUnavailable/)
      expect(failureOf(yield* Effect.either(backend.delete("k")))).toMatch(/^BackendUnavailable/)
      const cache = yield* Cache.make().pipe(Effect.provideService(CacheBackend.CacheBackendTag, backend))
      expect(yield* cache.get("k")).toEqual(Option.none())
    }))
})

/** Sockets of this process connected to 127.0.0.1:`port` that are still open. */
const openSocketsTo = (port: number): number =>
  (process as unknown as { _getActiveHandles: () => Array<unknown> })._getActiveHandles().filter((h) =>
    h instanceof Socket && h.remotePort === port && !h.destroyed
  ).length

describe.skipIf(!available)("MemcachedBackend and a hung server's sockets", () => {
  it.live(
    "closes every socket it timed out, and all of them when its scope closes",
    () =>
      Effect.scoped(Effect.gen(function*() {
        const server = yield* memcached()
        yield* Effect.scoped(Effect.gen(function*() {
          const backend = yield* MemcachedBackend.make({
            servers: [`127.0.0.1:${server.port}`],
            prefix: "sockets:",
            timeout: "200 millis",
            markDownAfter: 1,
            retryDownAfter: "100 millis"
          })
          expect(yield* backend.get("k")).toEqual(Option.none())
          server.signal("SIGSTOP")
          // about one probe every 300 ms (100 ms down, then a 200 ms timeout), each on a new socket
          let timedOut = 0
          const until = Date.now() + 1500
          while (Date.now() < until) {
            const result = yield* Effect.either(backend.get("k"))
            if (Either.isLeft(result) && result.left._tag === "BackendTimeout") timedOut++
            yield* Effect.sleep("20 millis")
          }
          expect(timedOut).toBeGreaterThanOrEqual(3)
          expect(openSocketsTo(server.port)).toBeLessThanOrEqual(1)
        }))
        expect(openSocketsTo(server.port)).toBe(0)
      })),
    10_000
  )
})

interface Tally {
  requests: number
  failures: number
  wrong: number
  /** Requests that ran the compute (misses). */
  computed: number
}

const tally = (): Tally => ({ requests: 0, failures: 0, wrong: 0, computed: 0 })

describe.skipIf(!available)("MemcachedBackend pool of three, one server lost mid-run", () => {
  it.live(
    "live servers' keys keep hitting, the dead one's keys are misses (not errors) until it returns",
    () =>
      Effect.scoped(Effect.gen(function*() {
        const servers = yield* Effect.all([memcached(), memcached(), memcached()])
        const addresses = servers.map((s) => `127.0.0.1:${s.port}`)
        const prefix = "pool:"
        const ring = HashRing.make(addresses, (a) => a)
        const keys = Array.from({ length: 90 }, (_, i) => `page:${i}`)
        const dead = servers[2]!
        const deadAddress = addresses[2]!
        const onDead = new Set(keys.filter((k) => ring.locate(MemcachedBackend.storageKey(prefix, k)) === deadAddress))
        expect(onDead.size).toBeGreaterThan(10)
        expect(onDead.size).toBeLessThan(keys.length - 20)

        const backend = yield* MemcachedBackend.make({
          servers: addresses,
          prefix,
          // generous: a live server answering late on a loaded machine would count as a failure
          timeout: "2 seconds",
          markDownAfter: 3,
          retryDownAfter: "500 millis"
        })
        const cache = yield* Cache.make({ ttl: "1 minute" }).pipe(
          Effect.provideService(CacheBackend.CacheBackendTag, backend)
        )
        const origin = (key: string) => `${key}@origin`

        /** `rounds` passes over every key with `concurrency` requests in flight; tallies live and dead keys apart. */
        const load = (rounds: number, concurrency = 8) =>
          Effect.gen(function*() {
            const live = tally()
            const lost = tally()
            const work = Array.from({ length: rounds }, () => keys).flat()
            yield* Effect.forEach(work, (key) =>
              Effect.gen(function*() {
                const t = onDead.has(key) ? lost : live
                let ran = false
                const compute = Effect.sync(() => {
                  ran = true
                  return new TextEncoder().encode(origin(key))
                })
                const exit = yield* Effect.exit(cache.getOrCompute(key, compute))
                t.requests++
                if (ran) t.computed++
                if (Exit.isFailure(exit)) t.failures++
                else if (new TextDecoder().decode(exit.value) !== origin(key)) t.wrong++
              }), { concurrency, discard: true })
            return { live, lost }
          })

        // warm: every key computed once, then all hits
        const warm = yield* load(1)
        expect(warm.live.computed + warm.lost.computed).toBe(keys.length)
        const steady = yield* load(1)
        expect(steady.live.computed + steady.lost.computed).toBe(0)

        // one server hangs: its keys become misses (computed), the others keep hitting
        dead.signal("SIGSTOP")
        const direct = yield* Effect.forEach(
          Array.from({ length: 3 }, () => [...onDead]).flat(),
          (k) => Effect.either(backend.get(k)),
          { concurrency: 4 }
        )
        const outageStart = Date.now()
        const outage = yield* load(4)
        const outageMillis = Date.now() - outageStart
        const directFailures = direct.filter(Either.isLeft).map((e) => e.left)
        const timedOut = directFailures.filter((e) => e._tag === "BackendTimeout").length
        const markedDown = directFailures.filter((e) => /marked down/.test(e.message)).length
        const stats = yield* cache.stats
        console.log(
          `memcached pool, one server hung: ${
            JSON.stringify({ outage, outageMillis, directFailures: directFailures.length, timedOut, markedDown, stats })
          }`
        )

        expect(directFailures.length).toBe(direct.length)
        expect(directFailures.every((e) => e._tag === "BackendTimeout" || e._tag === "BackendUnavailable")).toBe(true)
        // only the calls in flight when the server hung, and one probe per period, pay the timeout
        expect(timedOut).toBeLessThanOrEqual(4 + 1)
        expect(markedDown).toBeGreaterThan(direct.length / 2)
        expect(outage.live).toEqual({ requests: 4 * (keys.length - onDead.size), failures: 0, wrong: 0, computed: 0 })
        expect(outage.lost).toEqual({ requests: 4 * onDead.size, failures: 0, wrong: 0, computed: 4 * onDead.size })
        expect(stats.backendErrors).toBeGreaterThan(0)

        // the dead server's keys were not moved to the live servers
        const raw = yield* Effect.acquireRelease(
          Effect.sync(() => addresses.slice(0, 2).map((a) => memjs.Client.create(a, { logger: { log: () => {} } }))),
          (clients) => Effect.sync(() => clients.forEach((c) => c.close()))
        )
        for (const k of onDead) {
          for (const client of raw) {
            const stored = yield* Effect.promise(() => client.get(MemcachedBackend.storageKey(prefix, k)))
            expect(stored.value).toBeNull()
          }
        }

        // it comes back empty on the same port: after the next probe its keys are computed once, then hit
        yield* Effect.promise(() => dead.kill())
        yield* memcached(dead.port)
        yield* Effect.sleep("600 millis")
        const refill = yield* load(1, 1)
        const after = yield* load(2)
        console.log(`memcached pool, server back: ${JSON.stringify({ refill, after })}`)
        expect(refill.live).toEqual({ requests: keys.length - onDead.size, failures: 0, wrong: 0, computed: 0 })
        expect(refill.lost).toEqual({ requests: onDead.size, failures: 0, wrong: 0, computed: onDead.size })
        expect(after.live.computed + after.lost.computed).toBe(0)
        expect(after.live.failures + after.lost.failures + after.live.wrong + after.lost.wrong).toBe(0)
        expect((yield* backend.health).status).toBe("up")
      })),
    30_000
  )
})
