/**
 * `cachekit proxy --instances N`: a node:cluster primary and N worker processes on one port, each
 * with its own memory L1 over a shared Redis (and the Redis invalidation bus).
 */
import { CacheBackend, MemoryBackend } from "@cachekit/core"
import { Proxy } from "@cachekit/http"
import { NodeHttpClient } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Context, Effect, Either, Exit, Fiber, Layer, Option, TestClock } from "effect"
import { runProxyCommand } from "../src/internal/cli.js"
import { parse } from "../src/internal/cliArgs.js"
import * as ProxyBackends from "../src/internal/proxyBackends.js"
import type { Ended } from "../src/internal/proxyCluster.js"
import { checkShareable, runIfPrimary, supervise } from "../src/internal/proxyCluster.js"
import type { Fetched } from "./fixtures/proxyOrigin.js"
import { layerOrigin, OriginTag, rawRequest } from "./fixtures/proxyOrigin.js"
import {
  ADMIN_TOKEN,
  bin,
  exited,
  hasRedis,
  proxyProcess,
  redisServer,
  spawnUntil,
  waitForOutput
} from "./fixtures/proxyProcess.js"
import { itemRoutes, versions } from "./fixtures/proxyRun.js"

const WORKER_LINE = /instance: worker (\d+) in slot (\d+) of (\d+), pid (\d+)/g

/** The workers that printed their banner so far: id -> pid. */
const workersIn = (output: string): Map<number, number> =>
  new Map([...output.matchAll(WORKER_LINE)].map((m) => [Number(m[1]), Number(m[4])]))

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe("--instances", () => {
  it("is parsed as a count, auto (= 0, one per CPU) or rejected", () => {
    const settings = (argv: ReadonlyArray<string>) =>
      Either.map(parse(["proxy", ...argv]), (c) => c._tag === "Proxy" ? c.settings.get("CACHEKIT_INSTANCES") : c._tag)
    expect(settings(["--instances", "4"])).toEqual(Either.right("4"))
    expect(settings(["--instances=auto"])).toEqual(Either.right("0"))
    expect(settings(["--instances", "0"])).toEqual(Either.right("0"))
    for (const bad of ["two", "-1", "1.5", "100000"]) {
      const parsed = parse(["proxy", "--instances", bad])
      expect(Either.isLeft(parsed) && parsed.left.reason === "InvalidValue" && parsed.left.flag).toBe("instances")
    }
  })

  it.effect("refuses backends the workers cannot share, with the reason", () =>
    Effect.gen(function*() {
      const refused = (backend: Parameters<typeof checkShareable>[1], bus: Parameters<typeof checkShareable>[2]) =>
        Effect.map(Effect.flip(checkShareable(2, backend, bus)), (e) => `${e._tag}: ${e.message}`)
      expect(yield* refused("memory", "auto")).toMatch(/^InstancesNotShareable: .*its own cache/)
      expect(yield* refused("memory+disk", "auto")).toMatch(/concurrent writers/)
      expect(yield* refused("disk", "none")).toMatch(/concurrent writers/)
      expect(yield* refused("memory+redis", "none")).toMatch(/--bus none/)
      expect(yield* refused("memory+memcached", "auto")).toMatch(/--bus redis/)
      for (
        const [backend, bus] of [["memory+redis", "auto"], ["memory+memcached", "redis"], ["redis", "auto"]] as const
      ) {
        expect(yield* Effect.either(checkShareable(2, backend, bus))).toEqual(Either.right(undefined))
      }
      // the command stops with exit code 2 before forking anything (the default backend is memory+disk),
      // in the primary's light entry (the bin) and in the full command alike
      expect(ProxyBackends.defaults.backend).toBe("memory+disk")
      const flags = new Map([["CACHEKIT_INSTANCES", "2"], ["CACHEKIT_UPSTREAM", "http://127.0.0.1:9"]])
      expect(yield* runIfPrimary(flags)).toEqual(Option.some(2))
      expect(yield* runProxyCommand(flags)).toBe(2)
      const noBus = new Map([["CACHEKIT_INSTANCES", "2"], ["CACHEKIT_BACKEND", "memory+redis"], [
        "CACHEKIT_BUS",
        "none"
      ]])
      expect(yield* runIfPrimary(noBus)).toEqual(Option.some(2))
      expect(yield* runIfPrimary(new Map([["CACHEKIT_INSTANCES", "two"]]))).toEqual(Option.some(2))
      // one instance: not a primary, the proxy runs in this process
      expect(yield* runIfPrimary(new Map([["CACHEKIT_INSTANCES", "1"]]))).toEqual(Option.none())
    }))
})

describe("the primary's supervision of a slot (stand-in workers, TestClock)", () => {
  /** Workers that end as `script` says, one after the other; records when (test clock) each started. */
  const scripted = (script: ReadonlyArray<Partial<Ended>>) => {
    const starts: Array<number> = []
    const start = () =>
      Effect.gen(function*() {
        starts.push(yield* Clock.currentTimeMillis)
        const next = script[starts.length - 1]
        // past the script: a worker that runs until the slot is interrupted
        if (next === undefined) return yield* Effect.never
        return {
          id: starts.length,
          pid: 1000 + starts.length,
          code: 1,
          signal: null,
          listened: true,
          livedMillis: 0,
          ...next
        }
      })
    return { starts, start }
  }
  const options = { instances: 2, shutdownGraceMillis: 0 }

  it.effect("restarts with a doubling backoff while workers die young, resets it after a stable run, gives up after 5", () =>
    Effect.gen(function*() {
      const stable = { livedMillis: 60_000, signal: "SIGKILL" }
      const young = { livedMillis: 1_000 }
      const { start, starts } = scripted([stable, young, young, stable, young, young, young, young, young])
      const fiber = yield* Effect.fork(supervise(1, options, start))
      yield* TestClock.adjust("1 minute")
      const exit = fiber.unsafePoll()
      expect(exit).not.toBeNull()
      // delays: 100 (1st crash in a row), 200, 400; stable again: 100, 200, 400, 800, 1600; the 6th in a row: stop
      expect(starts).toEqual([0, 100, 300, 700, 800, 1000, 1400, 2200, 3800])
      expect(Exit.isFailure(exit!)).toBe(true)
      const error = yield* Effect.flip(exit!)
      expect(error).toMatchObject({ _tag: "WorkerFailed", exitCode: 1 })
      expect(error.message).toMatch(/died 6 times in a row within 10000 ms of starting, giving up/)
    }))

  it.effect("a first worker that exits before it listened stops the slot with its exit code, without a restart", () =>
    Effect.gen(function*() {
      const { start, starts } = scripted([{ listened: false, code: 2 }])
      const fiber = yield* Effect.fork(supervise(1, options, start))
      yield* TestClock.adjust("1 minute")
      expect(starts).toEqual([0])
      const exit = fiber.unsafePoll()
      expect(exit).not.toBeNull()
      const error = yield* Effect.flip(exit!)
      expect(error).toMatchObject({ _tag: "WorkerFailed", exitCode: 2 })
      expect(error.message).toMatch(/before it listened/)
    }))

  it.effect("a replacement that dies before it listened is one more crash, not the end", () =>
    Effect.gen(function*() {
      const { start, starts } = scripted([{ livedMillis: 60_000 }, { listened: false, livedMillis: 500 }])
      const fiber = yield* Effect.fork(supervise(1, options, start))
      yield* TestClock.adjust("10 seconds")
      // the third worker runs on
      expect(starts).toEqual([0, 100, 300])
      expect(fiber.unsafePoll()).toBeNull()
      yield* Fiber.interrupt(fiber)
    }))
})

describe("cachekit proxy --instances 2 with a setting the workers refuse", () => {
  it.scopedLive(
    "exits with the workers' exit status (2) once the first one stops before listening",
    () =>
      Effect.gen(function*() {
        // --admin without a token: each worker refuses to start (AdminNotSecured, exit status 2)
        const { child, output } = yield* spawnUntil(
          process.execPath,
          [
            "--import",
            "tsx",
            bin,
            "proxy",
            "--port",
            "0",
            "--upstream",
            "http://127.0.0.1:9",
            "--backend",
            "memory+redis",
            "--instances",
            "2",
            "--admin"
          ],
          { CACHEKIT_ADMIN_TOKEN: "" },
          (out) => out.includes("starting 2 worker processes") || undefined
        )
        const exit = yield* exited(child).pipe(Effect.timeout("40 seconds"))
        expect(exit).toEqual({ code: 2, signal: null })
        expect(output()).toMatch(/the admin API \(--admin\) cannot start/)
        expect(output()).toMatch(/cachekit: worker \d \(slot \d, pid \d+\) stopped \(exit code 2\) before it listened/)
      }),
    60_000
  )
})

describe("Proxy responseHeaders (what the workers' Cachekit-Instance rides on)", () => {
  it.scopedLive("are set on misses, fast-path hits, unsafe methods and upstream errors", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const backend = yield* MemoryBackend.make({ maxBytes: 1024 * 1024 })
      const build = (upstream: string) =>
        Layer.build(
          Proxy.layerCaching({ upstream, port: 0, responseHeaders: { "cachekit-instance": "7" } }).pipe(
            Layer.provide(Layer.succeed(CacheBackend.CacheBackendTag, backend)),
            Layer.provide(NodeHttpClient.layerUndici)
          )
        ).pipe(Effect.map(Context.get(Proxy.ProxyTag)))
      const proxy = yield* build(origin.url)
      const miss = yield* rawRequest(`${proxy.url}/item?id=header`)
      const hit = yield* rawRequest(`${proxy.url}/item?id=header`)
      expect(hit.headers["cache-status"]).toContain("hit")
      const post = yield* rawRequest(`${proxy.url}/item?id=header`, { method: "POST" })
      const unreachable = yield* build("http://127.0.0.1:9")
      const error = yield* rawRequest(`${unreachable.url}/x`)
      expect(error.status).toBe(502)
      for (const res of [miss, hit, post, error]) expect(res.headers["cachekit-instance"]).toBe("7")
      // and nothing without the option
      const plain = yield* Layer.build(
        Proxy.layer({ upstream: origin.url, port: 0 }).pipe(Layer.provide(NodeHttpClient.layerUndici))
      ).pipe(Effect.map(Context.get(Proxy.ProxyTag)))
      expect((yield* rawRequest(`${plain.url}/item?id=header`)).headers["cachekit-instance"]).toBeUndefined()
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))
})

describe.skipIf(!hasRedis)("cachekit proxy --instances 2 --backend memory+redis", () => {
  it.scopedLive(
    "spreads connections over both workers, invalidates in both, replaces a killed worker, stops on SIGTERM",
    () =>
      Effect.gen(function*() {
        const origin = yield* OriginTag
        const { url: redisUrl } = yield* redisServer()
        const proxy = yield* proxyProcess(origin.url, redisUrl, ["--instances", "2"])
        const started = yield* waitForOutput(
          proxy.output,
          (out) => workersIn(out).size === 2 ? workersIn(out) : undefined,
          "two workers"
        )
        expect([...started.keys()].sort()).toEqual([1, 2])
        expect(proxy.output()).toContain("starting 2 worker processes on one port")

        // a new connection per request: the primary deals connections round-robin
        const fresh = (path: string, options: Parameters<typeof rawRequest>[1] = {}) =>
          rawRequest(proxy.url + path, options)
        const instance = (res: Fetched) => Number(res.headers["cachekit-instance"])
        const spread = yield* Effect.forEach(Array.from({ length: 6 }), () => fresh("/item?id=spread"))
        expect(spread.map((r) => r.text)).toEqual(Array(6).fill("spread:1"))
        expect(new Set(spread.map(instance))).toEqual(new Set([1, 2]))
        // one origin request: the second worker found the entry in Redis
        expect(yield* origin.count("/item")).toBe(1)

        // both workers hold the entry in their memory L1 (the first store's bus message may have
        // dropped the other's early copy: read until both report it)
        const key = `GET ${origin.url}/item?id=spread`
        const inMemory = new Set<number>()
        for (let i = 0; i < 30 && inMemory.size < 2; i++) {
          // one GET, then two: the admin request lands on the other worker every other round
          for (let n = 0; n <= i % 2; n++) yield* fresh("/item?id=spread")
          const entry = yield* fresh(`/_cachekit/entries/${encodeURIComponent(key)}`, {
            headers: { authorization: `Bearer ${ADMIN_TOKEN}` }
          })
          if (entry.status === 200 && (JSON.parse(entry.text) as { tier: string }).tier === "memory") {
            inMemory.add(instance(entry))
          }
        }
        expect(inMemory).toEqual(new Set([1, 2]))

        // a PURGE reaches one worker; the bus clears the other's L1
        versions.set("spread", 2)
        const purged = yield* fresh("/item?id=spread", {
          method: "PURGE",
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` }
        })
        expect(purged.status).toBe(200)
        yield* Effect.sleep("100 millis")
        const after = yield* Effect.forEach(Array.from({ length: 6 }), () => fresh("/item?id=spread"))
        expect(after.map((r) => r.text)).toEqual(Array(6).fill("spread:2"))
        expect(new Set(after.map(instance))).toEqual(new Set([1, 2]))

        // a worker that dies is replaced (a new worker id, the same port)
        process.kill(started.get(1)!, "SIGKILL")
        const replaced = yield* waitForOutput(
          proxy.output,
          (out) => workersIn(out).get(3),
          "a replacement worker"
        )
        expect(proxy.output()).toMatch(/worker 1 \(slot 1, pid \d+\) stopped unexpectedly \(signal SIGKILL\)/)
        const later = yield* Effect.forEach(Array.from({ length: 4 }), () => fresh("/item?id=spread"))
        expect(new Set(later.map(instance))).toEqual(new Set([2, 3]))
        expect(later.every((r) => r.text === "spread:2")).toBe(true)

        // SIGTERM to the primary: the workers drain and stop, then the primary exits 0
        proxy.child.kill("SIGTERM")
        const exit = yield* exited(proxy.child).pipe(Effect.timeout("20 seconds"))
        expect(exit).toEqual({ code: 0, signal: null })
        expect([started.get(2)!, replaced].filter(isAlive)).toEqual([])
      }).pipe(Effect.provide(layerOrigin(itemRoutes))),
    120_000
  )
})
