/**
 * Redis Streams helpers (ioredis 5): append with approximate MAXLEN trimming, read the latest N
 * entries, and follow a stream from an id as an Effect `Stream` (XREAD BLOCK on a dedicated
 * connection per reader, closed when the reader's scope closes or the layer's scope closes).
 * Works on a standalone Redis and on Redis Cluster (one stream is one key, so one slot).
 *
 * @example
 * ```ts
 * const program = Effect.gen(function*() {
 *   const streams = yield* RedisStreams.RedisStreams
 *   yield* streams.publish("events", { type: "purged", key: "user:1" }, { maxLen: 10_000 })
 *   const recent = yield* streams.latest("events", 20)
 *   yield* streams.read("events", { from: "$" }).pipe(Stream.take(1), Stream.runCollect)
 * })
 * program.pipe(Effect.provide(RedisStreams.layer({ url: "redis://127.0.0.1:6379" })))
 * ```
 *
 * @since 0.1.0
 */
import type { Duration, Effect, Scope, Stream } from "effect"
import { Context, Data, Layer } from "effect"
import type { ConnectionOptions } from "./internal/redisConnection.js"
import { makeRedisStreams } from "./internal/redisStreams.js"

/** One stream entry: its id (`<ms>-<seq>`) and its field/value pairs. */
export interface StreamEntry {
  readonly id: string
  readonly fields: Readonly<Record<string, string>>
}

export interface PublishOptions {
  /** Trim the stream to about this many entries (`MAXLEN ~ n`: Redis trims whole nodes, so it may keep a few more). */
  readonly maxLen?: number | undefined
}

export interface ReadOptions {
  /**
   * Entries strictly after this id. `"$"` (default): only entries added after the read starts; `"0"`:
   * the whole stream, then new entries.
   */
  readonly from?: string | undefined
  /** How long one XREAD blocks before it is issued again. Default 5 seconds. */
  readonly block?: Duration.DurationInput | undefined
  /** Entries fetched per XREAD. Default 100. */
  readonly count?: number | undefined
}

/** The streams service. Stream names are prefixed with the layer's `prefix`. */
export interface RedisStreams {
  /** XADD with `MAXLEN ~` trimming; returns the new entry's id. */
  readonly publish: (
    stream: string,
    fields: Readonly<Record<string, string>>,
    options?: PublishOptions
  ) => Effect.Effect<string, RedisStreamsError>
  /** The latest `count` entries, oldest first (XREVRANGE + - COUNT n). */
  readonly latest: (stream: string, count: number) => Effect.Effect<ReadonlyArray<StreamEntry>, RedisStreamsError>
  /**
   * Every entry after `from`, as they arrive, on a connection of its own (blocking reads must not
   * hold the shared one). Ends when the stream's scope closes or the layer is closed; fails when
   * Redis does not answer or rejects the read.
   */
  readonly read: (stream: string, options?: ReadOptions) => Stream.Stream<StreamEntry, RedisStreamsError>
  /** Number of entries (XLEN). */
  readonly length: (stream: string) => Effect.Effect<number, RedisStreamsError>
}

export class RedisStreamsTag extends Context.Tag("@cachekit/backends/RedisStreams")<RedisStreamsTag, RedisStreams>() {}
/** The service tag (`yield* RedisStreams.RedisStreams`). */
export const RedisStreams = RedisStreamsTag

/** Redis could not be reached (connection down, refused). */
export class StreamUnavailable extends Data.TaggedError("StreamUnavailable")<{
  readonly operation: string
  readonly stream: string
  readonly cause: unknown
  readonly message: string
}> {}

/** Redis did not answer within the command timeout. */
export class StreamTimeout extends Data.TaggedError("StreamTimeout")<{
  readonly operation: string
  readonly stream: string
  readonly timeoutMillis: number
  readonly message: string
}> {}

/** Redis answered with an error: the key is not a stream (WRONGTYPE), an id is malformed... */
export class StreamRejected extends Data.TaggedError("StreamRejected")<{
  readonly operation: string
  readonly stream: string
  readonly cause: unknown
  readonly message: string
}> {}

export type RedisStreamsError = StreamUnavailable | StreamTimeout | StreamRejected

export interface Options extends ConnectionOptions {
  /** Prefix of every stream key. Default `cachekit:stream:`. */
  readonly prefix?: string | undefined
}

/** Connects (the shared connection lives in the scope); fails with `StreamUnavailable` when Redis is unreachable. */
export const make = (options: Options = {}): Effect.Effect<RedisStreams, StreamUnavailable, Scope.Scope> =>
  makeRedisStreams(options)

/** The service as a Layer. */
export const layer = (options: Options = {}): Layer.Layer<RedisStreamsTag, StreamUnavailable> =>
  Layer.scoped(RedisStreamsTag, make(options))
