/**
 * Two `cachekit proxy` PROCESSES (`--backend memory+redis`, the Redis Pub/Sub invalidation bus on by
 * default) sharing one redis-server and one origin: what one instance invalidates, the other stops
 * serving from its memory L1 right away; a stampede of misses spread over both reaches the origin
 * once (distributed single-flight, `--single-flight`).
 */
import { HttpServerResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { fetchVia, layerOrigin, OriginTag } from "./fixtures/proxyOrigin.js"
import { ADMIN_TOKEN, hasRedis, proxyProcess, redisServer } from "./fixtures/proxyProcess.js"
import { itemRoutes, versions } from "./fixtures/proxyRun.js"

/** `/slow-item?id=..`: cacheable, answered after 150 ms so that concurrent misses overlap. */
const slowRoutes = {
  "/slow-item": (seen: { readonly url: string }) =>
    Effect.as(
      Effect.sleep(150),
      HttpServerResponse.text(`slow ${new URL(seen.url, "http://o").searchParams.get("id")}`, {
        headers: { "cache-control": "public, max-age=60" }
      })
    )
}

describe.skipIf(!hasRedis)("two cachekit proxy processes on one Redis", () => {
  it.scopedLive(
    "an invalidate (admin API, then PURGE) through instance A reaches instance B's memory L1 within 100 ms",
    () =>
      Effect.gen(function*() {
        const origin = yield* OriginTag
        const { url: redisUrl } = yield* redisServer()
        const [a, b] = yield* Effect.all([proxyProcess(origin.url, redisUrl), proxyProcess(origin.url, redisUrl)], {
          concurrency: 2
        })
        expect(a.output()).toContain("invalidation bus: redis pub/sub")

        // warm both processes up (JIT, connections) so the timing below is the bus, not a cold start
        for (const id of ["warm1", "warm2"]) {
          yield* fetchVia(`${a.url}/item?id=${id}`)
          yield* fetchVia(`${b.url}/item?id=${id}`)
        }
        const path = "/item?id=multi"
        const originBefore = yield* origin.count("/item")
        expect((yield* fetchVia(a.url + path)).text).toBe("multi:1") // miss at A: origin, L1(A) + Redis
        expect((yield* fetchVia(b.url + path)).text).toBe("multi:1") // B: from Redis, promoted to L1(B)
        // A's write told B to drop its copy; let that message land, then B promotes it again
        yield* Effect.sleep("50 millis")
        const cachedAtB = yield* fetchVia(b.url + path)
        expect(cachedAtB.text).toBe("multi:1")
        expect(cachedAtB.headers["cache-status"]).toContain("hit")
        // precondition: B holds the old version in its memory L1 (without the bus it would keep serving it)
        const key = `GET ${origin.url}${path}`
        const entryAtB = yield* fetchVia(`${b.adminUrl}/entries/${encodeURIComponent(key)}`, {
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` }
        })
        expect(JSON.parse(entryAtB.text)).toMatchObject({ key, tier: "memory" })
        expect((yield* origin.count("/item")) - originBefore).toBe(1)

        versions.set("multi", 2)
        const invalidated = yield* fetchVia(`${a.adminUrl}/invalidate`, {
          method: "POST",
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
          body: JSON.stringify({ keys: [key] })
        })
        expect(invalidated.status).toBe(200)
        const invalidatedAt = performance.now()
        // Requests to B back to back: the first one answered with the new version (a miss: B's L1
        // copy is gone) must have been SENT within 100 ms of the invalidate returning. Send time,
        // not answer time: the refetch from the origin on this shared 2-core machine is not the bus.
        const trace: Array<string> = []
        let firstNewSentAt: number | undefined
        while (firstNewSentAt === undefined && performance.now() - invalidatedAt < 1000) {
          const sentAt = performance.now() - invalidatedAt
          const res = yield* fetchVia(b.url + path)
          trace.push(`sent +${sentAt.toFixed(1)} ms: ${res.text} (${res.headers["cache-status"]})`)
          if (res.text === "multi:2") {
            expect(res.headers["cache-status"]).not.toContain("hit")
            firstNewSentAt = sentAt
          }
        }
        const shown = trace.slice(0, 12).join("; ") + (trace.length > 12 ? `; ... (${trace.length} requests)` : "")
        yield* Effect.logInfo(`B after A's invalidate: ${shown}`)
        expect(firstNewSentAt, shown).toBeDefined()
        expect(firstNewSentAt!, shown).toBeLessThanOrEqual(100)
        expect((yield* origin.count("/item")) - originBefore).toBe(2)
        // A refetches nothing: B's fresh copy went to Redis (and B's write told A's L1 to drop its copy)
        const atA = yield* fetchVia(a.url + path)
        expect(atA.text).toBe("multi:2")
        expect(atA.headers["cache-status"]).toContain("hit")
        expect((yield* origin.count("/item")) - originBefore).toBe(2)

        // (b) the same through a PURGE on A's proxy port
        const purgePath = "/item?id=purge-multi"
        yield* fetchVia(a.url + purgePath)
        yield* fetchVia(b.url + purgePath)
        yield* Effect.sleep("50 millis")
        expect((yield* fetchVia(b.url + purgePath)).headers["cache-status"]).toContain("hit")
        const purgeKey = `GET ${origin.url}${purgePath}`
        const purgeEntryAtB = yield* fetchVia(`${b.adminUrl}/entries/${encodeURIComponent(purgeKey)}`, {
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` }
        })
        expect(JSON.parse(purgeEntryAtB.text)).toMatchObject({ tier: "memory" })
        versions.set("purge-multi", 2)
        const purged = yield* fetchVia(a.url + purgePath, {
          method: "PURGE",
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` }
        })
        expect(purged.status).toBe(200)
        const purgedAt = performance.now()
        let purgeSeenAt: number | undefined
        while (purgeSeenAt === undefined && performance.now() - purgedAt < 1000) {
          const sentAt = performance.now() - purgedAt
          if ((yield* fetchVia(b.url + purgePath)).text === "purge-multi:2") purgeSeenAt = sentAt
        }
        expect(purgeSeenAt).toBeDefined()
        expect(purgeSeenAt!).toBeLessThanOrEqual(100)
      }).pipe(Effect.provide(layerOrigin(itemRoutes))),
    90_000
  )

  it.scopedLive(
    "200 concurrent misses of one URL spread over both processes reach the origin once (twice with --single-flight none)",
    () =>
      Effect.gen(function*() {
        const origin = yield* OriginTag
        const { url: redisUrl } = yield* redisServer()
        // a pair with the default (auto: on over memory+redis) and a pair with it off, on the same Redis
        const [a, b, offA, offB] = yield* Effect.all([
          proxyProcess(origin.url, redisUrl),
          proxyProcess(origin.url, redisUrl),
          proxyProcess(origin.url, redisUrl, ["--single-flight", "none"]),
          proxyProcess(origin.url, redisUrl, ["--single-flight", "none"])
        ], { concurrency: 4 })
        expect(a.output()).toContain("single-flight: redis")
        expect(offA.output()).not.toContain("single-flight")
        const stampede = (urls: readonly [string, string], id: string) =>
          Effect.gen(function*() {
            const before = yield* origin.count("/slow-item")
            const answers = yield* Effect.all(
              Array.from({ length: 200 }, (_, i) => fetchVia(`${urls[i % 2]}/slow-item?id=${id}`)),
              { concurrency: "unbounded" }
            )
            expect(answers.filter((r) => r.status === 200 && r.text === `slow ${id}`).length).toBe(200)
            return (yield* origin.count("/slow-item")) - before
          })
        expect(yield* stampede([a.url, b.url], "on")).toBe(1)
        expect(yield* stampede([offA.url, offB.url], "off")).toBeGreaterThan(1)
      }).pipe(Effect.provide(layerOrigin({ ...itemRoutes, ...slowRoutes }))),
    90_000
  )
})
