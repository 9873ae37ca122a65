/**
 * Backends: get/set latency (p50/p99) of each cachekit backend against its raw client in the same
 * run, for 1 KiB and 1 MiB values; and a streamed GET of a 100 MiB disk entry, with the peak RSS
 * growth above baseline (target < 16 MiB), against reading the entry whole.
 *
 * Spawns its own redis-server and memcached on free loopback ports. Run: `npx tsc -b && npm run bench -- backends`.
 */
import { DiskBackend, MemcachedBackend, RedisBackend } from "@cachekit/backends"
import type { CacheBackend } from "@cachekit/core"
import { CacheEntry } from "@cachekit/core"
import { Effect, Option, Stream } from "effect"
import { Redis } from "ioredis"
import memjs from "memjs"
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const KiB = 1024
const MiB = 1024 * KiB
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {})

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })

/** Spawns a server on a free loopback port and waits until it accepts connections. */
const startServer = async (command: string, args: (port: number) => Array<string>) => {
  const port = await freePort()
  const child = spawn(command, args(port), { stdio: "ignore" })
  for (let i = 0; i < 200; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host: "127.0.0.1", port })
      socket.once("connect", () => (socket.destroy(), resolve(true)))
      socket.once("error", () => resolve(false))
    })
    if (up) break
    await new Promise((r) => setTimeout(r, 25))
  }
  return { port, kill: () => void child.kill("SIGKILL") }
}

interface Row {
  backend: string
  size: string
  op: string
  p50: number
  p99: number
  rawP50: number
  rawP99: number
}

const percentile = (samples: Array<number>, p: number) => {
  const sorted = [...samples].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

/** Times `n` sequential calls of `op(i)` (after `warmup` untimed calls); returns per-call millis. */
const time = async (n: number, warmup: number, op: (i: number) => Promise<unknown>) => {
  for (let i = 0; i < warmup; i++) await op(i)
  const samples: Array<number> = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    await op(i)
    samples.push(performance.now() - t0)
  }
  return samples
}

const entryOf = (value: Uint8Array) => {
  const now = Date.now()
  return CacheEntry.make({ value, createdAt: now, expiresAt: now + 3_600_000 })
}

interface RawClient {
  readonly set: (key: string, value: Buffer) => Promise<unknown>
  readonly get: (key: string) => Promise<unknown>
}

/** Compares one backend with its raw client for one value size. */
const compare = async (
  label: string,
  backend: CacheBackend.CacheBackend,
  raw: RawClient,
  size: number,
  n: number
): Promise<Array<Row>> => {
  const keys = 64
  // Two distinct bodies per key, alternating, so every set really writes (the disk store would
  // otherwise dedup a repeated body into a metadata-only write).
  const values = Array.from({ length: 2 * keys }, () => randomBytes(size))
  const valueFor = (i: number) => values[(i % keys) + keys * (Math.floor(i / keys) % 2)]!
  const entries = values.map(entryOf)
  const entryFor = (i: number) => entries[(i % keys) + keys * (Math.floor(i / keys) % 2)]!
  const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)
  const setB = await time(n, 10, (i) => run(backend.set(`bench:${i % keys}`, entryFor(i))))
  const setR = await time(n, 10, (i) => raw.set(`raw:${i % keys}`, valueFor(i)))
  const getB = await time(n, 10, (i) =>
    run(Effect.map(backend.get(`bench:${i % keys}`), (o) => {
      if (Option.isNone(o)) throw new Error(`${label}: unexpected miss`)
    })))
  const getR = await time(n, 10, (i) => raw.get(`raw:${i % keys}`))
  const sizeLabel = size >= MiB ? `${size / MiB} MiB` : `${size / KiB} KiB`
  const row = (op: string, b: Array<number>, r: Array<number>): Row => ({
    backend: label,
    size: sizeLabel,
    op,
    p50: percentile(b, 50),
    p99: percentile(b, 99),
    rawP50: percentile(r, 50),
    rawP99: percentile(r, 99)
  })
  return [row("set", setB, setR), row("get", getB, getR)]
}

/** Peak RSS above the baseline while `work` runs (sampled every 2 ms). */
const peakRss = async (work: () => Promise<void>) => {
  gc()
  await new Promise((r) => setTimeout(r, 50))
  const baseline = process.memoryUsage().rss
  let peak = baseline
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss)
  }, 2)
  const t0 = performance.now()
  await work()
  const millis = performance.now() - t0
  clearInterval(timer)
  peak = Math.max(peak, process.memoryUsage().rss)
  return { growthMiB: (peak - baseline) / MiB, millis }
}

/** Runs `--rss-child <mode> <dir>` in a new Node process and returns what it measured. */
const measureInChild = (mode: "stream" | "stream-gc" | "whole", dir: string) =>
  new Promise<{ growthMiB: number; millis: number }>((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "--expose-gc", fileURLToPath(import.meta.url), "--rss-child", mode, dir],
      { stdio: ["ignore", "pipe", "inherit"] }
    )
    let out = ""
    child.stdout.on("data", (d) => (out += String(d)))
    child.once("exit", (code) => {
      if (code !== 0) return reject(new Error(`rss child (${mode}) exited with ${code}`))
      resolve(JSON.parse(out.trim().split("\n").at(-1)!))
    })
  })

/** Child mode: opens the store and reads the 100 MiB entry once, streamed or whole. */
const child = (mode: string, dir: string) =>
  Effect.gen(function*() {
    const disk = yield* DiskBackend.make({ directory: dir, maxBytes: 4 * 1024 * MiB, maxEntrySize: 256 * MiB })
    const big = 100 * MiB
    const result = yield* Effect.promise(() =>
      peakRss(async () => {
        if (mode === "stream" || mode === "stream-gc") {
          const got = await Effect.runPromise(disk.streaming!.getStream("big"))
          let bytes = 0
          let chunks = 0
          await Effect.runPromise(Stream.runForEach(Option.getOrThrow(got).body, (c) =>
            Effect.sync(() => {
              bytes += c.byteLength
              // diagnostic only: collecting dead chunks shows the live memory of the stream
              if (mode === "stream-gc" && ++chunks % 64 === 0) gc()
            })))
          if (bytes !== big) throw new Error(`streamed ${bytes} bytes`)
        } else {
          const got = await Effect.runPromise(disk.get("big"))
          if (Option.getOrThrow(got).value.byteLength !== big) throw new Error("short read")
        }
      })
    )
    console.log(JSON.stringify(result))
  })

const main = Effect.gen(function*() {
  const redisServer = yield* Effect.acquireRelease(
    Effect.promise(() =>
      startServer(
        "redis-server",
        (port) => ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
      )
    ),
    (s) => Effect.sync(s.kill)
  )
  const memcachedServer = yield* Effect.acquireRelease(
    Effect.promise(() =>
      startServer(
        "memcached",
        (port) => ["-l", "127.0.0.1", "-p", String(port), "-U", "0", "-m", "1024", "-I", "32m", "-u", "root"]
      )
    ),
    (s) => Effect.sync(s.kill)
  )
  const dir = yield* Effect.acquireRelease(
    Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "cachekit-bench-"))),
    (d) => Effect.promise(() => fs.rm(d, { recursive: true, force: true }))
  )

  const redis = yield* RedisBackend.make({ port: redisServer.port, prefix: "bench:", commandTimeout: "5 seconds" })
  const rawRedis = yield* Effect.acquireRelease(
    Effect.sync(() => new Redis({ port: redisServer.port, host: "127.0.0.1" })),
    (c) => Effect.promise(() => c.quit())
  )
  const memcached = yield* MemcachedBackend.make({
    servers: [`127.0.0.1:${memcachedServer.port}`],
    timeout: "5 seconds",
    maxEntrySize: 4 * MiB
  })
  const rawMemcached = yield* Effect.acquireRelease(
    Effect.sync(() => memjs.Client.create(`127.0.0.1:${memcachedServer.port}`, { logger: { log: () => {} } })),
    (c) => Effect.sync(() => c.close())
  )
  const diskDir = path.join(dir, "store")
  const disk = yield* DiskBackend.make({ directory: diskDir, maxBytes: 4 * 1024 * MiB, maxEntrySize: 256 * MiB })
  const rawDir = path.join(dir, "raw")
  yield* Effect.promise(() => fs.mkdir(rawDir))
  let tmpCounter = 0
  // the raw disk baseline: one file per key, atomic (temp + fsync + rename), like the store does
  const rawDisk: RawClient = {
    set: async (key, value) => {
      const tmp = path.join(rawDir, `.tmp-${tmpCounter++}`)
      const fh = await fs.open(tmp, "w")
      await fh.writeFile(value)
      await fh.sync()
      await fh.close()
      await fs.rename(tmp, path.join(rawDir, encodeURIComponent(key)))
    },
    get: (key) => fs.readFile(path.join(rawDir, encodeURIComponent(key)))
  }

  const rows: Array<Row> = []
  for (const [size, n] of [[KiB, 2000], [MiB, 100]] as const) {
    rows.push(
      ...yield* Effect.promise(() =>
        compare(
          "Redis",
          redis,
          {
            set: (k, v) => rawRedis.set(k, v),
            get: (k) => rawRedis.getBuffer(k)
          },
          size,
          n
        )
      )
    )
    rows.push(
      ...yield* Effect.promise(() =>
        compare(
          "Memcached",
          memcached,
          {
            set: (k, v) => rawMemcached.set(k, v, {}),
            get: (k) => rawMemcached.get(k)
          },
          size,
          n
        )
      )
    )
    rows.push(...yield* Effect.promise(() => compare("Disk", disk, rawDisk, size, size >= MiB ? 50 : 500)))
  }

  console.log("\n| backend | value | op | cachekit p50 | cachekit p99 | raw client p50 | raw client p99 | p50 ratio |")
  console.log("|---|---|---|---|---|---|---|---|")
  for (const r of rows) {
    console.log(
      `| ${r.backend} | ${r.size} | ${r.op} | ${r.p50.toFixed(3)} ms | ${r.p99.toFixed(3)} ms | ${
        r.rawP50.toFixed(3)
      } ms | ${r.rawP99.toFixed(3)} ms | ${(r.p50 / r.rawP50).toFixed(2)}x |`
    )
  }

  // ---- 100 MiB streamed GET vs whole read
  const big = 100 * MiB
  const chunk = randomBytes(MiB)
  const streaming = disk.streaming!
  const now = Date.now()
  yield* streaming.setStream(
    "big",
    { createdAt: now, expiresAt: now + 3_600_000, staleUntil: now + 3_600_000, tags: [] },
    Stream.repeatValue(new Uint8Array(chunk)).pipe(Stream.take(big / MiB))
  )
  // each measurement in a fresh process, so memory freed earlier in this one cannot hide growth
  const streamed = yield* Effect.promise(() => measureInChild("stream", diskDir))
  const streamedGc = yield* Effect.promise(() => measureInChild("stream-gc", diskDir))
  const whole = yield* Effect.promise(() => measureInChild("whole", diskDir))
  console.log("\n| disk GET of a 100 MiB entry | peak RSS above baseline | time | throughput |")
  console.log("|---|---|---|---|")
  for (
    const [label, r] of [
      ["streamed (getStream, 64 KiB chunks, verified)", streamed],
      ["streamed, gc() every 64 chunks (diagnostic: live memory)", streamedGc],
      ["whole (get: read + verify)", whole]
    ] as const
  ) {
    console.log(
      `| ${label} | ${r.growthMiB.toFixed(1)} MiB | ${r.millis.toFixed(0)} ms | ${
        (100 / (r.millis / 1000)).toFixed(0)
      } MiB/s |`
    )
  }
  console.log(`\nstreamed peak RSS growth target < 16 MiB: ${streamed.growthMiB < 16 ? "met" : "NOT met"}`)
})

const program = process.argv[2] === "--rss-child" ? child(process.argv[3]!, process.argv[4]!) : main
Effect.runPromise(Effect.scoped(program)).catch((error) => {
  console.error(error)
  process.exit(1)
})
