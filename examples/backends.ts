/**
 * One program, four backends: the same `Cache` code runs on memory, disk, Redis and Memcached;
 * only the backend Layer changes. Disk uses a temporary directory; Memcached is started on a free
 * loopback port when the `memcached` binary is installed; Redis is used at 127.0.0.1:6379 (or
 * CACHEKIT_REDIS_URL) with a unique key prefix when it answers. A backend that is not available
 * is reported as skipped.
 *
 * Run: `npx tsx examples/backends.ts`
 */
import { DiskBackend, MemcachedBackend, RedisBackend } from "@cachekit/backends"
import type { CacheBackend } from "@cachekit/core"
import { Cache, MemoryBackend } from "@cachekit/core"
import { Console, Effect, Layer, Schedule, Schema } from "effect"
import { spawn, spawnSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import * as net from "node:net"
import { tmpdir } from "node:os"
import * as path from "node:path"

const Order = Schema.Struct({ id: Schema.Number, total: Schema.BigInt, placedAt: Schema.Date })

// The code under test: identical for every backend.
const program = Effect.gen(function*() {
  const cache = yield* Cache.Cache
  const orders = cache.typed(Order)
  let computes = 0
  const load = orders.getOrCompute(
    "order:1",
    Effect.sync(() => {
      computes++
      return { id: 1, total: 12_345_678_901_234_567_890n, placedAt: new Date("2025-01-01T12:00:00Z") }
    }),
    { ttl: "1 minute", tags: ["customer:7"] }
  )
  const first = yield* load
  const second = yield* load
  // getOrCompute hands the value to its callers first and writes it to the backend right after; on a
  // remote backend wait until the write has landed before invalidating (or the write could land after).
  yield* orders.get("order:1").pipe(
    Effect.repeat({ until: (found) => found._tag === "Some", schedule: Schedule.spaced("10 millis") }),
    Effect.timeout("5 seconds")
  )
  const removed = yield* cache.invalidateTags(["customer:7"]).pipe(
    Effect.catchTag("TagsUnsupported", () => Effect.succeed("n/a (no tag index)"))
  )
  yield* cache.clear
  return `computes=${computes}, bigint kept=${second.total === first.total}, ` +
    `date kept=${second.placedAt.getTime() === first.placedAt.getTime()}, tag invalidation removed=${removed}`
})

const runOn = <E>(name: string, backend: Layer.Layer<CacheBackend.CacheBackendTag, E>) =>
  program.pipe(
    Effect.provide(Cache.layer().pipe(Layer.provide(backend))),
    Effect.flatMap((line) => Console.log(`${name.padEnd(10)} ${line}`)),
    Effect.catchAll((error) => Console.log(`${name.padEnd(10)} failed: ${String(error)}`))
  )

const portOpen = (port: number, host = "127.0.0.1") =>
  Effect.async<boolean>((resume) => {
    const socket = net.connect({ port, host })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(true))
    })
    socket.once("error", () => resume(Effect.succeed(false)))
  })

const freePort = Effect.async<number>((resume) => {
  const server = net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    server.close(() => resume(Effect.succeed(typeof address === "object" && address !== null ? address.port : 0)))
  })
})

/** A memcached on a free loopback port for the lifetime of the scope, or undefined without the binary. */
const startMemcached = Effect.gen(function*() {
  if (spawnSync("memcached", ["-h"], { stdio: "ignore" }).error !== undefined) return undefined
  const port = yield* freePort
  const child = yield* Effect.acquireRelease(
    Effect.sync(() =>
      spawn("memcached", [
        "-l",
        "127.0.0.1",
        "-p",
        String(port),
        "-U",
        "0",
        ...(process.getuid?.() === 0 ? ["-u", "root"] : []) // memcached refuses to run as root otherwise
      ], { stdio: "ignore" })
    ),
    (process) => Effect.sync(() => process.kill())
  )
  const up = yield* portOpen(port).pipe(
    Effect.repeat({ until: (open) => open, schedule: Schedule.spaced("50 millis") }),
    Effect.as(true),
    Effect.timeoutTo({ duration: "10 seconds", onTimeout: () => false, onSuccess: (ok) => ok })
  )
  return up && child.pid !== undefined ? `127.0.0.1:${port}` : undefined
})

const main = Effect.gen(function*() {
  yield* runOn("memory", MemoryBackend.layer({ maxEntries: 10_000 }))

  const directory = mkdtempSync(path.join(tmpdir(), "cachekit-example-"))
  yield* runOn("disk", DiskBackend.layer({ directory, maxBytes: 64 * 1024 * 1024 }))
  rmSync(directory, { recursive: true, force: true })

  const redisUrl = process.env["CACHEKIT_REDIS_URL"] ?? "redis://127.0.0.1:6379"
  const redisAddress = new URL(redisUrl)
  if (yield* portOpen(Number(redisAddress.port || 6379), redisAddress.hostname)) {
    yield* runOn("redis", RedisBackend.layer({ url: redisUrl, prefix: `cachekit-example:${process.pid}:` }))
  } else {
    yield* Console.log(`redis      skipped (nothing listening at ${redisUrl})`)
  }

  const memcached = yield* startMemcached
  if (memcached !== undefined) {
    yield* runOn(
      "memcached",
      MemcachedBackend.layer({ servers: [memcached], prefix: `cachekit-example:${process.pid}:` })
    )
  } else {
    yield* Console.log("memcached  skipped (no memcached binary, or it did not start)")
  }
})

Effect.runPromise(Effect.scoped(main)).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
