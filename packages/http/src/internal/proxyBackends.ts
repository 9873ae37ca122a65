/**
 * Where the `cachekit proxy` command keeps its entries: one backend (`memory`, `disk`, `redis`,
 * `memcached`) or two tiers through `TieredCache` (`memory+disk`, the default; `memory+redis`;
 * `memory+memcached`), with the Redis Pub/Sub `InvalidationBus` when the L2 is shared. Also the
 * admin target of whatever was built (per-tier stats for tiers).
 *
 * Distributed single-flight (`CACHEKIT_SINGLE_FLIGHT`, `--single-flight auto|redis|none`): over a
 * shared L2 a `RedisSingleFlight` (same Redis URL, prefix, cluster and command timeout as the
 * backend) gates the leader of every miss across processes, so a stampede spread over several proxy
 * processes reaches the origin once (see `HttpClientCache.Options.distributedSingleFlight`). `auto`
 * (the default) turns it on with a Redis L2 (`redis`, `memory+redis`).
 *
 * Large bodies and the memory+disk tiers: the memory L1 takes entries up to `l1MaxEntrySize`; larger
 * ones live on disk only and are STREAMED from it. `TieredCache`'s face has no streaming capability,
 * so the disk tier is wrapped: its `get` answers a large entry with its metadata only (empty value,
 * marked), which `TieredCache` counts as an L2 hit and never promotes (its size is over L1's bound);
 * the face's `getStream` then hands out the disk stream it kept for that entry object, with the disk's
 * lending read of the same body (`StreamedEntry.readInto`, which the proxy writes to the socket
 * through one reused buffer). Small entries are read whole and promoted as usual.
 *
 * @internal
 */
import { AdminTarget } from "@cachekit/admin"
import {
  DiskBackend,
  MemcachedBackend,
  RedisBackend,
  RedisInvalidationBus,
  RedisSingleFlight
} from "@cachekit/backends"
import type { CacheBackend, CacheEntry, InvalidationBus } from "@cachekit/core"
import { CacheError, MemoryBackend, TieredCache } from "@cachekit/core"
import type { Scope } from "effect"
import { Chunk, Config, ConfigError, Effect, Option, Stream } from "effect"
import { mkdtemp, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import * as HttpClientCache from "../HttpClientCache.js"
import { defaults as proxyDefaults } from "../Proxy.js"
import type { BackendKind, BusKind, SingleFlightKind } from "./cliArgs.js"
import { SINGLE_FLIGHTS } from "./cliArgs.js"
import { durationConfig } from "./proxy.js"

/** The defaults the help text and docs quote. */
export const defaults = {
  backend: "memory+disk" as BackendKind,
  memoryMaxBytes: 64 * 1024 * 1024,
  l1MaxEntrySize: 1024 * 1024,
  diskDir: "./.cachekit"
} as const

export interface CacheSettings {
  readonly backend: BackendKind
  readonly memoryMaxBytes: Option.Option<number>
  /** Largest entry the memory L1 of a tiered backend takes (larger ones live in L2 only). */
  readonly l1MaxEntrySize: Option.Option<number>
  /** `CACHEKIT_DISK_DIR` when given; otherwise `./.cachekit`, or a temp dir in demo mode. */
  readonly diskDir: Option.Option<string>
  readonly bus: BusKind
  /** No upstream given: the disk tier goes to a temporary directory removed on exit. */
  readonly demo: boolean
}

/** What the proxy caches in, built. */
export interface ProxyCache {
  /** What `HttpClientCache` stores in. */
  readonly backend: CacheBackend.CacheBackend
  /** The tiers, when the backend is tiered. */
  readonly tiered: TieredCache.TieredCache | undefined
  /** The admin API's view of it (per-tier stats, hot keys from the memory tier, invalidation). */
  readonly adminTarget: AdminTarget.AdminTarget
  /** The cross-process gate of misses, when on (`--single-flight`). */
  readonly singleFlight: HttpClientCache.DistributedSingleFlight | undefined
  /** One line for the banner, e.g. `memory (64 MiB, entries <= 1 MiB) + disk (./.cachekit), bus: redis`. */
  readonly description: string
}

const MIB = 1024 * 1024
const EMPTY = new Uint8Array(0)
/** Meta field marking an L2 entry answered without its body (the body is streamed on demand). */
const STREAMED = "cachekit.proxy.streamed"

const mib = (bytes: number) => bytes >= MIB ? `${Math.round((bytes / MIB) * 10) / 10} MiB` : `${bytes} B`

const concat = (chunks: Chunk.Chunk<Uint8Array>): Uint8Array => {
  const parts = Chunk.toReadonlyArray(chunks)
  if (parts.length === 1) return parts[0]!
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.byteLength
  }
  return out
}

/**
 * A streaming L2 (disk) seen through `get`: entries over `threshold` come back as metadata only
 * (marked, value empty) and their streams are remembered by entry object in `bodies`.
 */
const metadataOnlyAbove = (
  l2: CacheBackend.CacheBackend,
  streaming: CacheBackend.StreamingCapability,
  threshold: number,
  bodies: WeakMap<CacheEntry.CacheEntry, CacheBackend.StreamedEntry>
): CacheBackend.CacheBackend => ({
  ...l2,
  get: (key) =>
    Effect.flatMap(streaming.getStream(key), (found) => {
      if (Option.isNone(found)) return Effect.succeedNone
      const { body, entry } = found.value
      if (entry.size > threshold) {
        const marked: CacheEntry.CacheEntry = { ...entry, value: EMPTY, meta: { ...entry.meta, [STREAMED]: "1" } }
        bodies.set(marked, found.value)
        return Effect.succeedSome(marked)
      }
      return Effect.map(Stream.runCollect(body), (chunks) => Option.some({ ...entry, value: concat(chunks) }))
    })
})

/**
 * The tiers' face plus streaming: reads go through `TieredCache` (stats, breaker, promotion), a
 * large L2 entry's body streams from disk; writes stream into the L2 while the first
 * `l1MaxEntrySize` bytes are kept, and a body that fits is written to L1 too (a larger one removes
 * any older L1 copy, so L1 never serves the previous version).
 */
const withStreaming = (
  tiered: TieredCache.TieredCache,
  l1: CacheBackend.CacheBackend,
  l2: CacheBackend.CacheBackend,
  streaming: CacheBackend.StreamingCapability,
  l1MaxEntrySize: number,
  bodies: WeakMap<CacheEntry.CacheEntry, CacheBackend.StreamedEntry>
): CacheBackend.CacheBackend => {
  const face = tiered.backend
  const isStreamed = (entry: CacheEntry.CacheEntry) => entry.meta?.[STREAMED] === "1"
  return {
    ...face,
    get: (key) =>
      Effect.flatMap(
        face.get(key),
        (found) => Option.isSome(found) && isStreamed(found.value) ? l2.get(key) : Effect.succeed(found)
      ),
    streaming: {
      getStream: (key) =>
        Effect.flatMap(face.get(key), (found) => {
          if (Option.isNone(found)) return Effect.succeedNone
          const entry = found.value
          if (!isStreamed(entry)) return Effect.succeedSome({ entry, body: Stream.succeed(entry.value) })
          const stored = bodies.get(entry)
          // the entry object was copied on the way up: open the stream again. The disk's
          // `readInto` and `lendTo` (lent chunks, one reused buffer) are passed on with its stream.
          return stored === undefined
            ? streaming.getStream(key)
            : Effect.succeedSome({ entry, body: stored.body, readInto: stored.readInto, lendTo: stored.lendTo })
        }),
      setStream: (key, entry, body) =>
        Effect.gen(function*() {
          const kept: Array<Uint8Array> = []
          let size = 0
          let fits = true
          const teed = Stream.tap(body, (chunk) =>
            Effect.sync(() => {
              if (!fits) return
              size += chunk.byteLength
              if (size > l1MaxEntrySize) {
                fits = false
                kept.length = 0
              } else {
                kept.push(chunk)
              }
            }))
          const stored = yield* streaming.setStream(key, entry, teed)
          const l1Write = fits
            ? l1.set(key, { ...stored, value: concat(Chunk.unsafeFromArray(kept)), size })
            : l1.delete(key)
          yield* Effect.catchAll(l1Write, (error) => Effect.logWarning("cachekit proxy: L1 write failed", error))
          return stored
        })
    }
  }
}

/** A temporary directory removed when the scope closes (demo mode). */
const tempDir = Effect.acquireRelease(
  Effect.promise(() => mkdtemp(Path.join(tmpdir(), "cachekit-demo-"))),
  (dir) => Effect.promise(() => rm(dir, { recursive: true, force: true }))
)

const redisUrl = Config.string("CACHEKIT_REDIS_URL").pipe(Config.withDefault("redis://127.0.0.1:6379"))
const redisPrefix = Config.string("CACHEKIT_REDIS_PREFIX").pipe(Config.withDefault("cachekit:"))

const singleFlightConfig = Config.literal(...SINGLE_FLIGHTS)("CACHEKIT_SINGLE_FLIGHT").pipe(
  Config.withDefault<SingleFlightKind>("auto")
)
/** Backends whose entries every process reads (a gate is pointless over a per-process or per-machine cache). */
const SHARED_L2: ReadonlyArray<BackendKind> = ["redis", "memory+redis", "memcached", "memory+memcached"]

/**
 * The gate for `--single-flight` (default `auto`: on over a Redis L2). It uses the backend's Redis
 * settings (`CACHEKIT_REDIS_URL`, `_PREFIX`, `_CLUSTER`, `_COMMAND_TIMEOUT`); a waiter waits at most
 * the upstream timeout for another process's fetch, then fetches itself.
 */
const makeSingleFlight = (backend: BackendKind) =>
  Effect.gen(function*() {
    const kind = yield* singleFlightConfig
    const on = kind === "redis" || (kind === "auto" && (backend === "redis" || backend === "memory+redis"))
    if (!on) return undefined
    if (!SHARED_L2.includes(backend)) {
      return yield* Effect.fail(
        ConfigError.InvalidData(
          ["CACHEKIT_SINGLE_FLIGHT"],
          "--single-flight redis needs a shared L2 (redis, memory+redis, memcached or memory+memcached); " +
            `with ${backend} no other process could read what one stores`
        )
      )
    }
    const redis = yield* RedisBackend.config
    const waitMillis = yield* durationConfig("CACHEKIT_UPSTREAM_TIMEOUT", proxyDefaults.upstreamTimeoutMillis)
    const flight = yield* RedisSingleFlight.make({
      url: redis.url,
      prefix: redis.prefix,
      cluster: redis.cluster,
      commandTimeout: redis.commandTimeout,
      waitTimeout: waitMillis
    }).pipe(
      Effect.mapError((error) =>
        new CacheError.BackendUnavailable({
          backend: "redis single-flight",
          operation: error.operation,
          cause: error.cause,
          message: error.message
        })
      )
    )
    return HttpClientCache.redisSingleFlight(flight)
  })

const single = (
  backend: CacheBackend.CacheBackend,
  description: string
): ProxyCache => ({
  backend,
  tiered: undefined,
  adminTarget: AdminTarget.fromBackend(backend),
  singleFlight: undefined,
  description
})

/** Adds the cross-process gate (and says so in the banner line) when `--single-flight` turns it on. */
const withSingleFlight = (settings: CacheSettings) => (cache: ProxyCache) =>
  Effect.map(makeSingleFlight(settings.backend), (singleFlight): ProxyCache =>
    singleFlight === undefined ? cache : {
      ...cache,
      singleFlight,
      description: `${cache.description}, single-flight: redis`
    })

/**
 * Builds the backend (or tiers, and the bus), and the single-flight gate, for `settings`; everything
 * is closed with the scope.
 */
export const make = (
  settings: CacheSettings
): Effect.Effect<
  ProxyCache,
  CacheError.CacheError | ConfigError.ConfigError | InvalidationBus.InvalidationBusError,
  Scope.Scope
> => Effect.flatMap(makeCache(settings), withSingleFlight(settings))

const makeCache = (
  settings: CacheSettings
): Effect.Effect<
  ProxyCache,
  CacheError.CacheError | ConfigError.ConfigError | InvalidationBus.InvalidationBusError,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const memoryBytes = Option.getOrElse(settings.memoryMaxBytes, () => defaults.memoryMaxBytes)
    const l1Max = Option.getOrElse(settings.l1MaxEntrySize, () => defaults.l1MaxEntrySize)
    const openDisk = Effect.gen(function*() {
      const fromEnv = yield* DiskBackend.config
      const directory = Option.isSome(settings.diskDir)
        ? settings.diskDir.value
        : settings.demo
        ? yield* tempDir
        : defaults.diskDir
      const backend = yield* DiskBackend.make({ ...fromEnv, directory })
      return { backend, directory }
    })
    const memoryNamed = (name: string, maxBytes: number) => MemoryBackend.make({ maxBytes, name })
    switch (settings.backend) {
      case "none":
      case "memory": {
        const memory = yield* memoryNamed("memory", memoryBytes)
        return single(memory, `memory (up to ${mib(memoryBytes)})`)
      }
      case "disk": {
        const disk = yield* openDisk
        return single(disk.backend, `disk (${disk.directory})`)
      }
      case "redis": {
        const backend = yield* Effect.flatMap(RedisBackend.config, RedisBackend.make)
        return single(backend, `redis (${yield* redisUrl})`)
      }
      case "memcached": {
        const backend = yield* Effect.flatMap(MemcachedBackend.config, MemcachedBackend.make)
        return single(backend, "memcached")
      }
      case "memory+disk":
      case "memory+redis":
      case "memory+memcached": {
        // A bus only makes sense over a shared L2: disk is per machine (and its streamed writes bypass
        // the tiers' broadcast).
        if (settings.bus === "redis" && settings.backend === "memory+disk") {
          return yield* Effect.fail(
            ConfigError.InvalidData(
              ["CACHEKIT_BUS"],
              "--bus redis needs a shared L2 (memory+redis or memory+memcached); a disk L2 is per machine"
            )
          )
        }
        const l1 = yield* memoryNamed("memory", memoryBytes)
        let l2: CacheBackend.CacheBackend
        let l2Description: string
        if (settings.backend === "memory+disk") {
          const disk = yield* openDisk
          l2 = disk.backend
          l2Description = `disk (${disk.directory}, larger entries stream from it)`
        } else if (settings.backend === "memory+redis") {
          l2 = yield* Effect.flatMap(RedisBackend.config, RedisBackend.make)
          l2Description = `redis (${yield* redisUrl})`
        } else {
          l2 = yield* Effect.flatMap(MemcachedBackend.config, MemcachedBackend.make)
          l2Description = "memcached"
        }
        const useBus = settings.bus === "redis" ||
          (settings.bus === "auto" && settings.backend === "memory+redis")
        const bus = useBus
          ? yield* RedisInvalidationBus.make({
            url: yield* redisUrl,
            channel: `${yield* redisPrefix}invalidation`
          })
          : undefined
        const streaming = settings.backend === "memory+disk" ? l2.streaming : undefined
        const bodies = new WeakMap<CacheEntry.CacheEntry, CacheBackend.StreamedEntry>()
        const tiered = yield* TieredCache.make(
          [
            { backend: l1, name: "memory", maxEntrySize: l1Max },
            {
              backend: streaming === undefined ? l2 : metadataOnlyAbove(l2, streaming, l1Max, bodies),
              name: l2.name
            }
          ],
          { name: settings.backend, bus }
        )
        const backend = streaming === undefined
          ? tiered.backend
          : withStreaming(tiered, l1, l2, streaming, l1Max, bodies)
        return {
          backend,
          tiered,
          adminTarget: AdminTarget.fromTieredCache(tiered, { tiers: [l1, l2] }),
          singleFlight: undefined,
          description: `memory (up to ${mib(memoryBytes)}, entries <= ${mib(l1Max)}) + ${l2Description}` +
            (bus === undefined ? "" : ", invalidation bus: redis pub/sub")
        }
      }
    }
  })
