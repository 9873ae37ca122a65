/**
 * Stampede protection: 1,000 concurrent callers miss one key whose compute takes 20 ms. Counts the
 * computes and measures the wall time from the start of the stampede until every caller has its
 * value (target: one compute, all done within 1.2x the compute time, i.e. 24 ms). The Effect rows
 * fork 1,000 fibers (`Effect.fork` in a loop) that each call the cache and then join them; the
 * floor row is the same 1,000 fibers awaiting one Deferred that a 20 ms timer completes, no cache,
 * so a reader sees what the Effect runtime itself costs. Side by side with effect's `Cache` (its
 * lookup is deduplicated too), bentocache `getOrSet` (memory driver) and cache-manager `wrap`.
 *
 * Per round: wall time (start to the last caller's value), the part of it after the compute ended
 * (waking the callers), and CPU time of the process.
 *
 * Writes the table into bench/README.md under "## Single-flight" (only that section).
 * Run: `npm run bench -- single-flight`.
 *
 * Runs as plain JavaScript under plain `node` (bench/lib/plainNode.ts: under tsx the workspace
 * packages run as rewritten CommonJS with Effect's CommonJS build, slower than shipped code);
 * `CK_BENCH_LOADER=tsx` runs it the old way. Not pinned to a CPU: everything happens in one process
 * (no client/server wake-ups across CPUs, which is what pinning fixes in the tiers bench), and
 * pinning would put V8's GC helper threads on the same CPU as the fibers being timed.
 */
import { Cache, MemoryBackend } from "@cachekit/core"
import { BentoCache, bentostore } from "bentocache"
import { memoryDriver } from "bentocache/drivers/memory"
import { createCache } from "cache-manager"
import { Cache as EffectCache, Deferred, Duration, Effect, Fiber, Layer, ManagedRuntime, Schema } from "effect"
import { cpus, loadavg } from "node:os"
import { setTimeout as sleep } from "node:timers/promises"
import { describeRun, runAsPlainNode } from "./lib/plainNode.js"
import { writeReadmeSection } from "./lib/readme.js"

// Not pinned: see the header comment.
runAsPlainNode(import.meta.url)

const writeSection = (title: string, body: string) => writeReadmeSection(`## ${title}\n\n${body}`)

const CALLERS = 1_000
const COMPUTE_MS = 20
const ROUNDS = 9
const TARGET_MS = COMPUTE_MS * 1.2

/** What one stampede measured. */
interface Round {
  readonly computes: number
  /** When the compute (or the floor's timer) ended, and when the last caller had its value. */
  readonly computeEnd: number
  readonly lastValue: number
}

interface Result {
  readonly name: string
  readonly computes: ReadonlyArray<number>
  readonly millis: ReadonlyArray<number>
  /** Last caller's value minus the end of the compute: waking and finishing the callers. */
  readonly wakeMillis: ReadonlyArray<number>
  /** CPU time of this process per round (user + system; GC threads can make it exceed wall time). */
  readonly cpuMillis: ReadonlyArray<number>
}

const cpuNow = () => {
  const usage = process.cpuUsage()
  return (usage.user + usage.system) / 1000
}

interface Contender {
  readonly name: string
  /** One stampede on a fresh key, started at `start`. */
  readonly round: (key: string) => Promise<Round>
}

/**
 * Runs every contender ROUNDS times, round-robin (so load on the shared machine spreads over all of
 * them), each round on a fresh key, after two warm-up rounds each (JIT, lazy initialisation).
 */
const runAll = async (contenders: ReadonlyArray<Contender>): Promise<Array<Result>> => {
  // Keys are per row as well as per round: two rows share cachekit's cache.
  for (let i = 0; i < 2; i++) {
    for (let j = 0; j < contenders.length; j++) await contenders[j]!.round(`warm-up-${i}-${j}`)
  }
  const results = contenders.map((c) => ({
    name: c.name,
    computes: [] as Array<number>,
    millis: [] as Array<number>,
    wakeMillis: [] as Array<number>,
    cpuMillis: [] as Array<number>
  }))
  for (let i = 0; i < ROUNDS; i++) {
    for (let j = 0; j < contenders.length; j++) {
      const start = performance.now()
      const cpuStart = cpuNow()
      const round = await contenders[j]!.round(`key-${i}-${j}`)
      const cpu = cpuNow() - cpuStart
      results[j]!.computes.push(round.computes)
      results[j]!.millis.push(round.lastValue - start)
      results[j]!.wakeMillis.push(round.lastValue - round.computeEnd)
      results[j]!.cpuMillis.push(cpu)
    }
  }
  return results
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const main = async () => {
  const runtime = ManagedRuntime.make(Cache.layer({ ttl: "1 hour" }).pipe(Layer.provide(MemoryBackend.layer())))
  const text = (await runtime.runPromise(Cache.Cache)).typed(Schema.String)
  const loadBefore = loadavg()[0]!

  const contenders: Array<Contender> = []
  const contender = (name: string, round: (key: string) => Promise<Round>): Contender => ({ name, round })

  // Shared by the rows: the time a caller last got its value, and when the compute ended.
  let lastValue = 0
  let computeEnd = 0
  let computes = 0
  const gotValue = Effect.sync(() => {
    lastValue = performance.now()
  })
  const timedCompute = Effect.sleep(Duration.millis(COMPUTE_MS)).pipe(
    Effect.zipRight(Effect.sync(() => {
      computes++
      computeEnd = performance.now()
    })),
    Effect.as("value")
  )
  const check = (values: ReadonlyArray<string>) => {
    if (values.length !== CALLERS || values.some((v) => v !== "value")) throw new Error("wrong values")
  }

  /** Forks CALLERS fibers running `caller` (each notes when it has its value), then joins them all. */
  const stampede = <E>(caller: Effect.Effect<string, E>) =>
    Effect.gen(function*() {
      const fibers: Array<Fiber.RuntimeFiber<string, E>> = []
      for (let i = 0; i < CALLERS; i++) fibers.push(yield* Effect.fork(Effect.tap(caller, () => gotValue)))
      const values: Array<string> = []
      for (const fiber of fibers) values.push(yield* Fiber.join(fiber))
      return values
    })

  const effectRound = async <E>(run: Effect.Effect<ReadonlyArray<string>, E>): Promise<Round> => {
    computes = 0
    check(await runtime.runPromise(run))
    return { computes, computeEnd, lastValue }
  }

  contenders.push(
    contender(
      "cachekit getOrCompute (1,000 forked fibers)",
      (key) => effectRound(stampede(text.getOrCompute(key, timedCompute)))
    )
  )

  // The floor: the same 1,000 forked fibers awaiting one Deferred that a 20 ms timer completes,
  // no cache. What cachekit adds is the difference to this row.
  contenders.push(
    contender("floor: 1,000 forked fibers await one Deferred (no cache)", async () => {
      const round = await effectRound(Effect.gen(function*() {
        const done = yield* Deferred.make<string>()
        yield* Effect.forkDaemon(Effect.flatMap(timedCompute, (v) => Deferred.succeed(done, v)))
        return yield* stampede(Deferred.await(done))
      }))
      return { ...round, computes: Number.NaN } // the timer is not a compute
    })
  )

  // How the callers are started matters: `Effect.all` with unbounded concurrency costs more per
  // fiber than forking in a loop (it is what this bench used before).
  contenders.push(
    contender("cachekit getOrCompute (Effect.all, unbounded)", (key) =>
      effectRound(
        Effect.all(
          Array.from({ length: CALLERS }, () => Effect.tap(text.getOrCompute(key, timedCompute), () => gotValue)),
          { concurrency: "unbounded" }
        )
      ))
  )

  const effectCache = await Effect.runPromise(
    EffectCache.make({ capacity: 10_000, timeToLive: Duration.hours(1), lookup: (_key: string) => timedCompute })
  )
  contenders.push(
    contender("effect Cache.get (1,000 forked fibers)", (key) => effectRound(stampede(effectCache.get(key))))
  )

  const promiseRound = async (call: (factory: () => Promise<string>) => Promise<string>): Promise<Round> => {
    let promiseComputes = 0
    let end = 0
    let last = 0
    const factory = async () => {
      promiseComputes++
      await sleep(COMPUTE_MS)
      end = performance.now()
      return "value"
    }
    check(
      await Promise.all(Array.from({ length: CALLERS }, () =>
        call(factory).then((v) => {
          last = performance.now()
          return v
        })))
    )
    return { computes: promiseComputes, computeEnd: end, lastValue: last }
  }

  const bento = new BentoCache({
    default: "memory",
    stores: { memory: bentostore().useL1Layer(memoryDriver({ maxItems: 10_000 })) }
  })
  contenders.push(
    contender("bentocache getOrSet", (key) => promiseRound((factory) => bento.getOrSet({ key, factory, ttl: "1h" })))
  )

  const manager = createCache({ ttl: 3_600_000 })
  contenders.push(
    contender("cache-manager wrap", (key) => promiseRound((factory) => manager.wrap(key, factory, 3_600_000)))
  )

  const results = await runAll(contenders)
  const loadAfter = loadavg()[0]!
  const rows = results.map((r) => {
    const med = median(r.millis)
    return `| ${r.name} | ${r.computes.map((c) => (Number.isNaN(c) ? "-" : String(c))).join(", ")} | ${
      med.toFixed(1)
    } | ${Math.min(...r.millis).toFixed(1)} | ${(med / COMPUTE_MS).toFixed(2)}x | ${
      median(r.wakeMillis).toFixed(1)
    } | ${median(r.cpuMillis).toFixed(1)} | ${(median(r.cpuMillis) * 1000 / CALLERS).toFixed(1)} |`
  })
  const table = [
    `| library | computes per round (${ROUNDS} rounds) | median ms | best ms | median / compute time | ` +
    "median ms after the compute ended | median CPU ms | CPU µs per caller |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
    ...rows
  ]
  console.log(table.join("\n"))

  const ours = results[0]!
  const floor = results[1]!
  const oneCompute = ours.computes.every((c) => c === 1)
  const withinTarget = median(ours.millis) <= TARGET_MS
  const floorWithin = median(floor.millis) <= TARGET_MS
  const verdict =
    `cachekit: ${oneCompute ? "one compute in every round" : "MORE THAN ONE COMPUTE"}; median ${
      median(ours.millis).toFixed(1)
    } ms (best ${Math.min(...ours.millis).toFixed(1)} ms) vs target ${TARGET_MS} ms (1.2x the ${COMPUTE_MS} ms ` +
    `compute): ${withinTarget ? "met" : "not met"}. The floor (the same ${CALLERS} forked fibers on one ` +
    `Deferred, no cache) takes ${median(floor.millis).toFixed(1)} ms (${
      floorWithin ? "within" : "itself over"
    } the target), of which ${
      median(floor.wakeMillis).toFixed(1)
    } ms after its timer fired, i.e. the Effect runtime resuming, finishing ` +
    `and joining ${CALLERS} fibers; cachekit needs ${median(ours.wakeMillis).toFixed(1)} ms after its compute ` +
    `ended and ${(median(ours.cpuMillis) / median(floor.cpuMillis)).toFixed(2)}x the floor's CPU time ` +
    `(${(median(ours.cpuMillis) * 1000 / CALLERS).toFixed(1)} vs ${
      (median(floor.cpuMillis) * 1000 / CALLERS).toFixed(1)
    } µs per caller)${
      median(ours.cpuMillis) <= median(floor.cpuMillis) * 1.05
        ? ", i.e. no per-caller cost above the floor that this machine can resolve"
        : ": the difference is cachekit's per-caller work (key check, a W-TinyLFU miss, miss accounting, " +
          "joining the in-flight Deferred)"
    }. Between runs on this loaded machine these per-fiber numbers move by ±30% (GC timing). ` +
    `Load average (1 min) on the ${cpus().length}-core machine: ${loadBefore.toFixed(1)} before, ${
      loadAfter.toFixed(1)
    } after the run.`
  console.log("\n" + verdict)

  writeSection(
    "Single-flight",
    [
      `Measured by \`npm run bench -- single-flight\` (${
        new Date().toISOString().slice(0, 10)
      }, Node ${process.version}, ` +
      `shared ${cpus().length}-core machine; ${describeRun()}, see bench/lib/plainNode.ts). ${CALLERS} concurrent callers miss one key whose compute takes ` +
      `${COMPUTE_MS} ms (a timer); wall time from the start of the stampede until the last caller has its ` +
      `value, ${ROUNDS} rounds on fresh keys, round-robin over the rows. The Effect rows fork ${CALLERS} fibers ` +
      "in a loop (`Effect.fork`), each calling the cache, and join them; the floor row is the same fibers " +
      "awaiting one Deferred that a timer completes, no cache: what the Effect runtime itself costs. The " +
      "compute's own timer is part of the time, so event-loop delay on a loaded machine shows up here; " +
      "\"after the compute ended\" is the part spent waking the callers. CPU time includes GC threads, so it " +
      "can exceed wall time.",
      "",
      ...table,
      "",
      verdict
    ].join("\n")
  )
  await bento.disconnect()
  await runtime.dispose()
  if (!oneCompute) process.exit(1)
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
