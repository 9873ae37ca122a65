/**
 * The proxy command's embedded default: a memory L1 over a disk L2 (`--backend memory+disk`),
 * large bodies on disk only and streamed from it, and the single-backend choices still working.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Option, Stream } from "effect"
import { createHash } from "node:crypto"
import { existsSync } from "node:fs"

const hasMemcached = existsSync("/usr/bin/memcached") || process.env["CACHEKIT_REQUIRE_SERVERS"] === "1"
import { settingsConfig } from "../src/internal/cli.js"
import { bigBodySha256, fetchVia, layerOrigin, OriginTag } from "./fixtures/proxyOrigin.js"
import { itemRoutes, memcachedServer, startProxy, tempDir } from "./fixtures/proxyRun.js"

const tierStats = (running: Effect.Effect.Success<ReturnType<typeof startProxy>>) =>
  Effect.gen(function*() {
    const tiered = running.cache.tiered
    if (tiered === undefined) return expect.fail("expected tiers")
    return yield* tiered.stats
  })

describe("cachekit proxy tiers", () => {
  it.effect("defaults to memory+disk", () =>
    Effect.gen(function*() {
      const settings = yield* Effect.withConfigProvider(settingsConfig, ConfigProvider.fromMap(new Map()))
      expect(settings.backend).toBe("memory+disk")
      expect(settings.bus).toBe("auto")
      expect(settings.admin).toBe(false)
    }))

  it.scopedLive("stores a small body in both tiers and answers the next request from the memory L1", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* startProxy(origin.url, { CACHEKIT_DISK_DIR: yield* tempDir })
      expect(running.cache.description).toContain("memory (up to 64 MiB, entries <= 1 MiB) + disk")
      const first = yield* fetchVia(`${running.proxy.url}/item?id=a`)
      const second = yield* fetchVia(`${running.proxy.url}/item?id=a`)
      expect(first.text).toBe("a:1")
      expect(second.text).toBe("a:1")
      expect(second.headers["cache-status"]).toContain("hit")
      expect(yield* origin.count("/item")).toBe(1)
      const [l1, l2] = yield* tierStats(running)
      expect([l1!.name, l1!.hits, l2!.hits]).toEqual(["memory", 1, 0])
      const stored = yield* running.cache.adminTarget.stats
      expect(stored.tiers.map((t) => t.entries)).toEqual([1, 1])
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("serves a body from the disk L2 after the memory L1 lost it, and promotes it back to L1", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* startProxy(origin.url, { CACHEKIT_DISK_DIR: yield* tempDir })
      yield* fetchVia(`${running.proxy.url}/item?id=b&kib=8`)
      // what an eviction (or a bus reconnect) does to L1
      yield* running.cache.tiered!.clearLocal
      expect((yield* running.cache.adminTarget.stats).tiers.map((t) => t.entries)).toEqual([0, 1])

      const fromDisk = yield* fetchVia(`${running.proxy.url}/item?id=b&kib=8`)
      expect(fromDisk.headers["cache-status"]).toContain("hit")
      expect(fromDisk.body.byteLength).toBe(8 * 1024)
      expect(fromDisk.text.startsWith("b:1")).toBe(true)
      const afterDisk = yield* tierStats(running)
      expect([afterDisk[0]!.hits, afterDisk[1]!.hits, afterDisk[0]!.promotions]).toEqual([0, 1, 1])

      const fromMemory = yield* fetchVia(`${running.proxy.url}/item?id=b&kib=8`)
      expect(fromMemory.text).toBe(fromDisk.text)
      const afterMemory = yield* tierStats(running)
      expect([afterMemory[0]!.hits, afterMemory[1]!.hits]).toEqual([1, 1])
      expect(yield* origin.count("/item")).toBe(1)
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("keeps a body over the L1 bound on disk only and streams it from there, never promoting it", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* startProxy(origin.url, {
        CACHEKIT_DISK_DIR: yield* tempDir,
        CACHEKIT_L1_MAX_ENTRY_SIZE: "64KiB"
      })
      const url = `${running.proxy.url}/big?mib=2&cacheable=1`
      const first = yield* fetchVia(url)
      const hits = [yield* fetchVia(url), yield* fetchVia(url)]
      const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex")
      expect(sha(first.body)).toBe(bigBodySha256(2))
      for (const hit of hits) {
        expect(hit.headers["cache-status"]).toContain("hit")
        expect(sha(hit.body)).toBe(bigBodySha256(2))
      }
      expect(yield* origin.count("/big")).toBe(1)
      const [l1, l2] = yield* tierStats(running)
      expect([l1!.hits, l1!.promotions, l2!.hits]).toEqual([0, 0, 2])
      expect((yield* running.cache.adminTarget.stats).tiers.map((t) => t.entries)).toEqual([0, 1])
      // the tiers see the disk entry as metadata only: its 2 MiB never sit in memory as one value
      const viaTiers = Option.getOrThrow(yield* running.cache.tiered!.get(`GET ${origin.url}/big?mib=2&cacheable=1`))
      expect([viaTiers.size, viaTiers.value.byteLength]).toEqual([2 * 1024 * 1024, 0])
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("a new version too large for L1 replaces the older L1 copy instead of hiding behind it", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* startProxy(origin.url, {
        CACHEKIT_DISK_DIR: yield* tempDir,
        CACHEKIT_L1_MAX_ENTRY_SIZE: "4KiB"
      })
      const key = `GET ${origin.url}/item?id=c`
      // the same key first small (in L1), then large (disk only): written through the cache face
      yield* fetchVia(`${running.proxy.url}/item?id=c`)
      expect((yield* running.cache.adminTarget.stats).tiers.map((t) => t.entries)).toEqual([1, 1])
      const small = Option.getOrThrow(yield* running.cache.backend.get(key))
      const streaming = running.cache.backend.streaming!
      const template = {
        createdAt: small.createdAt,
        expiresAt: small.expiresAt,
        staleUntil: small.staleUntil,
        tags: small.tags,
        meta: small.meta
      }
      yield* streaming.setStream(key, template, Stream.make(new Uint8Array(8 * 1024).fill(7)))
      expect((yield* running.cache.adminTarget.stats).tiers.map((t) => t.entries)).toEqual([0, 1])
      const read = yield* streaming.getStream(key)
      const bytes = yield* Stream.runCollect(Option.getOrThrow(read).body)
      expect([...bytes].reduce((n, c) => n + c.byteLength, 0)).toBe(8 * 1024)
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("refuses --bus redis over a disk L2 (per machine, nothing to keep coherent)", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const error = yield* Effect.flip(
        startProxy(origin.url, { CACHEKIT_DISK_DIR: yield* tempDir, CACHEKIT_BUS: "redis" })
      )
      expect(String(error)).toContain("--bus redis needs a shared L2")
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive.skipIf(!hasMemcached)(
    "memory+memcached: a body from Memcached after L1 lost it",
    () =>
      Effect.gen(function*() {
        const origin = yield* OriginTag
        const server = yield* memcachedServer
        const running = yield* startProxy(origin.url, {
          CACHEKIT_BACKEND: "memory+memcached",
          CACHEKIT_MEMCACHED_SERVERS: server.address
        })
        expect(running.cache.description).toContain("+ memcached")
        expect(running.cache.description).not.toContain("bus")
        yield* fetchVia(`${running.proxy.url}/item?id=mc`)
        yield* running.cache.tiered!.clearLocal
        const hit = yield* fetchVia(`${running.proxy.url}/item?id=mc`)
        expect([hit.text, hit.headers["cache-status"]?.includes("hit")]).toEqual(["mc:1", true])
        const [l1, l2] = yield* tierStats(running)
        expect([l1!.hits, l2!.name, l2!.hits]).toEqual([0, "memcached", 1])
        expect(yield* origin.count("/item")).toBe(1)
      }).pipe(Effect.provide(layerOrigin(itemRoutes)))
  )

  it.scopedLive("--backend memory is one memory tier (no disk)", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* startProxy(origin.url, { CACHEKIT_BACKEND: "memory" })
      expect(running.cache.tiered).toBeUndefined()
      yield* fetchVia(`${running.proxy.url}/item?id=d`)
      const hit = yield* fetchVia(`${running.proxy.url}/item?id=d`)
      expect(hit.headers["cache-status"]).toContain("hit")
      expect(yield* origin.count("/item")).toBe(1)
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("demo mode (no upstream) keeps the disk tier in a temp dir that is removed on exit", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const dir = yield* Effect.scoped(Effect.gen(function*() {
        const running = yield* startProxy(origin.url, {}, true)
        const match = /disk \(([^,]+),/.exec(running.cache.description)
        expect(match).not.toBeNull()
        expect(existsSync(match![1]!)).toBe(true)
        return match![1]!
      }))
      expect(dir).toContain("cachekit-demo-")
      expect(existsSync(dir)).toBe(false)
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))
})
