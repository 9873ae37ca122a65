/**
 * Writing a response body to a backend while it streams to the caller.
 *
 * A `BodyWriter` receives the chunks the caller reads. A streaming backend gets them through a
 * bounded queue feeding `setStream` (so memory stays bounded by the queue); any other backend gets
 * them collected up to a size limit and stored with one `set` at the end. A writer that is aborted
 * (the caller stopped reading, the upstream failed mid-body) stores nothing.
 *
 * @internal
 */
import type { CacheBackend, CacheEntry } from "@cachekit/core"
import type { Scope } from "effect"
import { Effect, Exit, Fiber, Queue, Stream } from "effect"

/** What became of a body: stored, too large to store here, or not stored (failed, aborted). */
export type Written = "stored" | "too-large" | "failed"

/** Receives the body chunks; `finish` stores, `abort` discards. */
export interface BodyWriter {
  readonly write: (chunk: Uint8Array) => Effect.Effect<void>
  readonly finish: Effect.Effect<Written>
  readonly abort: Effect.Effect<void>
}

/** Chunks in flight between the caller's stream and a streaming backend's `setStream`. */
const STREAM_QUEUE_CAPACITY = 16

/** The entry to store, without its body. */
export type EntryTemplate = Omit<CacheEntry.CacheEntry, "value" | "size">

export const makeWriter = (
  backend: CacheBackend.CacheBackend,
  key: string,
  template: EntryTemplate,
  maxBodySize: number,
  scope: Scope.Scope
): Effect.Effect<BodyWriter> =>
  backend.streaming !== undefined
    ? streamingWriter(backend.streaming, key, template, scope)
    : Effect.sync(() =>
      collectingWriter(backend, key, template, Math.min(maxBodySize, backend.maxEntrySize ?? Infinity))
    )

const collectingWriter = (
  backend: CacheBackend.CacheBackend,
  key: string,
  template: EntryTemplate,
  limit: number
): BodyWriter => {
  let chunks: Array<Uint8Array> = []
  let size = 0
  let overflowed = false
  let done = false
  return {
    write: (chunk) =>
      Effect.sync(() => {
        if (overflowed || done) return
        size += chunk.byteLength
        if (size > limit) {
          // Over the limit: stop collecting, the caller still gets every byte.
          overflowed = true
          chunks = []
        } else {
          chunks.push(chunk)
        }
      }),
    finish: Effect.suspend((): Effect.Effect<Written> => {
      if (overflowed) return Effect.succeed("too-large")
      if (done) return Effect.succeed("failed")
      done = true
      const value = concat(chunks, size)
      chunks = []
      return backend.set(key, { ...template, value, size }).pipe(
        Effect.as("stored" as const),
        Effect.catchAll((error) =>
          Effect.logWarning("cachekit http: storing a response failed", error).pipe(Effect.as("failed" as const))
        )
      )
    }),
    abort: Effect.sync(() => {
      done = true
      chunks = []
    })
  }
}

const streamingWriter = (
  streaming: CacheBackend.StreamingCapability,
  key: string,
  template: EntryTemplate,
  scope: Scope.Scope
): Effect.Effect<BodyWriter> =>
  Effect.gen(function*() {
    // `null` marks the end of the body.
    const queue = yield* Queue.bounded<Uint8Array | null>(STREAM_QUEUE_CAPACITY)
    // Whether the backend already took the end marker (it may fail after that, e.g. on commit).
    let endTaken = false
    const body = Stream.fromQueue(queue).pipe(
      Stream.takeWhile((chunk) => {
        if (chunk === null) endTaken = true
        return chunk !== null
      }),
      Stream.map((chunk) => chunk as Uint8Array)
    )
    // When the backend fails, keep draining so the caller's writes never block on a full queue;
    // a failure after the end marker has nothing left to drain (waiting for another would hang).
    const drain: Effect.Effect<boolean> = Effect.suspend(() =>
      endTaken ? Effect.succeed(false) : Queue.take(queue).pipe(
        Effect.repeat({ until: (chunk) => chunk === null }),
        Effect.as(false)
      )
    )
    const fiber = yield* streaming.setStream(key, template, body).pipe(
      Effect.as(true),
      Effect.catchAll((error) =>
        Effect.logWarning("cachekit http: streaming a response into the backend failed", error).pipe(
          Effect.zipRight(drain)
        )
      ),
      // The writer is built inside an acquire (uninterruptible); the store itself must stay
      // interruptible or `abort` would wait forever for a body that never ends.
      Effect.interruptible,
      Effect.forkIn(scope)
    )
    let done = false
    return {
      write: (chunk) => done ? Effect.void : Queue.offer(queue, chunk),
      finish: Effect.suspend((): Effect.Effect<Written> => {
        if (done) return Effect.succeed("failed")
        done = true
        return Queue.offer(queue, null).pipe(
          Effect.zipRight(Fiber.await(fiber)),
          Effect.map((exit) => Exit.isSuccess(exit) && exit.value ? "stored" : "failed")
        )
      }),
      abort: Effect.suspend(() => {
        done = true
        // setStream promises that an interrupted body leaves no entry.
        return Fiber.interrupt(fiber).pipe(Effect.zipRight(Queue.shutdown(queue)))
      })
    }
  })

export const concat = (chunks: ReadonlyArray<Uint8Array>, size: number): Uint8Array => {
  if (chunks.length === 1) return chunks[0]!
  const out = new Uint8Array(size)
  let offset = 0
  for (const chunk of chunks) {
    out.set(chunk, offset)
    offset += chunk.byteLength
  }
  return out
}

/**
 * Tees `body` into a writer built when the stream starts: the caller gets every chunk, the entry
 * is stored before the stream ends, and `settle` learns what became of it (called once, also when
 * the caller stops early or the body fails: then with `"failed"` and nothing stored).
 */
export const tee = <E, R>(
  body: Stream.Stream<Uint8Array, E, R>,
  writer: Effect.Effect<BodyWriter>,
  settle: (written: Written) => Effect.Effect<void>
): Stream.Stream<Uint8Array, E, R> =>
  Stream.unwrapScoped(
    Effect.gen(function*() {
      let settled = false
      const w = yield* Effect.acquireRelease(writer, (w) =>
        settled ? Effect.void : w.abort.pipe(Effect.zipRight(Effect.suspend(() => {
          settled = true
          return settle("failed")
        }))))
      const finish = w.finish.pipe(
        Effect.flatMap((written) => {
          settled = true
          return settle(written)
        }),
        Effect.uninterruptible
      )
      return body.pipe(
        Stream.mapChunksEffect((chunks) =>
          Effect.as(Effect.forEach(chunks, w.write, { discard: true }), chunks)
        ),
        Stream.concat(Stream.execute(finish))
      )
    })
  )
