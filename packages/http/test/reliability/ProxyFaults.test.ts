/**
 * Faults under the caching proxy: a Redis tier killed and restarted during load, an origin that
 * hangs or resets connections mid-body, a disk store that becomes unwritable. The proxy must keep
 * answering from L1 or the origin, never store a truncated body, and never answer with an error the
 * origin did not send (except 504 for an origin that does not answer and has nothing stale stored).
 */
import { DiskBackend, RedisBackend } from "@cachekit/backends"
import type { CacheBackend } from "@cachekit/core"
import { MemoryBackend, TieredCache } from "@cachekit/core"
import { Proxy } from "@cachekit/http"
import { NodeHttpClient } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { Redis } from "ioredis"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { request } from "undici"
import { expectedBody, plan, runLoad, startOrigin } from "./fixtures/loadRig.js"
import type { OwnRedis } from "./fixtures/processes.js"
import { ownRedis } from "./fixtures/processes.js"

const MIB = 1024 * 1024
const PHASE = Number(process.env["CACHEKIT_SOAK_FAULT_PHASE"] ?? "400")

const origin = Effect.acquireRelease(Effect.promise(() => startOrigin()), (o) => Effect.promise(o.close))
const redis = Effect.acquireRelease(Effect.promise(() => ownRedis()), (r) => Effect.promise(r.stop))

const startProxy = (
  upstream: string,
  backend: Layer.Layer<CacheBackend.CacheBackendTag, unknown>,
  options: Partial<Proxy.CachingOptions> = {}
) =>
  Effect.map(
    Layer.build(
      Proxy.layerCaching({ upstream, port: 0, ...options }).pipe(
        Layer.provide(backend),
        Layer.provide(NodeHttpClient.layerUndici)
      )
    ),
    (ctx) => Context.get(ctx, Proxy.ProxyTag)
  )

const get = (url: string, headers: Record<string, string> = {}) =>
  Effect.promise(async () => {
    try {
      const res = await request(url, { headers, headersTimeout: 20_000, bodyTimeout: 20_000 })
      const body = new Uint8Array(await res.body.arrayBuffer())
      return { status: res.statusCode, body, cacheStatus: String(res.headers["cache-status"] ?? ""), error: undefined }
    } catch (error) {
      return { status: 0, body: new Uint8Array(), cacheStatus: "", error: String(error) }
    }
  })

const connectedClients = (r: OwnRedis) =>
  Effect.promise(async () => {
    const probe = new Redis(r.port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 0 })
    await probe.connect()
    const info = await probe.info("clients")
    probe.disconnect()
    // the probe itself is one of them
    return Number(/connected_clients:(\d+)/.exec(info)?.[1] ?? "0") - 1
  })

const noLarge = (n: number, seed: number) => plan(n, { seed, largeShare: 0 })

describe("faults under the caching proxy", () => {
  it.scopedLive(
    "Redis L2 killed and restarted under load: every request answered right, the breaker opens then closes, one connection",
    () =>
      Effect.gen(function*() {
        const o = yield* origin
        const r = yield* redis
        const memory = yield* MemoryBackend.make({ maxBytes: 32 * MIB })
        const l2 = yield* RedisBackend.make({ url: r.url, prefix: `reliability:${Date.now()}:`, commandTimeout: 300 })
        const tieredCtx = yield* Layer.build(
          TieredCache.layer([
            { backend: memory, name: "memory" },
            { backend: l2, name: "redis", breaker: { failureThreshold: 3, resetAfter: "300 millis" } }
          ])
        )
        const tiered = Context.get(tieredCtx, TieredCache.TieredCache)
        const proxy = yield* startProxy(o.url, Layer.succeedContext(tieredCtx))
        const phases = []
        phases.push(yield* Effect.promise(() => runLoad(proxy.url, noLarge(PHASE, 1), { connections: 128 })))
        yield* Effect.promise(r.stop)
        phases.push(yield* Effect.promise(() => runLoad(proxy.url, noLarge(PHASE, 2), { connections: 128 })))
        const whileDown = (yield* tiered.stats)[1]!
        yield* Effect.promise(r.start)
        yield* Effect.sleep("700 millis") // past resetAfter: the next call probes
        phases.push(yield* Effect.promise(() => runLoad(proxy.url, noLarge(PHASE, 3), { connections: 128 })))
        const after = (yield* tiered.stats)[1]!
        console.log(
          `reliability/redis-fault ${
            JSON.stringify({
              requests: phases.reduce((n, p) => n + p.requests, 0),
              bytesChecked: phases.reduce((n, p) => n + p.bytesChecked, 0),
              whileDown,
              after
            })
          }`
        )
        for (const phase of phases) {
          expect(phase.transportErrors).toEqual([])
          expect(phase.mismatches).toEqual([])
        }
        expect(whileDown.errors).toBeGreaterThan(0)
        expect(whileDown.breakerOpened).toBeGreaterThanOrEqual(1)
        expect(after.breaker).toBe("closed")
        // writes reach Redis again after the restart
        const entriesInRedis = yield* Effect.promise(async () => {
          const probe = new Redis(r.port, "127.0.0.1")
          const n = await probe.dbsize()
          probe.disconnect()
          return n
        })
        expect(entriesInRedis).toBeGreaterThan(0)
        // the backend reconnected with one connection, no pile of retries
        expect(yield* connectedClients(r)).toBe(1)
        expect(yield* proxy.inFlight).toBe(0)
      }),
    120_000
  )

  it.scopedLive(
    "Redis as the only backend killed under load: requests keep succeeding from the origin",
    () =>
      Effect.gen(function*() {
        const o = yield* origin
        const r = yield* redis
        const proxy = yield* startProxy(
          o.url,
          RedisBackend.layer({ url: r.url, prefix: `reliability-only:${Date.now()}:`, commandTimeout: 300 })
        )
        const before = yield* Effect.promise(() => runLoad(proxy.url, noLarge(PHASE / 2, 4), { connections: 64 }))
        yield* Effect.promise(r.stop)
        const down = yield* Effect.promise(() => runLoad(proxy.url, noLarge(PHASE / 2, 5), { connections: 64 }))
        yield* Effect.promise(r.start)
        yield* Effect.sleep("1500 millis") // ioredis' reconnect backoff
        const back = yield* Effect.promise(() => runLoad(proxy.url, noLarge(PHASE / 2, 6), { connections: 64 }))
        for (const phase of [before, down, back]) {
          expect(phase.transportErrors).toEqual([])
          expect(phase.mismatches).toEqual([])
        }
        expect(back.cacheStatuses.hit).toBeGreaterThan(0)
        expect(yield* connectedClients(r)).toBe(1)
      }),
    120_000
  )

  for (const kind of ["memory", "disk"] as const) {
    it.scopedLive(
      `an origin resetting the connection mid-body leaves no truncated entry (${kind})`,
      () =>
        Effect.gen(function*() {
          const o = yield* origin
          const dir = mkdtempSync(path.join(tmpdir(), "ck-reset-"))
          yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
          const backend = kind === "memory"
            ? MemoryBackend.layer({ maxBytes: 32 * MIB })
            : DiskBackend.layer({ directory: dir, fsync: false })
          const proxy = yield* startProxy(o.url, backend)
          const urls = ["/reset/1", "/reset/2", "/reset/large-ish"]
          for (const url of urls) {
            const cut = yield* get(`${proxy.url}${url}`)
            // the client sees the cut too (an aborted body), never a short body passed off as whole
            const whole = expectedBody(url, "-")
            expect(cut.error !== undefined || cut.body.byteLength < whole.byteLength).toBe(true)
          }
          o.faults.resetBodies = false
          for (const url of urls) {
            for (let i = 0; i < 2; i++) {
              const res = yield* get(`${proxy.url}${url}`)
              expect(res.status).toBe(200)
              expect(Buffer.compare(res.body, expectedBody(url, "-"))).toBe(0)
              if (i === 1) expect(res.cacheStatus).toMatch(/; hit/)
            }
          }
          // the first full trip after the resets went to the origin: nothing was served from a cut entry
          expect(o.counts.get("reset")).toBe(urls.length * 2)
        }),
      60_000
    )
  }

  it.scopedLive(
    "a hanging origin: 504 after the upstream timeout, stale-if-error served when stored",
    () =>
      Effect.gen(function*() {
        const o = yield* origin
        const proxy = yield* startProxy(o.url, MemoryBackend.layer({ maxBytes: 8 * MIB }), {
          upstreamTimeout: "400 millis"
        })
        const first = yield* get(`${proxy.url}/swr/1`)
        expect(first.status).toBe(200)
        yield* Effect.sleep("1100 millis") // max-age=1 ran out
        o.faults.hang = true
        const started = Date.now()
        const stale = yield* get(`${proxy.url}/swr/1`)
        const unknown = yield* get(`${proxy.url}/hit/never-stored`)
        const elapsed = Date.now() - started
        o.faults.hang = false
        expect(stale.status).toBe(200)
        expect(Buffer.compare(stale.body, expectedBody("/swr/1", "-"))).toBe(0)
        expect(unknown.status).toBe(504)
        expect(elapsed).toBeLessThan(10_000)
        // the origin recovers: the next request is answered fresh
        const fresh = yield* get(`${proxy.url}/hit/never-stored`)
        expect(fresh.status).toBe(200)
        expect(yield* proxy.inFlight).toBe(0)
      }),
    60_000
  )

  it.scopedLive("a slow origin under load: coalesced requests all get the right bytes", () =>
    Effect.gen(function*() {
      const o = yield* origin
      o.faults.delayMillis = 150
      const proxy = yield* startProxy(o.url, MemoryBackend.layer({ maxBytes: 16 * MIB }))
      const result = yield* Effect.promise(() => runLoad(proxy.url, noLarge(PHASE / 2, 7), { connections: 128 }))
      o.faults.delayMillis = 0
      expect(result.transportErrors).toEqual([])
      expect(result.mismatches).toEqual([])
      // identical concurrent misses were coalesced: /hit has 40 keys, the origin saw each about once
      expect(o.counts.get("hit") ?? 0).toBeLessThanOrEqual(40)
    }), 60_000)

  it.scopedLive(
    "a disk store that becomes unwritable: caching is skipped and serving continues",
    () =>
      Effect.gen(function*() {
        const o = yield* origin
        const dir = mkdtempSync(path.join(tmpdir(), "ck-unwritable-"))
        const store = path.join(dir, "store")
        yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
        const proxy = yield* startProxy(o.url, DiskBackend.layer({ directory: store, fsync: false }))
        const warm = yield* Effect.promise(() => runLoad(proxy.url, noLarge(100, 8), { connections: 16 }))
        expect(warm.mismatches).toEqual([])
        // root ignores permission bits, so make the directory impossible instead: replace it by a file
        rmSync(store, { recursive: true, force: true })
        writeFileSync(store, "not a directory")
        const broken = yield* Effect.promise(() => runLoad(proxy.url, noLarge(PHASE / 2, 9), { connections: 64 }))
        console.log(`reliability/disk-unwritable ${JSON.stringify(broken.cacheStatuses)}`)
        expect(broken.transportErrors).toEqual([])
        expect(broken.mismatches).toEqual([])
      }),
    60_000
  )
})
