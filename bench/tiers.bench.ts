/**
 * Tiers: L1 hit and L2 hit latency through `TieredCache` (MemoryBackend L1 + RedisBackend L2),
 * side by side with bentocache (memory + redis driver) and a raw ioredis GET of the same bytes on
 * the same Redis, in one run. Rounds interleave the cases so drift hits them all alike; each figure
 * is the median over rounds.
 *
 *   npm run bench -- tiers                      Redis at 127.0.0.1:6379
 *   CK_BENCH_REDIS=spawn npm run bench -- tiers a redis-server of its own, pinned to CPU 0
 *
 * The benchmark re-runs itself under `taskset -c 0` (when taskset exists) so that the client, and
 * in spawn mode the server, share one CPU: cross-CPU wake-ups swing loopback latency several-fold
 * on a 2-core machine.
 *
 * It re-runs itself as plain JavaScript under plain `node` (bench/lib/plainNode.ts), the way an
 * application runs cachekit: under tsx (which `npm run bench` uses) the workspace packages' ESM
 * `dist` is rewritten into CommonJS with a `__name()` call per closure created and Effect's CommonJS
 * build is loaded, while bentocache and ioredis (in node_modules) run untouched; that made every
 * cachekit row slower than shipped code is. `CK_BENCH_LOADER=tsx` keeps the old way, to compare.
 */
import { RedisBackend } from "@cachekit/backends"
import { Cache, CacheBackend, CacheEntry, MemoryBackend, TieredCache } from "@cachekit/core"
import { BentoCache, bentostore } from "bentocache"
import { memoryDriver } from "bentocache/drivers/memory"
import { redisDriver } from "bentocache/drivers/redis"
import { Effect, Either, Exit, Schema, Scope } from "effect"
import { Redis } from "ioredis"
import { type ChildProcess, spawn } from "node:child_process"
import * as net from "node:net"
import { asPlainJs, hasTaskset, runAsPlainNode } from "./lib/plainNode.js"

runAsPlainNode(import.meta.url, { cpu: "0" })

const ROUNDS = 7
const L2_OPS = 1500
const L1_LOOP_OPS = 200_000
const L1_AWAIT_OPS = 50_000
const KEYS = 256
const VALUE = "x".repeat(1024)

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = net.createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const a = s.address()
      s.close(() => resolve(typeof a === "object" && a !== null ? a.port : 0))
    })
  })

const waitForPort = async (port: number) => {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect({ host: "127.0.0.1", port })
      c.once("connect", () => (c.destroy(), resolve(true)))
      c.once("error", () => resolve(false))
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 25))
  }
  throw new Error(`redis-server on ${port} did not start`)
}

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

interface Latency {
  readonly p50: number
  readonly mean: number
  readonly p99: number
}

/** Per-operation latency (µs) of `n` sequential awaited calls. */
const latencyOf = async (n: number, op: (i: number) => Promise<unknown>): Promise<Latency> => {
  const samples = new Float64Array(n)
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint()
    await op(i)
    samples[i] = Number(process.hrtime.bigint() - t0) / 1000
  }
  const sorted = [...samples].sort((a, b) => a - b)
  return {
    p50: sorted[Math.floor(n / 2)]!,
    mean: sorted.reduce((a, b) => a + b, 0) / n,
    p99: sorted[Math.floor(n * 0.99)]!
  }
}

/** The same, timed inside one Effect loop (no runPromise per call). */
const latencyInEffect = (n: number, op: (i: number) => Effect.Effect<unknown, unknown>): Promise<Latency> =>
  Effect.runPromise(Effect.gen(function*() {
    const samples = new Float64Array(n)
    for (let i = 0; i < n; i++) {
      const t0 = process.hrtime.bigint()
      yield* op(i)
      samples[i] = Number(process.hrtime.bigint() - t0) / 1000
    }
    const sorted = [...samples].sort((a, b) => a - b)
    return {
      p50: sorted[Math.floor(n / 2)]!,
      mean: sorted.reduce((a, b) => a + b, 0) / n,
      p99: sorted[Math.floor(n * 0.99)]!
    }
  }))

/** Throughput (ns per op) of `n` ops in a tight loop: for hits too fast to time one by one. */
const nsPerOp = async (n: number, run: (n: number) => Promise<unknown>) => {
  const t0 = process.hrtime.bigint()
  await run(n)
  return Number(process.hrtime.bigint() - t0) / n
}

const main = async () => {
  let server: ChildProcess | undefined
  let host = "127.0.0.1"
  let port: number
  const target = process.env["CK_BENCH_REDIS"] ?? "127.0.0.1:6379"
  if (target === "spawn") {
    port = await freePort()
    const args = [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--loglevel",
      "warning"
    ]
    server = hasTaskset
      ? spawn("taskset", ["-c", "0", "redis-server", ...args], { stdio: "ignore" })
      : spawn("redis-server", args, { stdio: "ignore" })
    await waitForPort(port)
  } else {
    const [h, p] = target.split(":")
    host = h ?? host
    port = Number(p ?? 6379)
  }
  const prefix = `bench-tiers:${process.pid}:`
  const keys = Array.from({ length: KEYS }, (_, i) => `k${i}`)
  const keyOf = (i: number) => keys[i % KEYS]!

  // ---- cachekit ----
  const scope = Effect.runSync(Scope.make())
  const build = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))
  const redisBackend = await build(RedisBackend.make({ host, port, prefix }))
  const memory = await build(MemoryBackend.make({ maxEntries: 10_000 }))
  // L1 that is never filled: every read is an L1 miss answered by L2
  const emptyL1 = await build(MemoryBackend.make({ maxEntries: 10_000, name: "empty-l1" }))
  const tieredL1 = await build(TieredCache.make([{ backend: memory }, { backend: redisBackend }]))
  const tieredL2 = await build(
    TieredCache.make([{ backend: emptyL1, promote: "never", writeThrough: false }, { backend: redisBackend }])
  )
  const typedOn = async (tiered: TieredCache.TieredCache) => {
    const cache = await build(Cache.make().pipe(Effect.provideService(CacheBackend.CacheBackendTag, tiered.backend)))
    return cache.typed(Schema.String)
  }
  const typedL1 = await typedOn(tieredL1)
  const typedL2 = await typedOn(tieredL2)
  for (const key of keys) await Effect.runPromise(typedL1.set(key, VALUE, { ttl: "1 hour" }))
  for (const key of keys) await Effect.runPromise(tieredL1.get(key)) // warm L1

  // ---- raw ioredis: GET of the very bytes cachekit stored ----
  const raw = new Redis({ host, port, lazyConnect: true })
  await raw.connect()
  // the same client settings as RedisBackend's: a command timeout arms a timer per command
  const rawTimed = new Redis({ host, port, lazyConnect: true, commandTimeout: 1000 })
  await rawTimed.connect()
  const rawKey = (key: string) => `${prefix}e{${key}}`
  const sample = await raw.getBuffer(rawKey(keys[0]!))
  if (sample === null || CacheEntry.decodeEither("k", sample)._tag !== "Right") {
    throw new Error("the raw key layout does not match what RedisBackend wrote")
  }

  // ---- bentocache ----
  const bento = new BentoCache({
    default: "tiered",
    stores: {
      tiered: bentostore()
        .useL1Layer(memoryDriver({ maxItems: 10_000 }))
        .useL2Layer(redisDriver({ connection: { host, port }, prefix: `${prefix}bento` })),
      l2only: bentostore().useL2Layer(redisDriver({ connection: { host, port }, prefix: `${prefix}bento2` }))
    }
  })
  const bentoTiered = bento.use("tiered")
  const bentoL2 = bento.use("l2only")
  for (const key of keys) {
    await bentoTiered.set({ key, value: VALUE, ttl: "1h" })
    await bentoL2.set({ key, value: VALUE, ttl: "1h" })
  }
  for (const key of keys) await bentoTiered.get({ key })

  const check = (v: unknown) => {
    if (v === undefined || v === null) throw new Error("a benchmark read missed")
  }

  const l2Cases: ReadonlyArray<[string, () => Promise<Latency>]> = [
    [
      "raw ioredis GET (same bytes)",
      () => latencyOf(L2_OPS, async (i) => check(await raw.getBuffer(rawKey(keyOf(i)))))
    ],
    [
      "raw ioredis GET, client with commandTimeout 1 s (as RedisBackend's)",
      () => latencyOf(L2_OPS, async (i) => check(await rawTimed.getBuffer(rawKey(keyOf(i)))))
    ],
    [
      "raw ioredis GET + CacheEntry.decodeEither",
      () =>
        latencyOf(L2_OPS, async (i) => {
          const bytes = await raw.getBuffer(rawKey(keyOf(i)))
          check(bytes === null ? undefined : Either.getOrUndefined(CacheEntry.decodeEither("k", bytes)))
        })
    ],
    [
      "floor: Effect.runPromise(Effect.promise(() => raw GET))",
      () =>
        latencyOf(
          L2_OPS,
          async (i) => check(await Effect.runPromise(Effect.promise(() => raw.getBuffer(rawKey(keyOf(i))))))
        )
    ],
    [
      "cachekit RedisBackend.get alone (no tiers), runPromise per call",
      () =>
        latencyOf(L2_OPS, async (i) => {
          const r = await Effect.runPromise(redisBackend.get(keyOf(i)))
          if (r._tag === "None") check(undefined)
        })
    ],
    [
      "cachekit TieredCache.get, L2 hit, runPromise per call",
      () =>
        latencyOf(L2_OPS, async (i) => {
          const r = await Effect.runPromise(tieredL2.get(keyOf(i)))
          if (r._tag === "None") check(undefined)
        })
    ],
    [
      "cachekit TieredCache.get, L2 hit, one Effect loop",
      () => latencyInEffect(L2_OPS, (i) => tieredL2.get(keyOf(i)))
    ],
    [
      "cachekit Cache.get (typed) over tiers, L2 hit, runPromise per call",
      () =>
        latencyOf(L2_OPS, async (i) => {
          const r = await Effect.runPromise(typedL2.get(keyOf(i)))
          if (r._tag === "None") check(undefined)
        })
    ],
    [
      "bentocache get, L2 hit (redis-only store)",
      () => latencyOf(L2_OPS, async (i) => check(await bentoL2.get({ key: keyOf(i) })))
    ]
  ]

  /** Two rows for a cachekit read: inside one Effect loop, and one `runPromise` per call. */
  const l1Rows = (
    label: string,
    get: (key: string) => Effect.Effect<{ readonly _tag: "None" | "Some" }, unknown>
  ): Array<[string, () => Promise<number>]> => [
    [
      `${label}, L1 hit, one Effect loop`,
      () =>
        nsPerOp(L1_LOOP_OPS, (n) =>
          Effect.runPromise(Effect.gen(function*() {
            for (let i = 0; i < n; i++) if ((yield* get(keyOf(i)))._tag === "None") check(undefined)
          })))
    ],
    [
      `${label}, L1 hit, runPromise per call`,
      () =>
        nsPerOp(L1_AWAIT_OPS, async (n) => {
          for (let i = 0; i < n; i++) {
            if ((await Effect.runPromise(get(keyOf(i))))._tag === "None") check(undefined)
          }
        })
    ]
  ]

  const l1Cases: ReadonlyArray<[string, () => Promise<number>]> = [
    ...l1Rows("cachekit TieredCache.get", (key) => tieredL1.get(key)),
    ...l1Rows("cachekit Cache.get (typed) over tiers", (key) => typedL1.get(key)),
    [
      "bentocache get, L1 hit (memory + redis store)",
      () =>
        nsPerOp(L1_AWAIT_OPS, async (n) => {
          for (let i = 0; i < n; i++) check(await bentoTiered.get({ key: keyOf(i) }))
        })
    ]
  ]

  // warm-up round (JIT), not recorded
  for (const [, run] of l2Cases) await run()
  for (const [, run] of l1Cases) await run()
  const l2Results = new Map<string, Array<Latency>>()
  const l1Results = new Map<string, Array<number>>()
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, run] of l2Cases) l2Results.set(name, [...(l2Results.get(name) ?? []), await run()])
    for (const [name, run] of l1Cases) l1Results.set(name, [...(l1Results.get(name) ?? []), await run()])
  }

  const l2 = [...l2Results].map(([name, rs]) => ({
    name,
    p50: median(rs.map((r) => r.p50)),
    mean: median(rs.map((r) => r.mean)),
    p99: median(rs.map((r) => r.p99))
  }))
  const l1 = [...l1Results].map(([name, rs]) => ({ name, ns: median(rs) }))
  const rawP50 = l2[0]!.p50
  const rawMean = l2[0]!.mean

  console.log(
    `\nRedis ${target === "spawn" ? `spawned on :${port}` : `${host}:${port}`}, client ${
      hasTaskset ? "pinned to CPU 0" : "not pinned"
    }${target === "spawn" && hasTaskset ? ", server pinned to CPU 0" : ""}; value 1 KiB; ${ROUNDS} rounds, medians.\n`
  )
  console.log("| L2 hit | p50 µs | mean µs | p99 µs | p50 vs raw GET | mean vs raw GET |")
  console.log("|---|---:|---:|---:|---:|---:|")
  for (const r of l2) {
    console.log(
      `| ${r.name} | ${r.p50.toFixed(1)} | ${r.mean.toFixed(1)} | ${r.p99.toFixed(1)} | ${
        (r.p50 / rawP50).toFixed(2)
      }x | ${(r.mean / rawMean).toFixed(2)}x |`
    )
  }
  console.log("\n| L1 hit | ns/op | M ops/s | vs bentocache |")
  console.log("|---|---:|---:|---:|")
  const bentoNs = l1[l1.length - 1]!.ns
  for (const r of l1) {
    console.log(
      `| ${r.name} | ${r.ns.toFixed(0)} | ${(1000 / r.ns).toFixed(3)} | ${(bentoNs / r.ns).toFixed(2)}x faster |`
    )
  }
  const ck = l2.find((r) => r.name === "cachekit TieredCache.get, L2 hit, runPromise per call")!
  const backendAlone = l2.find((r) => r.name.startsWith("cachekit RedisBackend.get alone"))!
  const ckL1 = l1.find((r) => r.name === "cachekit TieredCache.get, L1 hit, runPromise per call")!
  console.log(`\n| target | measured | goal | met |`)
  console.log(`|---|---:|---:|:---:|`)
  console.log(
    `| TieredCache L2 hit (runPromise per call) / raw GET, p50 | ${(ck.p50 / rawP50).toFixed(2)}x | <= 1.3x | ${
      ck.p50 / rawP50 <= 1.3 ? "yes" : "no"
    } |`
  )
  console.log(
    `| TieredCache L1 hit (runPromise per call) vs bentocache L1 hit | ${
      (bentoNs / ckL1.ns).toFixed(2)
    }x as fast | >= 1x | ${bentoNs / ckL1.ns >= 1 ? "yes" : "no"} |`
  )
  console.log(
    `| (info) TieredCache L2 hit / RedisBackend.get alone, p50 (the tiers' own cost) | ${
      (ck.p50 / backendAlone.p50).toFixed(2)
    }x | | |`
  )
  const bentoL2Row = l2[l2.length - 1]!
  console.log(`| (info) bentocache L2 hit / raw GET, p50 | ${(bentoL2Row.p50 / rawP50).toFixed(2)}x | | |`)
  const floor = l2.find((r) => r.name.startsWith("floor:"))!
  console.log(
    `| (info) floor, runPromise(Effect.promise(raw GET)) / raw GET, p50: any Effect API's least cost | ${
      (floor.p50 / rawP50).toFixed(2)
    }x | | |`
  )
  console.log(
    `| (info) ${asPlainJs ? "ran as plain JS under node" : "ran under tsx (CK_BENCH_LOADER=tsx)"} | | | |`
  )

  // ---- cleanup: our keys only ----
  await bento.disconnectAll()
  await Effect.runPromise(Scope.close(scope, Exit.void))
  let cursor = "0"
  do {
    const [next, found] = await raw.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000)
    if (found.length > 0) await raw.del(...found)
    cursor = next
  } while (cursor !== "0")
  await raw.quit()
  await rawTimed.quit()
  server?.kill("SIGKILL")
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
