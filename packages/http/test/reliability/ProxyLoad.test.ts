/**
 * Load through the caching proxy: thousands of requests on 128 keep-alive connections against a real
 * origin on loopback, mixing hits, misses, revalidations (ETag/304), Vary variants, query variants,
 * origin 404s and 1..5 MiB bodies. Every byte is checked against what the origin sends for that URL
 * and language. `CACHEKIT_SOAK_REQUESTS=20000` (bench/soak) runs the long version and checks RSS.
 */
import { MemoryBackend } from "@cachekit/core"
import { Proxy } from "@cachekit/http"
import { NodeHttpClient } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { plan, rssOf, runLoad, startOrigin } from "./fixtures/loadRig.js"

const MIB = 1024 * 1024
const REQUESTS = Number(process.env["CACHEKIT_SOAK_REQUESTS"] ?? "3000")
const SOAK = REQUESTS >= 10_000

const origin = Effect.acquireRelease(Effect.promise(() => startOrigin()), (o) => Effect.promise(o.close))

const proxyOver = (upstream: string) =>
  Proxy.layerCaching({ upstream, port: 0 }).pipe(
    Layer.provide(MemoryBackend.layer({ maxBytes: 64 * MIB })),
    Layer.provide(NodeHttpClient.layerUndici)
  )

describe("the caching proxy under load", () => {
  it.scopedLive(
    `${REQUESTS} mixed requests at 128 connections: no error the origin did not send, every byte right`,
    () =>
      Effect.gen(function*() {
        const o = yield* origin
        const { proxy } = yield* Effect.map(
          Layer.build(proxyOver(o.url)),
          (ctx) => ({ proxy: ctx.unsafeMap.get(Proxy.ProxyTag.key) as Proxy.Proxy })
        )
        const rss: Array<number> = []
        const planned = plan(REQUESTS, { largeShare: SOAK ? 0.02 : 0.005 })
        const result = yield* Effect.promise(() =>
          runLoad(proxy.url, planned, {
            connections: 128,
            onProgress: (done) => {
              if (global.gc !== undefined) global.gc()
              rss.push(process.memoryUsage().rss)
              if (SOAK) console.log(`soak: ${done} requests, rss ${(rss.at(-1)! / MIB).toFixed(0)} MiB`)
            }
          })
        )
        const figures = {
          requests: result.requests,
          bytesChecked: result.bytesChecked,
          statuses: result.statuses,
          cacheStatuses: result.cacheStatuses,
          originRequests: Object.fromEntries(o.counts),
          notModified: o.notModified(),
          millis: result.millis,
          rssMiB: rss.map((r) => Math.round(r / MIB))
        }
        console.log(`reliability/load ${JSON.stringify(figures)}`)
        expect(result.transportErrors).toEqual([])
        expect(result.mismatches).toEqual([])
        // only statuses the origin sends: 200 and its own 404s
        expect(Object.keys(result.statuses).sort()).toEqual(["200", "404"])
        // the mix really exercised the cache: hits, stores and 304 revalidations all happened
        expect(result.cacheStatuses.hit).toBeGreaterThan(REQUESTS / 4)
        expect(result.cacheStatuses.stored).toBeGreaterThan(0)
        expect(result.cacheStatuses.revalidated).toBeGreaterThan(0)
        expect(o.notModified()).toBeGreaterThan(0)
        // the origin saw far fewer requests than the clients sent
        const originTotal = [...o.counts.values()].reduce((a, b) => a + b, 0)
        expect(originTotal).toBeLessThan(REQUESTS * 0.7)
        expect(yield* proxy.inFlight).toBe(0)
        if (SOAK && rss.length >= 6) {
          // RSS flat after warm-up: the last sample is within 64 MiB of the one after the first third
          const warm = rss[Math.floor(rss.length / 3)]!
          expect(rss.at(-1)! - warm).toBeLessThan(64 * MIB)
        }
        void rssOf
      }),
    SOAK ? 600_000 : 60_000
  )
})
