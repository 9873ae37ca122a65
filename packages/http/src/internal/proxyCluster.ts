/**
 * `cachekit proxy --instances N`: N worker processes on one port through `node:cluster` (Node 20
 * has no `reusePort`). The primary process forks the workers and does nothing else: it accepts the
 * connections on the shared port and hands them to the workers round-robin. Each worker runs the
 * whole proxy program (the same Effect program as a single process) with its OWN memory L1, so the
 * workers only agree through a shared backend (Redis, Memcached) and the invalidation bus; that is
 * why a per-process backend (memory, disk, memory+disk) is refused.
 *
 * The primary is a small Effect program: every worker is forked in a scope whose finalizer sends it
 * SIGTERM (the worker drains like a single proxy does) and SIGKILLs it if it has not exited within
 * its shutdown grace plus 5 s. A worker that dies unexpectedly is replaced after a backoff that
 * doubles while the replacements keep dying young; after `maxCrashes` of those in a row the
 * primary gives up and stops the others. A worker that exits before it ever listened stops the
 * whole command (a bad setting or an unreachable backend would fail every replacement the same way).
 *
 * @internal
 */
import { Config, ConfigError, Console, Data, Effect, Either, Option } from "effect"
import type { Worker } from "node:cluster"
import cluster from "node:cluster"
import { availableParallelism } from "node:os"
import type { BackendKind, BusKind } from "./cliArgs.js"
import { BACKENDS, BUSES, configProvider } from "./cliArgs.js"
import { parseDurationMillis } from "./units.js"

/** `--instances N` with a backend each worker would have its own copy of. */
export class InstancesNotShareable extends Data.TaggedError("InstancesNotShareable")<{
  readonly message: string
}> {}

/** A worker could not start, or kept dying: the command stops with `exitCode`. */
export class WorkerFailed extends Data.TaggedError("WorkerFailed")<{
  readonly message: string
  readonly exitCode: number
}> {}

/** The slot (1..N) a worker fills is handed to it in this variable. */
const SLOT_ENV = "CACHEKIT_INSTANCE_SLOT"

/** `CACHEKIT_INSTANCES`: 1-1024 worker processes, 0 or `auto` = one per CPU (the flag parser turns `auto` into 0). */
export const instancesConfig: Config.Config<number> = Config.string("CACHEKIT_INSTANCES").pipe(
  Config.withDefault("1"),
  Config.mapOrFail((text) =>
    text === "auto" || (/^\d+$/.test(text) && Number(text) <= 1024)
      ? Either.right(text === "auto" ? 0 : Number(text))
      : Either.left(ConfigError.InvalidData([], `CACHEKIT_INSTANCES: "${text}" is not 1-1024, 0 or auto`))
  )
)

/** What the primary reads (the rest is the workers' business). The default backend is `ProxyBackends.defaults.backend`. */
const primaryConfig = Config.all({
  instances: instancesConfig,
  backend: Config.literal(...BACKENDS)("CACHEKIT_BACKEND").pipe(Config.withDefault<BackendKind>("memory+disk")),
  bus: Config.literal(...BUSES)("CACHEKIT_BUS").pipe(Config.withDefault<BusKind>("auto")),
  shutdownGraceMillis: Config.string("CACHEKIT_SHUTDOWN_GRACE").pipe(
    Config.withDefault("10s"),
    Config.mapOrFail((text) => {
      const millis = parseDurationMillis(text)
      return millis === undefined
        ? Either.left(ConfigError.InvalidData([], `CACHEKIT_SHUTDOWN_GRACE: "${text}" is not a duration`))
        : Either.right(millis)
    })
  )
})

/** `--instances 0` / `auto`: one worker per CPU the process may use. */
export const resolveInstances = (setting: number): number => setting === 0 ? availableParallelism() : setting

/** Refuses backends the workers cannot share (see the module comment). */
export const checkShareable = (
  instances: number,
  backend: BackendKind,
  bus: BusKind
): Effect.Effect<void, InstancesNotShareable> => {
  const refuse = (why: string) =>
    Effect.fail(
      new InstancesNotShareable({
        message: `--instances ${instances} needs a backend the worker processes share, but ${why}. Use ` +
          "--backend memory+redis (L2 and invalidation bus shared through Redis), redis or memcached, or run " +
          "one process"
      })
    )
  switch (backend) {
    case "memory":
      return refuse(
        "with --backend memory every worker would have its own cache (N times the misses, and an " +
          "invalidation would reach one worker only)"
      )
    case "disk":
    case "memory+disk":
      return refuse(
        `with --backend ${backend} every worker would write the same disk directory on its own ` +
          "(concurrent writers, index and size bound per process) and no bus tells the other workers' L1 about " +
          "changes"
      )
    case "memory+redis":
      return bus === "none"
        ? refuse("with --bus none an invalidation would leave the other workers' memory L1 serving the old copy")
        : Effect.void
    case "memory+memcached":
      return bus === "redis"
        ? Effect.void
        : refuse(
          "memory+memcached has no invalidation bus unless --bus redis is given, so an invalidation would " +
            "leave the other workers' memory L1 serving the old copy"
        )
    case "redis":
    case "memcached":
    case "none":
      return Effect.void
  }
}

/** Who this process is, when it is a worker of `--instances N`. */
export interface WorkerIdentity {
  /** The cluster's worker id: 1..N at start, a new one for every replacement. */
  readonly id: number
  /** The slot 1..N this worker fills (a replacement takes over the slot of the one that died). */
  readonly slot: number
  readonly pid: number
}

export const currentWorker = (): WorkerIdentity | undefined => {
  const worker = cluster.worker
  if (!cluster.isWorker || worker === undefined) return undefined
  return { id: worker.id, slot: Number(process.env[SLOT_ENV] ?? "0"), pid: process.pid }
}

export const isWorker = (): boolean => cluster.isWorker

export interface PrimaryOptions {
  readonly instances: number
  /** The workers' `--shutdown-grace`: how long a stopping worker may drain before it is killed (plus 5 s). */
  readonly shutdownGraceMillis: number
  /** A worker that dies within this of its start counts as crashing. Default 10 s. */
  readonly stableMillis?: number | undefined
  /** Crashing workers in a row (per slot) before the primary gives up. Default 5. */
  readonly maxCrashes?: number | undefined
  /** First restart delay, doubled per crash in a row up to `maxDelayMillis`. Defaults 100 ms and 5 s. */
  readonly baseDelayMillis?: number | undefined
  readonly maxDelayMillis?: number | undefined
}

/** How one worker ended. */
export interface Ended {
  readonly id: number
  readonly pid: number | undefined
  readonly code: number | null
  readonly signal: string | null
  readonly listened: boolean
  readonly livedMillis: number
}

/** SIGTERM, then SIGKILL after `graceMillis`; resolves once the worker has exited. */
const stopWorker = (worker: Worker, exited: Promise<unknown>, graceMillis: number): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (worker.isDead()) return Effect.void
    worker.process.kill("SIGTERM")
    return Effect.promise(() => exited).pipe(
      Effect.timeout(graceMillis),
      Effect.catchTag("TimeoutException", () =>
        Effect.zipRight(
          Console.error(`cachekit: worker ${worker.id} did not stop within ${graceMillis} ms; killing it`),
          Effect.suspend(() => {
            if (!worker.isDead()) worker.process.kill("SIGKILL")
            return Effect.promise(() => exited)
          })
        ))
    )
  })

/** One worker from fork to exit; closing the scope early (shutdown) stops it. */
const runWorker = (slot: number, stopGraceMillis: number): Effect.Effect<Ended> =>
  Effect.scoped(Effect.gen(function*() {
    const startedAt = Date.now()
    let listened = false
    const { exited, worker } = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const worker = cluster.fork({ [SLOT_ENV]: String(slot) })
        worker.once("listening", () => (listened = true))
        const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
          worker.once("exit", (code: number | null, signal: string | null) => resolve({ code, signal }))
        )
        return { exited, worker }
      }),
      ({ exited, worker }) => stopWorker(worker, exited, stopGraceMillis)
    )
    const { code, signal } = yield* Effect.promise(() => exited)
    return { id: worker.id, pid: worker.process.pid, code, signal, listened, livedMillis: Date.now() - startedAt }
  }))

/** Runs one worker in `slot` from start to exit (interrupting it stops the worker). */
export type StartWorker = (slot: number, stopGraceMillis: number) => Effect.Effect<Ended>

/**
 * Keeps slot `slot` filled until interrupted; fails when its workers cannot start or keep crashing.
 * `startWorker` is `cluster.fork` in the command (a stand-in in tests).
 */
export const supervise = (
  slot: number,
  options: PrimaryOptions,
  startWorker: StartWorker = runWorker
): Effect.Effect<never, WorkerFailed> =>
  Effect.gen(function*() {
    const stableMillis = options.stableMillis ?? 10_000
    const maxCrashes = options.maxCrashes ?? 5
    const baseDelay = options.baseDelayMillis ?? 100
    const maxDelay = options.maxDelayMillis ?? 5_000
    const stopGrace = options.shutdownGraceMillis + 5_000
    let crashes = 0
    let first = true
    while (true) {
      const ended = yield* startWorker(slot, stopGrace)
      const how = ended.signal === null ? `exit code ${ended.code}` : `signal ${ended.signal}`
      const who = `worker ${ended.id} (slot ${slot}, pid ${ended.pid})`
      if (first && !ended.listened) {
        return yield* Effect.fail(
          new WorkerFailed({
            message: `${who} stopped (${how}) before it listened; stopping the other workers`,
            exitCode: ended.code === 2 ? 2 : 1
          })
        )
      }
      first = false
      crashes = ended.livedMillis >= stableMillis ? 1 : crashes + 1
      if (crashes > maxCrashes) {
        return yield* Effect.fail(
          new WorkerFailed({
            message: `${who} stopped (${how}); slot ${slot}'s workers died ${crashes} times in a row within ` +
              `${stableMillis} ms of starting, giving up`,
            exitCode: 1
          })
        )
      }
      const delay = Math.min(baseDelay * 2 ** (crashes - 1), maxDelay)
      yield* Console.error(`cachekit: ${who} stopped unexpectedly (${how}); starting a new one in ${delay} ms`)
      yield* Effect.sleep(delay)
    }
  })

/**
 * The primary: forks `instances` workers (this same command line, see `cluster.setupPrimary`) and
 * keeps them running until interrupted (SIGINT/SIGTERM through `NodeRuntime`), then stops them all
 * and waits for them. Fails only when workers cannot start or keep crashing.
 */
export const runPrimary = (options: PrimaryOptions): Effect.Effect<never, WorkerFailed> =>
  Effect.gen(function*() {
    // Explicit: round-robin is the default on Linux only (elsewhere the OS picks, unevenly).
    cluster.schedulingPolicy = cluster.SCHED_RR
    yield* Console.log(
      `cachekit proxy: primary pid ${process.pid} starting ${options.instances} worker processes on one port`
    )
    const slots = Array.from({ length: options.instances }, (_, i) => i + 1)
    yield* Effect.all(slots.map((slot) => supervise(slot, options)), { concurrency: "unbounded", discard: true })
    return yield* Effect.never
  })

/**
 * The command's entry when it may be a primary: with `--instances N` (N > 1) in a process that is
 * not a worker, runs the primary and resolves to the exit code; otherwise to `None` (run the proxy
 * here). Loads no server or backend code, so the primary stays small and starts fast.
 */
export const runIfPrimary = (flags: ReadonlyMap<string, string>): Effect.Effect<Option.Option<number>> =>
  Effect.gen(function*() {
    if (cluster.isWorker) return Option.none()
    const settings = yield* primaryConfig
    const instances = resolveInstances(settings.instances)
    if (instances <= 1) return Option.none()
    yield* checkShareable(instances, settings.backend, settings.bus)
    return yield* runPrimary({ instances, shutdownGraceMillis: settings.shutdownGraceMillis })
  }).pipe(
    Effect.withConfigProvider(configProvider(flags)),
    Effect.catchAll((error) =>
      Effect.as(
        Console.error(
          `cachekit: ${ConfigError.isConfigError(error) ? `bad setting: ${String(error)}` : error.message}`
        ),
        Option.some(ConfigError.isConfigError(error) || error._tag === "InstancesNotShareable" ? 2 : error.exitCode)
      )
    )
  )
