/**
 * Failover under load on a real Redis Cluster (issue 10). The file starts its own 3-master /
 * 3-replica cluster (`cluster-node-timeout` 2000 ms, `cluster-require-full-coverage no`) so that
 * stopping a master does not disturb the other suites. While workers run get/set through
 * `RedisBackend` and `Cache.getOrCompute` over keys on all three masters, one master is hung with
 * SIGSTOP (its sockets stay open and only timeouts tell) or killed with SIGKILL (connections
 * refused), its replica takes over, and the test measures and asserts:
 *
 * - direct backend ops on the hung master's slots fail with a typed `BackendTimeout` /
 *   `BackendUnavailable`, each within a bound (< 3 s; commandTimeout is 1 s), while ops on the
 *   other masters' slots never fail;
 * - after the replica is promoted, ops on the affected slots succeed again (the client refreshes
 *   its slot map), and keep succeeding;
 * - every `Cache.getOrCompute` request during the whole run succeeds with the origin's value;
 * - when the scope closes, no client connection is left open on any node.
 */
import { RedisBackend } from "@cachekit/backends"
import { Cache, CacheBackend, CacheEntry } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Either, Exit, Fiber, Option } from "effect"
import { Redis } from "ioredis"
import { keySlot } from "../../src/internal/redisCluster.js"
import { type RedisClusterProcess, startRedisCluster } from "../cluster.js"
import { hasBinary } from "../servers.js"

const available = hasBinary("redis-server") && hasBinary("redis-cli")
const COMMAND_TIMEOUT_MILLIS = 1000
/** The correctness bound of one failing op (not a performance target): a few command timeouts. */
const OP_BOUND_MILLIS = 3000

interface NodeInfo {
  readonly id: string
  readonly port: number
  readonly flags: ReadonlyArray<string>
  readonly masterId: string
  readonly slots: ReadonlyArray<readonly [number, number]>
}

/** A short-lived connection to one node, for admin commands. */
const onNode = <A>(port: number, f: (redis: Redis) => Promise<A>): Promise<A> => {
  const redis = new Redis({ host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 0, commandTimeout: 3000 })
  redis.on("error", () => {})
  return redis.connect().then(() => f(redis)).finally(() => redis.disconnect())
}

/** CLUSTER NODES as seen by the node on `port`. */
const clusterNodes = (port: number): Promise<Array<NodeInfo>> =>
  onNode(port, (r) => r.call("CLUSTER", "NODES") as Promise<string>).then((text) =>
    text.trim().split("\n").map((line) => {
      const [id, address, flags, masterId, , , , , ...slots] = line.split(" ")
      return {
        id: id!,
        port: Number(address!.split("@")[0]!.split(":")[1]),
        flags: flags!.split(","),
        masterId: masterId!,
        slots: slots.filter((s) => !s.startsWith("[")).map((s) => {
          const [from, to] = s.split("-")
          return [Number(from), Number(to ?? from)] as const
        })
      }
    })
  )

/** Client connections to the node on `port`, replication links left out (this one included). */
const connectedClients = (port: number): Promise<number> =>
  onNode(port, (r) => r.call("CLIENT", "LIST", "TYPE", "normal") as Promise<string>).then((list) =>
    list.trim().split("\n").length
  )

const tagOf = (error: unknown): string =>
  typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : "untyped"

const sleep = (millis: number) => Effect.sleep(`${millis} millis`)

const waitFor = (what: string, check: () => Promise<boolean>, timeoutMillis: number) =>
  Effect.promise(async () => {
    const deadline = Date.now() + timeoutMillis
    while (Date.now() < deadline) {
      if (await check().catch(() => false)) return Date.now()
      await new Promise((r) => setTimeout(r, 50))
    }
    throw new Error(`${what} within ${timeoutMillis} ms`)
  })

interface Outcome {
  readonly key: string
  readonly at: number
  readonly millis: number
  /** undefined: succeeded; else the failure's tag (or "defect"). */
  readonly failure: string | undefined
}

const cluster = Effect.acquireRelease(
  Effect.promise(() =>
    startRedisCluster({ nodeTimeoutMillis: 2000, requireFullCoverage: false, waitForReplicas: true })
  ),
  (c) => Effect.promise(() => c.stop())
)

/** How the master is lost: hung (SIGSTOP, its sockets stay open) or crashed (SIGKILL, connections refused). */
const SCENARIOS = [
  { how: "hung", signal: "SIGSTOP" },
  { how: "crashed", signal: "SIGKILL" }
] as const

describe.skipIf(!available)("RedisBackend on a Redis Cluster losing a master under load", () => {
  it.live.each(SCENARIOS)(
    "master $how: fails fast and typed on the lost slots only, recovers after the failover, Cache callers never fail",
    ({ how, signal }) =>
      Effect.scoped(Effect.gen(function*() {
        const rc: RedisClusterProcess = yield* cluster
        const ports = rc.nodes.map((n) => n.port)
        const before = yield* Effect.promise(() => clusterNodes(ports[0]!))
        const owner = (key: string) => {
          const slot = keySlot(key)
          return before.find((n) => n.slots.some(([from, to]) => slot >= from && slot <= to))!
        }
        const keys = Array.from({ length: 60 }, (_, i) => `item:${i}`)
        const victim = owner(keys[0]!)
        const replica = before.find((n) => n.masterId === victim.id)!
        const affected = new Set(keys.filter((k) => owner(k).id === victim.id))
        expect(new Set(keys.map((k) => owner(k).id)).size).toBe(3)
        expect(replica).toBeDefined()

        const origin = (key: string) => new TextEncoder().encode(`origin:${key}`)
        const entry = (key: string) => {
          const now = Date.now()
          return CacheEntry.make({ value: origin(key), createdAt: now, expiresAt: now + 60_000 })
        }

        let stopped = false
        const direct: Array<Outcome> = []
        const cached: Array<Outcome & { readonly wrong: boolean }> = []
        let computes = 0
        let peakClients = 0

        yield* Effect.scoped(Effect.gen(function*() {
          const backend = yield* RedisBackend.make({
            cluster: rc.nodes,
            prefix: "fo:",
            commandTimeout: `${COMMAND_TIMEOUT_MILLIS} millis`,
            connectTimeout: "1 second"
          })
          const cache = yield* Cache.make({ ttl: "1 minute" }).pipe(
            Effect.provideService(CacheBackend.CacheBackendTag, backend)
          )
          yield* Effect.forEach(keys, (k) => backend.set(k, entry(k)), { concurrency: 10 })

          const timed = <A, E>(key: string, op: Effect.Effect<A, E>) =>
            Effect.gen(function*() {
              const at = Date.now()
              const exit = yield* Effect.exit(op)
              const millis = Date.now() - at
              const failure = Exit.isSuccess(exit)
                ? undefined
                : Option.match(Cause.failureOption(exit.cause), { onNone: () => "defect", onSome: tagOf })
              return { exit, outcome: { key, at, millis, failure } }
            })

          const directWorker = (w: number) =>
            Effect.gen(function*() {
              for (let i = w; !stopped; i += 4) {
                const key = keys[i % keys.length]!
                const { outcome } = yield* timed(key, i % 3 === 0 ? backend.set(key, entry(key)) : backend.get(key))
                direct.push(outcome)
                yield* sleep(2)
              }
            })
          const cacheWorker = (w: number) =>
            Effect.gen(function*() {
              for (let i = w; !stopped; i += 4) {
                const key = keys[i % keys.length]!
                const compute = Effect.sync(() => {
                  computes++
                  return origin(key)
                })
                const { exit, outcome } = yield* timed(key, cache.getOrCompute(key, compute))
                const wrong = Exit.isSuccess(exit) && new TextDecoder().decode(exit.value) !== `origin:${key}`
                cached.push({ ...outcome, wrong })
                yield* sleep(2)
              }
            })
          const load = yield* Effect.fork(
            Effect.all([0, 1, 2, 3].flatMap((w) => [directWorker(w), cacheWorker(w)]), {
              concurrency: "unbounded",
              discard: true
            })
          )

          yield* sleep(500)
          peakClients = Math.max(...(yield* Effect.promise(() => Promise.all(ports.map(connectedClients)))))
          const stoppedAt = Date.now()
          rc.signal(victim.port, signal)
          // the replica takes over once the others agree the master failed (node timeout + election)
          const promotedAt = yield* waitFor("the replica was not promoted", async () => {
            const view = await clusterNodes(replica.port)
            const self = view.find((n) => n.id === replica.id)!
            const old = view.find((n) => n.id === victim.id)!
            return self.flags.includes("master") && self.slots.length > 0 && old.flags.includes("fail")
          }, 15_000)
          // direct ops on the lost slots succeed again once the client has the new slot map
          const recoveredAt = yield* waitFor("ops on the lost slots did not recover", async () => {
            const results = await Effect.runPromise(
              Effect.forEach([...affected], (k) => Effect.either(backend.get(k)), { concurrency: "unbounded" })
            )
            return results.every(Either.isRight)
          }, 10_000)
          // and they keep succeeding under load
          const steadyFrom = Date.now()
          const steadyOps = () => direct.filter((o) => affected.has(o.key) && o.at >= steadyFrom).length
          yield* waitFor("the workers made no progress", () => Promise.resolve(steadyOps() >= 20), 10_000)
          stopped = true
          yield* Fiber.join(load)

          const afterStop = direct.filter((o) => o.at >= stoppedAt)
          const failures = direct.filter((o) => o.failure !== undefined)
          const firstFailure = failures.find((o) => o.at >= stoppedAt)
          const timings = {
            detectMillis: firstFailure === undefined ? undefined : firstFailure.at + firstFailure.millis - stoppedAt,
            promoteMillis: promotedAt - stoppedAt,
            recoverMillis: recoveredAt - stoppedAt,
            directOps: direct.length,
            directFailures: failures.length,
            directFailuresByTag: Object.fromEntries(
              [...new Set(failures.map((o) => o.failure!))].map((t) => [
                t,
                failures.filter((o) => o.failure === t).length
              ])
            ),
            slowestFailureMillis: Math.max(0, ...failures.map((o) => o.millis)),
            cacheRequests: cached.length,
            cacheFailures: cached.filter((o) => o.failure !== undefined).length,
            slowestCacheRequestMillis: Math.max(0, ...cached.map((o) => o.millis)),
            computes
          }
          console.log(`failover under load, master ${how}: ${JSON.stringify(timings)}`)

          // (a) the hung master's slots fail, typed and bounded; the other slots never fail
          expect(afterStop.filter((o) => affected.has(o.key) && o.failure !== undefined).length).toBeGreaterThan(0)
          for (const o of failures) {
            expect(affected.has(o.key), `${o.key} (${o.failure}) is not on the lost master`).toBe(true)
            expect(o.failure).toMatch(/^Backend(Timeout|Unavailable)$/)
            expect(o.millis).toBeLessThan(OP_BOUND_MILLIS)
          }
          expect(afterStop.filter((o) => !affected.has(o.key)).length).toBeGreaterThan(100)
          // (b) after the promotion the lost slots are served again, and stay served
          expect(failures.filter((o) => o.at >= steadyFrom)).toEqual([])
          expect(afterStop.filter((o) => affected.has(o.key) && o.at >= steadyFrom && o.failure === undefined).length)
            .toBeGreaterThanOrEqual(20)
          // (c) every Cache request was answered, with the origin's value
          expect(cached.length).toBeGreaterThan(200)
          expect(cached.filter((o) => o.failure !== undefined)).toEqual([])
          expect(cached.filter((o) => o.wrong)).toEqual([])
        }))

        // the backend's scope is closed: no connection of ours is left on any node
        if (signal === "SIGSTOP") rc.signal(victim.port, "SIGCONT")
        const alive = signal === "SIGSTOP" ? ports : ports.filter((p) => p !== victim.port)
        expect(peakClients).toBeGreaterThan(1)
        yield* waitFor("connections were left open", async () => {
          const counts = await Promise.all(alive.map(connectedClients))
          // each count includes the connection asking
          return counts.every((c) => c === 1)
        }, 5000)
      })),
    40_000
  )
})
