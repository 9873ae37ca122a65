/**
 * Backends: get/set latency (p50/p99) of each cachekit backend against its raw client in the same
 * run, for 1 KiB and 1 MiB values; and a streamed GET of a 100 MiB disk entry, with the peak RSS
 * growth above baseline (target < 16 MiB), side by side with a raw `fs.createReadStream` pipe of
 * the same file (the floor) and with reading the entry whole. Every memory measurement runs in a
 * fresh Node process; the modes are interleaved over several rounds.
 *
 * Spawns its own redis-server and memcached on free loopback ports. Run: `npx tsc -b && npm run bench -- backends`.
 *   CK_BENCH_PART=disk-stream   only the 100 MiB streamed GET (no servers, no latency tables)
 *   CK_BENCH_RSS_ROUNDS=n       rounds of the memory measurement (default 5)
 */
import { DiskBackend, MemcachedBackend, RedisBackend } from "@cachekit/backends"
import type { CacheBackend } from "@cachekit/core"
import { CacheEntry } from "@cachekit/core"
import * as NodeStream from "@effect/platform-node/NodeStream"
import { Effect, Option, Stream } from "effect"
import { Redis } from "ioredis"
import memjs from "memjs"
import { spawn } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import { createReadStream } from "node:fs"
import * as fs from "node:fs/promises"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Writable } from "node:stream"
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

interface Peak {
  /** Peak RSS above the baseline, MiB. */
  readonly growthMiB: number
  /** Peak `process.memoryUsage().arrayBuffers` above the baseline (Buffers outside the V8 heap), MiB. */
  readonly arrayBuffersMiB: number
  /** Peak `heapTotal` above the baseline, MiB. */
  readonly heapMiB: number
  readonly millis: number
}

/** Peak memory above the baseline while `work` runs (sampled every 2 ms, baseline after `gc()`). */
const peakRss = async (work: () => Promise<void>): Promise<Peak> => {
  gc()
  await new Promise((r) => setTimeout(r, 50))
  gc()
  const base = process.memoryUsage()
  let rss = base.rss
  let arrayBuffers = base.arrayBuffers
  let heap = base.heapTotal
  const sample = () => {
    const m = process.memoryUsage()
    rss = Math.max(rss, m.rss)
    arrayBuffers = Math.max(arrayBuffers, m.arrayBuffers)
    heap = Math.max(heap, m.heapTotal)
  }
  const timer = setInterval(sample, 2)
  const t0 = performance.now()
  await work()
  const millis = performance.now() - t0
  clearInterval(timer)
  sample()
  return {
    growthMiB: (rss - base.rss) / MiB,
    arrayBuffersMiB: (arrayBuffers - base.arrayBuffers) / MiB,
    heapMiB: (heap - base.heapTotal) / MiB,
    millis
  }
}

/** How the 100 MiB entry is read in a child process. */
const rssModes = {
  raw: "raw `fs.createReadStream` (64 KiB) piped to a discarding Writable (the floor)",
  "effect-raw":
    "same file as an Effect stream, no cachekit: `NodeStream.fromReadable(createReadStream)` + `runForEach`",
  stream: "**getStream + `Stream.runForEach`** (64 KiB chunks, verified)",
  "stream-fold": "getStream + `Stream.runFold` (pure per-chunk step)",
  readinto: "**`DiskBackend.readInto`** (lent 64 KiB chunks, one reused buffer, verified)",
  "stream-16k": "getStream + `Stream.runForEach`, `chunkSize: 16 KiB`",
  "stream-gc": "getStream + runForEach, `gc()` every 64 chunks (diagnostic: live memory)",
  whole: "whole (`get`: read + verify)"
} as const
type RssMode = keyof typeof rssModes

/** Runs `--rss-child <mode> <dir> <content file>` in a new Node process and returns what it measured. */
const measureInChild = (mode: RssMode, dir: string, file: string) =>
  new Promise<Peak>((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "--expose-gc", fileURLToPath(import.meta.url), "--rss-child", mode, dir, file],
      { stdio: ["ignore", "pipe", "inherit"] }
    )
    let out = ""
    child.stdout.on("data", (d) => (out += String(d)))
    child.once("exit", (code) => {
      if (code !== 0) return reject(new Error(`rss child (${mode}) exited with ${code}`))
      resolve(JSON.parse(out.trim().split("\n").at(-1)!))
    })
  })

const BIG = 100 * MiB

/** Child mode: opens the store and reads the 100 MiB entry once, as `mode` says. */
const child = (mode: RssMode, dir: string, file: string) =>
  Effect.gen(function*() {
    const disk = yield* DiskBackend.make({
      directory: dir,
      maxBytes: 4 * 1024 * MiB,
      maxEntrySize: 256 * MiB,
      ...(mode === "stream-16k" ? { chunkSize: 16 * KiB } : {})
    })
    const result = yield* Effect.promise(() =>
      peakRss(async () => {
        let bytes = 0
        if (mode === "raw") {
          await new Promise<void>((resolve, reject) => {
            createReadStream(file, { highWaterMark: 64 * KiB }).on("error", reject).pipe(
              new Writable({
                write(c: Buffer, _encoding, callback) {
                  bytes += c.byteLength
                  callback()
                }
              })
            ).on("finish", resolve).on("error", reject)
          })
        } else if (mode === "effect-raw") {
          await Effect.runPromise(Stream.runForEach(
            NodeStream.fromReadable<Error, Uint8Array>(
              () => createReadStream(file, { highWaterMark: 64 * KiB }),
              (cause) => new Error(String(cause)),
              { chunkSize: 64 * KiB }
            ),
            (c) => Effect.sync(() => (bytes += c.byteLength))
          ))
        } else if (mode === "readinto") {
          await Effect.runPromise(DiskBackend.readInto(disk, "big", (c) => Effect.sync(() => (bytes += c.byteLength))))
        } else if (mode === "whole") {
          const got = await Effect.runPromise(disk.get("big"))
          bytes = Option.getOrThrow(got).value.byteLength
        } else {
          const body = Option.getOrThrow(await Effect.runPromise(disk.streaming!.getStream("big"))).body
          if (mode === "stream-fold") {
            bytes = await Effect.runPromise(Stream.runFold(body, 0, (n, c) => n + c.byteLength))
          } else {
            let chunks = 0
            await Effect.runPromise(Stream.runForEach(body, (c) =>
              Effect.sync(() => {
                bytes += c.byteLength
                // diagnostic only: collecting dead chunks shows the live memory of the stream
                if (mode === "stream-gc" && ++chunks % 64 === 0) gc()
              })))
          }
        }
        if (bytes !== BIG) throw new Error(`${mode}: read ${bytes} bytes`)
      })
    )
    console.log(JSON.stringify(result))
  })

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

/** Writes the 100 MiB entry into the store in `dir` and measures every read mode, interleaved. */
const diskStreamRss = (dir: string) =>
  Effect.gen(function*() {
    const storeDir = path.join(dir, "big-store")
    const chunk = randomBytes(MiB)
    const hash = createHash("sha256")
    for (let i = 0; i < BIG / MiB; i++) hash.update(chunk)
    const digest = hash.digest("hex")
    const file = path.join(storeDir, "content", "sha256", digest.slice(0, 2), digest)
    yield* Effect.scoped(Effect.gen(function*() {
      const disk = yield* DiskBackend.make({ directory: storeDir, maxBytes: 4 * 1024 * MiB, maxEntrySize: 256 * MiB })
      const now = Date.now()
      yield* disk.streaming!.setStream(
        "big",
        { createdAt: now, expiresAt: now + 3_600_000, staleUntil: now + 3_600_000, tags: [] },
        Stream.repeatValue(new Uint8Array(chunk)).pipe(Stream.take(BIG / MiB))
      )
    }))
    const rounds = Number(process.env["CK_BENCH_RSS_ROUNDS"] ?? 5)
    const modes = Object.keys(rssModes) as Array<RssMode>
    const results = new Map<RssMode, Array<Peak>>(modes.map((m) => [m, []]))
    for (let round = 0; round < rounds; round++) {
      // interleaved, and each in a fresh process, so memory freed earlier in one cannot hide growth
      for (const mode of modes) {
        results.get(mode)!.push(yield* Effect.promise(() => measureInChild(mode, storeDir, file)))
      }
    }
    const rawMedian = median(results.get("raw")!.map((r) => r.growthMiB))
    console.log(`\nDisk GET of a 100 MiB entry: medians of ${rounds} interleaved rounds, each read in a fresh process`)
    console.log(
      "\n| read | peak RSS above baseline | vs raw | per run (MiB) | peak arrayBuffers | peak heapTotal | time | throughput |"
    )
    console.log("|---|---:|---:|---|---:|---:|---:|---:|")
    for (const mode of modes) {
      const rs = results.get(mode)!
      const growth = median(rs.map((r) => r.growthMiB))
      const millis = median(rs.map((r) => r.millis))
      console.log(
        `| ${rssModes[mode]} | ${growth.toFixed(1)} MiB | ${(growth / rawMedian).toFixed(2)}x | ${
          rs.map((r) => r.growthMiB.toFixed(0)).join(", ")
        } | ${median(rs.map((r) => r.arrayBuffersMiB)).toFixed(1)} MiB | ${
          median(rs.map((r) => r.heapMiB)).toFixed(1)
        } MiB | ${millis.toFixed(0)} ms | ${(100 / (millis / 1000)).toFixed(0)} MiB/s |`
      )
    }
    for (const mode of ["stream", "readinto"] as const) {
      const growth = median(results.get(mode)!.map((r) => r.growthMiB))
      console.log(
        `${mode === "stream" ? "getStream" : "readInto"} peak RSS growth target < 16 MiB: ${
          growth < 16 ? "met" : "NOT met"
        } (${growth.toFixed(1)} MiB)`
      )
    }
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

  yield* diskStreamRss(dir)
})

const program = process.argv[2] === "--rss-child"
  ? child(process.argv[3] as RssMode, process.argv[4]!, process.argv[5]!)
  : process.env["CK_BENCH_PART"] === "disk-stream"
  ? Effect.flatMap(
    Effect.acquireRelease(
      Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "cachekit-bench-"))),
      (d) => Effect.promise(() => fs.rm(d, { recursive: true, force: true }))
    ),
    diskStreamRss
  )
  : main
Effect.runPromise(Effect.scoped(program)).catch((error) => {
  console.error(error)
  process.exit(1)
})
