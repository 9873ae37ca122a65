/**
 * Two tiers (in-process memory L1 + Redis L2) in two processes, kept coherent by the Redis
 * invalidation bus: when one instance writes a key, the other drops its L1 copy and reads the new
 * value from Redis. This process is instance A; it starts instance B (this same file with `--b`)
 * and drives it over stdin/stdout.
 *
 * Needs Redis at 127.0.0.1:6379 (`redis-server --port 6379`), or set CACHEKIT_REDIS_URL.
 * Run: `npx tsx examples/tiered-redis.ts`
 */
import { RedisBackend, RedisInvalidationBus } from "@cachekit/backends"
import { Cache, MemoryBackend, TieredCache } from "@cachekit/core"
import { Console, Effect, Layer, Option, Schedule, Schema } from "effect"
import { spawn } from "node:child_process"
import * as readline from "node:readline"

const isB = process.argv.includes("--b")
const instance = isB ? "B" : "A"
const redisUrl = process.env["CACHEKIT_REDIS_URL"] ?? "redis://127.0.0.1:6379"
// A unique prefix and channel per run, so the example never touches anyone else's keys.
const runId = process.env["EXAMPLE_RUN_ID"] ?? `${process.pid}-${Date.now()}`
const prefix = `cachekit-example:${runId}:`
const channel = `cachekit-example:${runId}:bus`

const Price = Schema.Struct({ sku: Schema.String, cents: Schema.Number })

// --- the layers: L1 memory (instance-local) over L2 Redis (shared), and the bus between instances ---
const Tiers = Layer.unwrapScoped(
  Effect.gen(function*() {
    const l1 = yield* MemoryBackend.make({ maxEntries: 1_000 })
    const l2 = yield* RedisBackend.make({ url: redisUrl, prefix })
    return TieredCache.layerWithBus([
      { backend: l1, name: "memory" }, // local: other instances' writes drop entries here
      { backend: l2, name: "redis", ttlScale: 2 } // shared: keeps entries twice as long
    ]).pipe(Layer.merge(Layer.succeed(MemoryBackend.MemoryBackendTag, l1)))
  })
).pipe(Layer.provide(RedisInvalidationBus.layer({ url: redisUrl, channel })))
const CacheLive = Cache.layer({ ttl: "1 minute" }).pipe(Layer.provideMerge(Tiers))

const say = (line: string) => Console.log(`[${instance}] ${line}`)

// --- instance B: answers commands read from stdin, one per line ---
const instanceB = Effect.gen(function*() {
  const prices = (yield* Cache.Cache).typed(Price)
  const l1 = yield* MemoryBackend.MemoryBackendTag
  const inL1 = (key: string) => Effect.map(l1.get(key), Option.isSome)
  const lines = readline.createInterface({ input: process.stdin })
  yield* say("ready")
  for (;;) {
    const command = yield* Effect.async<string | undefined>((resume) => {
      const onLine = (line: string) => {
        lines.off("close", onClose)
        resume(Effect.succeed(line))
      }
      const onClose = () => resume(Effect.succeed(undefined))
      lines.once("line", onLine)
      lines.once("close", onClose)
    })
    if (command === undefined || command === "exit") break
    if (command === "read") {
      const price = yield* prices.getOrCompute("price:42", Effect.die("B never computes: A wrote the value"))
      yield* say(`read price:42 = ${price.cents} cents (now in my L1: ${yield* inL1("price:42")})`)
    } else if (command === "wait-dropped") {
      // The bus message from A arrives asynchronously; wait (bounded) until it dropped our L1 copy.
      const stillThere = yield* inL1("price:42").pipe(
        Effect.repeat({ until: (present) => !present, schedule: Schedule.spaced("10 millis") }),
        Effect.timeoutTo({ duration: "5 seconds", onTimeout: () => true, onSuccess: () => false })
      )
      yield* say(`A's write reached me over the bus: my L1 copy was ${stillThere ? "NOT dropped" : "dropped"}`)
    }
  }
  lines.close()
})

// --- instance A: writes, starts B, changes the value, checks that B sees the change ---
const instanceA = Effect.gen(function*() {
  const prices = (yield* Cache.Cache).typed(Price)
  yield* prices.set("price:42", { sku: "42", cents: 1999 })
  yield* say(`wrote price:42 = 1999 cents (L1 + Redis, prefix ${prefix})`)

  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, "--b"], {
    env: { ...process.env, EXAMPLE_RUN_ID: runId },
    stdio: ["pipe", "pipe", "inherit"]
  })
  const childLines = readline.createInterface({ input: child.stdout! })
  const waitFor = (text: string) =>
    Effect.async<void>((resume) => {
      const onLine = (line: string) => {
        console.log(line)
        if (line.includes(text)) {
          childLines.off("line", onLine)
          resume(Effect.void)
        }
      }
      childLines.on("line", onLine)
    }).pipe(Effect.timeoutFail({ duration: "60 seconds", onTimeout: () => new Error(`B never said "${text}"`) }))
  const send = (command: string) => Effect.sync(() => child.stdin!.write(`${command}\n`))

  yield* waitFor("ready")
  yield* send("read")
  yield* waitFor("read price:42")

  yield* prices.set("price:42", { sku: "42", cents: 1499 })
  yield* say("changed price:42 to 1499 cents: my write broadcasts an invalidation to the other instances")
  yield* send("wait-dropped")
  yield* waitFor("dropped")
  yield* send("read")
  yield* waitFor("read price:42")
  yield* send("exit")
  const code = yield* Effect.async<number | null>((resume) => {
    child.once("exit", (exitCode) => resume(Effect.succeed(exitCode)))
  })
  yield* say(`B exited with ${code}`)
  if (code !== 0) return yield* Effect.fail(new Error(`instance B failed with exit code ${code}`))
})

// A removes the run's keys from Redis whatever happens (its prefix is unique to this run).
const main: Effect.Effect<void, unknown, Cache.Cache | MemoryBackend.MemoryBackendTag | TieredCache.TieredCache> = isB
  ? instanceB
  : Effect.ensuring(
    instanceA,
    Effect.flatMap(TieredCache.TieredCache, (tiers) => Effect.ignore(tiers.clear))
  )

Effect.runPromise(Effect.provide(main, CacheLive)).then(
  () => process.exit(0),
  (error) => {
    console.error(`[${instance}]`, error)
    process.exit(1)
  }
)
