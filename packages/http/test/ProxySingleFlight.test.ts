/**
 * `cachekit proxy --single-flight`: the settings (default on over a Redis L2, `none` turns it off,
 * refused where no other process could read what one stores) and two proxies started in this
 * process (each with its own backend, gate and coalescing) on the Redis at 127.0.0.1:6379 under a
 * unique prefix. The multi-PROCESS stampede is in ProxyMultiInstance.test.ts.
 */
import { HttpServerResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Net from "node:net"
import { helpText, parse } from "../src/internal/cliArgs.js"
import { fetchVia, layerOrigin, OriginTag } from "./fixtures/proxyOrigin.js"
import { startProxy, tempDir } from "./fixtures/proxyRun.js"

const redisUp = Effect.async<boolean>((resume) => {
  const socket = Net.connect({ host: "127.0.0.1", port: 6379 })
  socket.once("connect", () => {
    socket.destroy()
    resume(Effect.succeed(true))
  })
  socket.once("error", () => resume(Effect.succeed(false)))
})

const needRedis = Effect.gen(function*() {
  if (yield* redisUp) return true
  if (process.env["CACHEKIT_REQUIRE_SERVERS"] === "1") expect.fail("redis-server is not listening on 6379")
  return false
})

let run = 0
const redisEnv = () => ({
  CACHEKIT_BACKEND: "memory+redis",
  CACHEKIT_REDIS_URL: "redis://127.0.0.1:6379",
  CACHEKIT_REDIS_PREFIX: `cachekit-test:proxy-sf:${process.pid}:${Date.now()}:${++run}:`
})

const routes = {
  "/slow-item": () =>
    Effect.as(
      Effect.sleep(150),
      HttpServerResponse.text("slow item body", { headers: { "cache-control": "public, max-age=60" } })
    )
}

/** `requests` GETs of `path` at once, alternating between the two proxies. */
const stampede = (urls: readonly [string, string], path: string, requests: number) =>
  Effect.all(Array.from({ length: requests }, (_, i) => fetchVia(urls[i % 2]! + path)), { concurrency: "unbounded" })

describe("cachekit proxy --single-flight", () => {
  it("parses auto, redis and none and documents the flag", () => {
    const parsed = parse(["proxy", "--single-flight", "none"])
    expect(
      parsed._tag === "Right" && parsed.right._tag === "Proxy" && parsed.right.settings.get("CACHEKIT_SINGLE_FLIGHT")
    )
      .toBe("none")
    const bad = parse(["proxy", "--single-flight", "memcached"])
    expect(bad._tag === "Left" && bad.left.message).toBe(
      "--single-flight: \"memcached\" is not one of auto, redis, none"
    )
    expect(helpText()).toContain("--single-flight auto|redis|none")
  })

  it.scopedLive("refuses --single-flight redis over a disk L2 (no other process reads it)", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const error = yield* Effect.flip(
        startProxy(origin.url, { CACHEKIT_DISK_DIR: yield* tempDir, CACHEKIT_SINGLE_FLIGHT: "redis" })
      )
      expect(String(error)).toContain("--single-flight redis needs a shared L2")
    }).pipe(Effect.provide(layerOrigin(routes))))

  it.scopedLive("is on by default with memory+redis: a stampede over two proxies reaches the origin once", () =>
    Effect.gen(function*() {
      if (!(yield* needRedis)) return
      const origin = yield* OriginTag
      const env = redisEnv()
      const a = yield* startProxy(origin.url, env)
      const b = yield* startProxy(origin.url, env)
      expect(a.cache.description).toContain("single-flight: redis")
      const results = yield* stampede([a.proxy.url, b.proxy.url], "/slow-item", 100)
      expect(yield* origin.count("/slow-item")).toBe(1)
      expect(results.every((r) => r.status === 200 && r.text === "slow item body")).toBe(true)
    }).pipe(Effect.provide(layerOrigin(routes))))

  it.scopedLive("--single-flight none: the same stampede reaches the origin once per proxy", () =>
    Effect.gen(function*() {
      if (!(yield* needRedis)) return
      const origin = yield* OriginTag
      const env = { ...redisEnv(), CACHEKIT_SINGLE_FLIGHT: "none" }
      const a = yield* startProxy(origin.url, env)
      const b = yield* startProxy(origin.url, env)
      expect(a.cache.description).not.toContain("single-flight")
      const results = yield* stampede([a.proxy.url, b.proxy.url], "/slow-item", 100)
      expect(yield* origin.count("/slow-item")).toBeGreaterThan(1)
      expect(results.every((r) => r.status === 200 && r.text === "slow item body")).toBe(true)
    }).pipe(Effect.provide(layerOrigin(routes))))
})
