/**
 * Stampede protection: 1,000 concurrent callers miss one key whose compute takes 20 ms. Counts the
 * computes and measures the wall time until every caller has its value (target: one compute, all
 * done within 1.2x the compute time, i.e. 24 ms). Side by side with effect's `Cache` (its lookup is
 * deduplicated too), bentocache `getOrSet` (memory driver) and cache-manager `wrap`.
 *
 * Writes the table into bench/README.md under "## Single-flight" (only that section).
 * Run: `npm run bench -- single-flight`.
 */
import { Cache, MemoryBackend } from "@cachekit/core"
import { BentoCache, bentostore } from "bentocache"
import { memoryDriver } from "bentocache/drivers/memory"
import { createCache } from "cache-manager"
import { Cache as EffectCache, Deferred, Duration, Effect, Layer, ManagedRuntime, Schema } from "effect"
import { setTimeout as sleep } from "node:timers/promises"
import { writeReadmeSection } from "./lib/readme.js"

const writeSection = (title: string, body: string) => writeReadmeSection(`## ${title}\n\n${body}`)

const CALLERS = 1_000
const COMPUTE_MS = 20
const ROUNDS = 7
const TARGET_MS = COMPUTE_MS * 1.2

interface Result {
  readonly name: string
  readonly computes: ReadonlyArray<number>
  readonly millis: ReadonlyArray<number>
  /** CPU time of this process per round: the wall time minus what other processes on the machine took. */
  readonly cpuMillis: ReadonlyArray<number>
}

const cpuNow = () => {
  const usage = process.cpuUsage()
  return (usage.user + usage.system) / 1000
}

interface Contender {
  readonly name: string
  /** One stampede on a fresh key; returns how many computes ran. */
  readonly round: (key: string) => Promise<number>
}

/**
 * Runs every contender ROUNDS times, round-robin (so load on the shared machine spreads over all of
 * them), each round on a fresh key, after one warm-up round each (JIT, lazy initialisation).
 */
const runAll = async (contenders: ReadonlyArray<Contender>): Promise<Array<Result>> => {
  for (const c of contenders) await c.round("warm-up")
  const results = contenders.map((c) => ({
    name: c.name,
    computes: [] as Array<number>,
    millis: [] as Array<number>,
    cpuMillis: [] as Array<number>
  }))
  for (let i = 0; i < ROUNDS; i++) {
    for (let j = 0; j < contenders.length; j++) {
      const start = performance.now()
      const cpuStart = cpuNow()
      results[j]!.computes.push(await contenders[j]!.round(`key-${i}`))
      results[j]!.millis.push(performance.now() - start)
      results[j]!.cpuMillis.push(cpuNow() - cpuStart)
    }
  }
  return results
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const main = async () => {
  const runtime = ManagedRuntime.make(Cache.layer({ ttl: "1 hour" }).pipe(Layer.provide(MemoryBackend.layer())))
  const text = (await runtime.runPromise(Cache.Cache)).typed(Schema.String)

  const contenders: Array<Contender> = []
  const contender = (name: string, round: (key: string) => Promise<number>): Contender => ({ name, round })

  contenders.push(
    contender("cachekit getOrCompute", async (key) => {
      let computes = 0
      const compute = Effect.sleep(Duration.millis(COMPUTE_MS)).pipe(
        Effect.zipRight(Effect.sync(() => ++computes)),
        Effect.as("value")
      )
      const values = await runtime.runPromise(
        Effect.all(Array.from({ length: CALLERS }, () => text.getOrCompute(key, compute)), { concurrency: "unbounded" })
      )
      if (values.length !== CALLERS || values.some((v) => v !== "value")) throw new Error("wrong values")
      return computes
    })
  )

  // The floor: the same 1,000 fibers (Effect.all, unbounded) awaiting one Deferred that a 20 ms
  // timer completes, with no cache at all. What cachekit adds is the difference to this row.
  contenders.push(
    contender("baseline: 1,000 fibers awaiting one Deferred (no cache)", async () => {
      await runtime.runPromise(Effect.gen(function*() {
        const done = yield* Deferred.make<string>()
        yield* Effect.forkDaemon(
          Effect.sleep(Duration.millis(COMPUTE_MS)).pipe(Effect.zipRight(Deferred.succeed(done, "value")))
        )
        yield* Effect.all(Array.from({ length: CALLERS }, () => Deferred.await(done)), { concurrency: "unbounded" })
      }))
      return Number.NaN // no compute to count
    })
  )

  let effectComputes = 0
  const effectCache = await Effect.runPromise(
    EffectCache.make({
      capacity: 10_000,
      timeToLive: Duration.hours(1),
      lookup: (_key: string) =>
        Effect.sleep(Duration.millis(COMPUTE_MS)).pipe(
          Effect.zipRight(Effect.sync(() => ++effectComputes)),
          Effect.as("value")
        )
    })
  )
  contenders.push(
    contender("effect Cache.get (lookup)", async (key) => {
      effectComputes = 0
      await Effect.runPromise(
        Effect.all(Array.from({ length: CALLERS }, () => effectCache.get(key)), { concurrency: "unbounded" })
      )
      return effectComputes
    })
  )

  const bento = new BentoCache({
    default: "memory",
    stores: { memory: bentostore().useL1Layer(memoryDriver({ maxItems: 10_000 })) }
  })
  contenders.push(
    contender("bentocache getOrSet", async (key) => {
      let computes = 0
      const factory = async () => {
        computes++
        await sleep(COMPUTE_MS)
        return "value"
      }
      await Promise.all(Array.from({ length: CALLERS }, () => bento.getOrSet({ key, factory, ttl: "1h" })))
      return computes
    })
  )

  const manager = createCache({ ttl: 3_600_000 })
  contenders.push(
    contender("cache-manager wrap", async (key) => {
      let computes = 0
      const factory = async () => {
        computes++
        await sleep(COMPUTE_MS)
        return "value"
      }
      await Promise.all(Array.from({ length: CALLERS }, () => manager.wrap(key, factory, 3_600_000)))
      return computes
    })
  )

  const results = await runAll(contenders)
  const rows = results.map((r) => {
    const med = median(r.millis)
    return `| ${r.name} | ${r.computes.map((c) => (Number.isNaN(c) ? "-" : String(c))).join(", ")} | ${
      med.toFixed(1)
    } | ${Math.min(...r.millis).toFixed(1)} | ${(med / COMPUTE_MS).toFixed(2)}x | ${median(r.cpuMillis).toFixed(1)} |`
  })
  const table = [
    `| library | computes per round (${ROUNDS} rounds) | median ms | best ms | median / compute time | median CPU ms |`,
    "|---|---|---:|---:|---:|---:|",
    ...rows
  ]
  console.log(table.join("\n"))

  const ours = results[0]!
  const oneCompute = ours.computes.every((c) => c === 1)
  const withinTarget = median(ours.millis) <= TARGET_MS
  const verdict =
    `cachekit: ${oneCompute ? "one compute in every round" : "MORE THAN ONE COMPUTE"}; median ${
      median(ours.millis).toFixed(1)
    } ms (best ${Math.min(...ours.millis).toFixed(1)} ms, ${
      median(ours.cpuMillis).toFixed(1)
    } CPU ms) vs target ${TARGET_MS} ms ` +
    `(1.2x the ${COMPUTE_MS} ms compute): ${withinTarget ? "met" : "not met"}. Its median CPU time is ${
      (median(ours.cpuMillis) / median(results[1]!.cpuMillis)).toFixed(2)
    }x the baseline's (the same fibers on one Deferred, no cache): the baseline part is the Effect runtime ` +
    "forking and waking 1,000 fibers on this machine, the rest is cachekit's per-caller work (lookup, miss " +
    "accounting, joining the in-flight Deferred)."
  console.log("\n" + verdict)

  writeSection(
    "Single-flight",
    [
      `Measured by \`npm run bench -- single-flight\` (${
        new Date().toISOString().slice(0, 10)
      }, Node ${process.version}, ` +
      `shared 2-core machine). ${CALLERS} concurrent callers miss one key whose compute takes ${COMPUTE_MS} ms ` +
      `(a timer); wall time from the first call until every caller has its value, ${ROUNDS} rounds on fresh keys. ` +
      "The compute's own timer is part of the time, so event-loop delay on a loaded machine shows up here. " +
      "The baseline row is the floor set by the Effect runtime itself (the same fibers and one Deferred, no cache).",
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
