import type { Scope } from "effect"
import { Chunk, Duration, Effect, Option, Stream } from "effect"
import type { Cluster, Redis } from "ioredis"
import type * as RS from "../RedisStreams.js"
import { StreamRejected, StreamTimeout, StreamUnavailable } from "../RedisStreams.js"
import { acquireConnection, classify, messageOf } from "./redisConnection.js"

/** A raw entry as ioredis returns it: `[id, [field, value, field, value, ...]]`. */
type RawEntry = [id: string, fields: Array<string>]

const toEntry = ([id, flat]: RawEntry): RS.StreamEntry => {
  const fields: Record<string, string> = {}
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!
  return { id, fields }
}

export const makeRedisStreams = (
  options: RS.Options
): Effect.Effect<RS.RedisStreams, StreamUnavailable, Scope.Scope> =>
  Effect.gen(function*() {
    const prefix = options.prefix ?? "cachekit:stream:"
    const connection = yield* Effect.mapError(acquireConnection(options), (cause) =>
      new StreamUnavailable({
        operation: "connect",
        stream: "",
        cause,
        message: `redis streams: cannot connect: ${messageOf(cause)}; is redis-server running?`
      }))
    const { client, where } = connection
    // readers' dedicated connections, closed with the layer even if a reader is never finished
    const readers = new Set<Redis | Cluster>()
    let closed = false
    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        closed = true
        await Promise.all([...readers].map((r) => connection.close(r, false)))
      })
    )

    const toError = (operation: string, stream: string, timeoutMillis: number) =>
    (
      cause: unknown
    ): RS.RedisStreamsError => {
      const why = messageOf(cause)
      switch (classify(cause)) {
        case "timeout":
          return new StreamTimeout({
            operation,
            stream,
            timeoutMillis,
            message: `redis streams: ${operation} on "${stream}" got no answer within ${timeoutMillis} ms from ${where}`
          })
        case "rejected":
          return new StreamRejected({
            operation,
            stream,
            cause,
            message: `redis streams: ${operation} on "${stream}" was rejected: ${why}`
          })
        case "unavailable":
          return new StreamUnavailable({
            operation,
            stream,
            cause,
            message: `redis streams: ${operation} on "${stream}" failed: ${why} (${where})`
          })
      }
    }
    const call = <A>(operation: string, stream: string, f: () => Promise<A>) =>
      Effect.tryPromise({ try: f, catch: toError(operation, stream, connection.commandTimeoutMillis) })

    const publish = (stream: string, fields: Readonly<Record<string, string>>, publishOptions?: RS.PublishOptions) => {
      const flat: Array<string> = []
      for (const [field, value] of Object.entries(fields)) flat.push(field, value)
      if (flat.length === 0) {
        return Effect.fail(
          new StreamRejected({
            operation: "publish",
            stream,
            cause: undefined,
            message: `redis streams: publish on "${stream}" needs at least one field`
          })
        )
      }
      const maxLen = publishOptions?.maxLen
      return Effect.map(
        call("publish", stream, () =>
          maxLen === undefined
            ? client.xadd(prefix + stream, "*", ...flat)
            : client.xadd(prefix + stream, "MAXLEN", "~", String(Math.max(0, Math.floor(maxLen))), "*", ...flat)),
        (id) => id ?? ""
      )
    }

    const latest = (stream: string, count: number) =>
      Effect.map(
        call(
          "latest",
          stream,
          () => client.xrevrange(prefix + stream, "+", "-", "COUNT", Math.max(1, Math.floor(count)))
        ),
        (raw) => (raw as Array<RawEntry>).map(toEntry).reverse()
      )

    const length = (stream: string) => call("length", stream, () => client.xlen(prefix + stream))

    const read = (stream: string, readOptions?: RS.ReadOptions): Stream.Stream<RS.StreamEntry, RS.RedisStreamsError> =>
      Stream.unwrapScoped(Effect.gen(function*() {
        const key = prefix + stream
        const blockMillis = Math.max(1, Duration.toMillis(readOptions?.block ?? "5 seconds"))
        const count = Math.max(1, readOptions?.count ?? 100)
        // the reader's commands may block for blockMillis: its timeout allows for that
        const timeoutMillis = blockMillis + connection.commandTimeoutMillis
        const reader = yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: () => connection.open({ commandTimeoutMillis: timeoutMillis }),
            catch: toError("read", stream, timeoutMillis)
          }),
          (r) =>
            Effect.promise(async () => {
              readers.delete(r)
              // a blocked XREAD cannot be cancelled: drop the connection rather than wait for it
              await connection.close(r, false)
            })
        )
        readers.add(reader)
        // "$" is resolved once to the newest id now, so nothing added between two XREADs is missed
        let lastId = readOptions?.from ?? "$"
        if (lastId === "$") {
          const newest = yield* call("read", stream, () => reader.xrevrange(key, "+", "-", "COUNT", 1))
          lastId = (newest as Array<RawEntry>)[0]?.[0] ?? "0-0"
        }
        const next: Effect.Effect<Option.Option<Chunk.Chunk<RS.StreamEntry>>, RS.RedisStreamsError> = Effect.suspend(
          () => {
            if (closed) return Effect.succeed(Option.none())
            return Effect.tryPromise({
              try: () => reader.xread("COUNT", count, "BLOCK", blockMillis, "STREAMS", key, lastId),
              catch: toError("read", stream, timeoutMillis)
            }).pipe(
              Effect.map((reply) => {
                const entries = ((reply?.[0]?.[1] ?? []) as Array<RawEntry>).map(toEntry)
                const last = entries[entries.length - 1]
                if (last !== undefined) lastId = last.id
                return Option.some(Chunk.unsafeFromArray(entries))
              }),
              // the layer closed under a blocked read: the stream ends rather than fails
              Effect.catchAll((error) => closed ? Effect.succeed(Option.none()) : Effect.fail(error))
            )
          }
        )
        return Stream.repeatEffectChunkOption(next.pipe(
          Effect.mapError(Option.some),
          Effect.flatMap(Option.match({
            onNone: () => Effect.fail(Option.none<RS.RedisStreamsError>()),
            onSome: (chunk) => Effect.succeed(chunk)
          }))
        ))
      }))

    return { publish, latest, read, length } satisfies RS.RedisStreams
  })
