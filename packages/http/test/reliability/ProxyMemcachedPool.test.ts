/**
 * `cachekit proxy --backend memcached` over a pool of three memcached servers, one of which hangs
 * (SIGSTOP) mid-run (issue 10): every request still gets the origin's 200; the hung server's keys
 * are MISSes fetched from the origin (the same keys on every pass: they are not moved to the live
 * servers), the others keep hitting; once the server is resumed its keys hit again.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger, LogLevel } from "effect"
import { existsSync } from "node:fs"
import { fetchVia, layerOrigin, OriginTag } from "../fixtures/proxyOrigin.js"
import { itemRoutes, memcachedServer, startProxy } from "../fixtures/proxyRun.js"

const hasMemcached = existsSync("/usr/bin/memcached") || process.env["CACHEKIT_REQUIRE_SERVERS"] === "1"

describe.skipIf(!hasMemcached)("cachekit proxy on a memcached pool losing a server", () => {
  it.scopedLive(
    "answers every request from the origin or the live servers; the hung server's keys are misses",
    () =>
      Effect.gen(function*() {
        const origin = yield* OriginTag
        const servers = yield* Effect.all([memcachedServer, memcachedServer, memcachedServer])
        const running = yield* startProxy(origin.url, {
          CACHEKIT_BACKEND: "memcached",
          CACHEKIT_MEMCACHED_SERVERS: servers.map((s) => s.address).join(","),
          CACHEKIT_MEMCACHED_TIMEOUT: "1 second"
        })
        const ids = Array.from({ length: 30 }, (_, i) => `p${i}`)
        /** One request per id; the ids answered as a hit, and any status other than 200. */
        const pass = Effect.gen(function*() {
          const hits = new Set<string>()
          const notOk: Array<string> = []
          yield* Effect.forEach(ids, (id) =>
            Effect.map(fetchVia(`${running.proxy.url}/item?id=${id}`), (res) => {
              if (res.status !== 200 || res.text !== `${id}:1`) notOk.push(`${id}: ${res.status} ${res.text}`)
              if (String(res.headers["cache-status"]).includes("hit")) hits.add(id)
            }), { concurrency: 4, discard: true })
          return { hits, notOk }
        })

        const warm = yield* pass
        expect(warm.notOk).toEqual([])
        expect(warm.hits.size).toBe(0)
        expect((yield* pass).hits.size).toBe(ids.length)
        expect(yield* origin.count("/item")).toBe(ids.length)

        servers[2]!.signal("SIGSTOP")
        const during = [yield* pass, yield* pass]
        expect(during.map((p) => p.notOk)).toEqual([[], []])
        const missed = during.map((p) => ids.filter((id) => !p.hits.has(id)))
        const both = missed[0]!.filter((id) => missed[1]!.includes(id))
        expect(both.length, JSON.stringify({ missed, warmHits: warm.hits.size })).toBeGreaterThan(0)
        expect(both.length).toBeLessThan(ids.length)
        // The same keys miss on the second pass: they were not re-homed on a live server (which would
        // have made them hits). A key or two may miss once more or less when a live server answers
        // past the timeout on a loaded machine; re-homing would flip all of them.
        const once = ids.filter((id) => missed[0]!.includes(id) !== missed[1]!.includes(id))
        expect(once.length).toBeLessThanOrEqual(2)
        expect(yield* origin.count("/item")).toBe(ids.length + missed[0]!.length + missed[1]!.length)

        // resumed with its data: after the next probe its keys hit again
        servers[2]!.signal("SIGCONT")
        yield* Effect.sleep("1100 millis")
        yield* pass
        const back = yield* pass
        expect(back.notOk).toEqual([])
        expect(back.hits.size).toBe(ids.length)
      }).pipe(Effect.provide(layerOrigin(itemRoutes)), Logger.withMinimumLogLevel(LogLevel.Error)),
    30_000
  )
})
