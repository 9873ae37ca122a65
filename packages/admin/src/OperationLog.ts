/**
 * A structured operation log: one JSON line per admin or cache operation, with sampling, keys hashed
 * (sha256 prefix) when asked, and the request id (`X-Request-ID`) that caused it.
 *
 * Mutations (invalidate, clear, set, delete) are always written; sampling only thins out reads.
 *
 * @example
 * ```ts
 * const logLayer = OperationLog.layer({ sampleRate: 0.1, hashKeys: true })
 * // {"ts":"2026-11-22T00:00:00.000Z","op":"cache.get","outcome":"hit","keys":["sha256:9f86d081884c7d65"],...}
 * ```
 *
 * @since 0.1.0
 */
import type { CacheBackend as CB } from "@cachekit/core"
import { Clock, Config, type ConfigError, Context, Effect, FiberRef, Layer, Option, Random } from "effect"
import { createHash } from "node:crypto"

/** One operation, as logged. */
export interface OperationRecord {
  readonly op: string
  readonly outcome: string
  readonly durationMillis: number
  /** Mutations are never sampled out. */
  readonly mutating: boolean
  readonly keys?: ReadonlyArray<string> | undefined
  readonly tags?: ReadonlyArray<string> | undefined
  readonly pattern?: string | undefined
  readonly count?: number | undefined
  readonly status?: number | undefined
  readonly role?: string | undefined
  readonly detail?: string | undefined
}

export interface OperationLog {
  readonly log: (record: OperationRecord) => Effect.Effect<void>
}

export class OperationLogTag extends Context.Tag("@cachekit/admin/OperationLog")<OperationLogTag, OperationLog>() {}

export interface Options {
  /** Fraction of read operations written, 0..1 (default 1). */
  readonly sampleRate?: number | undefined
  /** Write `sha256:<16 hex>` instead of keys (and patterns) (default false). */
  readonly hashKeys?: boolean | undefined
  /** Where lines go (default: stdout). */
  readonly write?: ((line: string) => Effect.Effect<void>) | undefined
  /** At most this many keys are listed per line; the rest are counted (default 20). */
  readonly maxKeysPerLine?: number | undefined
}

/** The request id of the HTTP request being served (set by the admin API from `X-Request-ID`). */
export const currentRequestId: FiberRef.FiberRef<Option.Option<string>> = FiberRef.unsafeMake(
  Option.none<string>()
)

/** `sha256:` and the first 16 hex digits of the key's digest. */
export const hashKey = (key: string): string =>
  `sha256:${createHash("sha256").update(key, "utf8").digest("hex").slice(0, 16)}`

const writeStdout = (line: string) => Effect.sync(() => void process.stdout.write(line + "\n"))

/** Builds a log; the options are resolved once here. */
export const make = (options: Options = {}): OperationLog => {
  const sampleRate = Math.min(1, Math.max(0, options.sampleRate ?? 1))
  const hashKeys = options.hashKeys ?? false
  const write = options.write ?? writeStdout
  const maxKeys = options.maxKeysPerLine ?? 20
  const keyText = hashKeys ? hashKey : (key: string) => key
  const emit = (record: OperationRecord) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const requestId = yield* FiberRef.get(currentRequestId)
      const line: Record<string, unknown> = {
        ts: new Date(now).toISOString(),
        op: record.op,
        outcome: record.outcome,
        durationMs: Math.round(record.durationMillis * 1000) / 1000
      }
      if (Option.isSome(requestId)) line.requestId = requestId.value
      if (record.role !== undefined) line.role = record.role
      if (record.status !== undefined) line.status = record.status
      if (record.keys !== undefined && record.keys.length > 0) {
        line.keys = record.keys.slice(0, maxKeys).map(keyText)
        if (record.keys.length > maxKeys) line.keysOmitted = record.keys.length - maxKeys
      }
      if (record.tags !== undefined && record.tags.length > 0) line.tags = record.tags.slice(0, maxKeys)
      if (record.pattern !== undefined) line.pattern = keyText(record.pattern)
      if (record.count !== undefined) line.count = record.count
      if (record.detail !== undefined) line.detail = record.detail
      line.sampleRate = record.mutating ? 1 : sampleRate
      yield* write(JSON.stringify(line))
    })
  return {
    log: (record) =>
      record.mutating || sampleRate >= 1
        ? emit(record)
        : sampleRate <= 0
        ? Effect.void
        : Effect.flatMap(Random.next, (r) => r < sampleRate ? emit(record) : Effect.void)
  }
}

/** A log that writes nothing. */
export const disabled: OperationLog = { log: () => Effect.void }

export const layer = (options?: Options): Layer.Layer<OperationLogTag> => Layer.succeed(OperationLogTag, make(options))

/** Reads `CACHEKIT_OPLOG_SAMPLE_RATE` (default 1) and `CACHEKIT_OPLOG_HASH_KEYS` (default false). */
export const layerConfig: Layer.Layer<OperationLogTag, ConfigError.ConfigError> = Layer.effect(
  OperationLogTag,
  Effect.map(
    Config.all({
      sampleRate: Config.number("CACHEKIT_OPLOG_SAMPLE_RATE").pipe(
        Config.validate({ message: "must be between 0 and 1", validation: (n) => n >= 0 && n <= 1 }),
        Config.withDefault(1)
      ),
      hashKeys: Config.boolean("CACHEKIT_OPLOG_HASH_KEYS").pipe(Config.withDefault(false))
    }),
    make
  )
)

/** Times `effect` and logs it with the outcome `outcomeOf` gives (`"error"` on failure). */
export const timed = <A, E, R>(
  log: OperationLog,
  effect: Effect.Effect<A, E, R>,
  describe: (outcome: Option.Option<A>) => Omit<OperationRecord, "durationMillis">
): Effect.Effect<A, E, R> =>
  Effect.gen(function*() {
    const start = yield* Clock.currentTimeNanos
    const exit = yield* Effect.exit(effect)
    const end = yield* Clock.currentTimeNanos
    const durationMillis = Number(end - start) / 1e6
    const described = describe(exit._tag === "Success" ? Option.some(exit.value) : Option.none())
    yield* log.log({ ...described, durationMillis, ...(exit._tag === "Failure" ? { outcome: "error" } : {}) })
    return yield* exit
  })

/**
 * Wraps a backend so each `get`, `set`, `delete` and `clear` writes one line (reads sampled,
 * writes always). Capabilities pass through unchanged.
 */
export const wrapBackend = (backend: CB.CacheBackend, log: OperationLog): CB.CacheBackend => ({
  ...backend,
  get: (key) =>
    timed(log, backend.get(key), (found) => ({
      op: "cache.get",
      outcome: Option.match(found, { onNone: () => "error", onSome: (o) => Option.isSome(o) ? "hit" : "miss" }),
      mutating: false,
      keys: [key]
    })),
  set: (key, entry) =>
    timed(log, backend.set(key, entry), () => ({
      op: "cache.set",
      outcome: "ok",
      mutating: true,
      keys: [key],
      tags: entry.tags,
      count: entry.size
    })),
  delete: (key) =>
    timed(log, backend.delete(key), (removed) => ({
      op: "cache.delete",
      outcome: Option.match(removed, { onNone: () => "error", onSome: (r) => r ? "removed" : "absent" }),
      mutating: true,
      keys: [key]
    })),
  clear: timed(log, backend.clear, () => ({ op: "cache.clear", outcome: "ok", mutating: true })),
  // the synchronous hot path bypasses logging; drop it so every read is seen
  unsafeGetSync: undefined
})
