/**
 * The L1 resync after a bus reconnect, across real processes: two `cachekit proxy --backend
 * memory+redis` processes on one spawned redis-server hold a URL in their memory L1; the
 * redis-server is SIGKILLed and started again on the same port (empty: no persistence) while the
 * origin's answer changes. Nothing tells either process about the change (the Pub/Sub messages are
 * gone with the server), so only the resync can stop them serving their old L1 copies: once each
 * bus reports `Reconnected`, the `TieredCache` clears its local tier (docs/scale-out.md).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { fetchVia, layerOrigin, OriginTag } from "./fixtures/proxyOrigin.js"
import { ADMIN_TOKEN, exited, hasRedis, proxyProcess, redisServer, waitForOutput } from "./fixtures/proxyProcess.js"
import { itemRoutes, versions } from "./fixtures/proxyRun.js"

const count = (text: string, needle: string) => text.split(needle).length - 1

describe.skipIf(!hasRedis)("cachekit proxy processes across a Redis restart", () => {
  it.scopedLive(
    "answer from the origin while Redis is down, and drop their L1 copies once the bus has reconnected",
    () =>
      Effect.gen(function*() {
        const origin = yield* OriginTag
        const redis = yield* redisServer()
        const [a, b] = yield* Effect.all([proxyProcess(origin.url, redis.url), proxyProcess(origin.url, redis.url)], {
          concurrency: 2
        })
        const auth = { authorization: `Bearer ${ADMIN_TOKEN}` }
        const tierAt = (adminUrl: string, path: string) =>
          Effect.map(
            fetchVia(`${adminUrl}/entries/${encodeURIComponent(`GET ${origin.url}${path}`)}`, { headers: auth }),
            (res) => res.status === 200 ? (JSON.parse(res.text) as { tier: string }).tier : `status ${res.status}`
          )

        // Two URLs in BOTH memory L1s: after the restart, `first` is asked at A first and `second` at
        // B first, so each process shows its own resync (a store by the other one would also tell
        // it to drop its copy).
        const first = "/item?id=resync-a"
        const second = "/item?id=resync-b"
        for (const path of [first, second]) {
          expect((yield* fetchVia(a.url + path)).text).toMatch(/:1$/)
          expect((yield* fetchVia(b.url + path)).text).toMatch(/:1$/)
        }
        // A's store told B to drop its copy: let those messages land, then read again to refill the L1s
        yield* Effect.sleep("100 millis")
        for (const path of [first, second]) {
          for (const proxy of [a, b]) {
            expect((yield* fetchVia(proxy.url + path)).headers["cache-status"]).toContain("hit")
            expect(yield* tierAt(proxy.adminUrl, path)).toBe("memory")
          }
        }
        const originBefore = yield* origin.count("/item")

        // Redis goes away; the origin changes meanwhile.
        redis.child.kill("SIGKILL")
        yield* exited(redis.child)
        versions.set("resync-a", 2)
        versions.set("resync-b", 2)
        for (const proxy of [a, b]) {
          yield* waitForOutput(proxy.output, (out) =>
            out.includes("invalidation bus disconnected") || undefined, "bus disconnected")
        }
        // Still serving: a new URL comes from the origin (the L2 errors are not the client's problem) ...
        const whileDown = yield* fetchVia(a.url + "/item?id=while-down")
        expect(whileDown.status).toBe(200)
        expect(whileDown.text).toBe("while-down:1")
        const whileDownB = yield* fetchVia(b.url + "/item?id=while-down")
        expect(whileDownB.status).toBe(200)
        expect(whileDownB.text).toBe("while-down:1")
        // ... and the L1 copies still answer (nothing has told the processes about version 2 yet)
        expect((yield* fetchVia(b.url + first)).text).toBe("resync-a:1")
        expect((yield* fetchVia(a.url + second)).text).toBe("resync-b:1")

        // Redis is back on the same port, empty.
        const reconnectsBefore = [a, b].map((p) =>
          count(p.output(), "bus reconnected, clearing the local tiers")
        )
        yield* redisServer(redis.port)
        for (const [i, proxy] of [a, b].entries()) {
          yield* waitForOutput(
            proxy.output,
            (out) => count(out, "bus reconnected, clearing the local tiers") > reconnectsBefore[i]! || undefined,
            "bus reconnected"
          )
        }
        // Each process answers the URL it is asked first with the new version: its L1 was cleared.
        const atA = yield* fetchVia(a.url + first)
        expect(atA.text).toBe("resync-a:2")
        expect(atA.headers["cache-status"]).not.toContain("hit")
        const atB = yield* fetchVia(b.url + second)
        expect(atB.text).toBe("resync-b:2")
        expect(atB.headers["cache-status"]).not.toContain("hit")
        // and the other URL as well (from the refilled Redis or the origin, never the old L1 copy)
        expect((yield* fetchVia(b.url + first)).text).toBe("resync-a:2")
        expect((yield* fetchVia(a.url + second)).text).toBe("resync-b:2")
        // while down: one request per process; after: one per URL (the second process reads Redis)
        expect((yield* origin.count("/item")) - originBefore).toBeGreaterThanOrEqual(4)
      }).pipe(Effect.provide(layerOrigin(itemRoutes))),
    120_000
  )
})
