/**
 * A `Clock` whose millisecond reads cost a memory load instead of a call for the time. A worker
 * thread stores `Date.now()` into a shared word every `resolution` (4 ms by default); reading it is
 * one memory load. Caches read the clock on every hit to check expiry, and on some machines
 * (virtual machines with a slow clock source) `Date.now()` is a third of a memory hit's cost: this
 * clock removes that part. Opt-in, for hot in-process read paths.
 *
 * What changes: `currentTimeMillis` may lag the real time by up to `resolution` plus however long
 * the operating system takes to wake the writer thread (more on an overloaded machine); an entry may
 * then live that much past its TTL. Nanosecond reads (durations, spans) and `sleep` are the default
 * clock's, unchanged. The writer costs one small worker thread (it sleeps between stores; measured
 * on a 2-core VM: ~9 MiB RSS and ~1.3% of a core at 4-5 ms, ~3.3% at 1 ms) and stops
 * when the layer's scope closes; if it dies, or after the scope closes, reads fall back to
 * `Date.now()`, never to a frozen time. If no worker thread can be started, the layer logs a warning
 * and keeps the default clock.
 *
 * Node.js only: imported as `@cachekit/core/CoarseClock` (not part of the package's index, which has
 * no Node.js imports). Tests keep `TestClock`: do not provide this layer there.
 *
 * @example
 * import { Cache, MemoryBackend } from "@cachekit/core"
 * import * as CoarseClock from "@cachekit/core/CoarseClock"
 * import { Layer } from "effect"
 *
 * // The Cache captures the Clock it is built under: provide the clock below it.
 * const CacheLive = Cache.layer({ ttl: "10 minutes" }).pipe(
 *   Layer.provide(MemoryBackend.layer({ maxEntries: 100_000 })),
 *   Layer.provide(CoarseClock.layer())
 * )
 *
 * @since 0.1.0
 */
import type { Scope } from "effect"
import { Clock, Duration, Effect, Layer } from "effect"
import { readTime, startWriter } from "./internal/coarseClock.js"

/** Options of `make` / `layer`. */
export interface Options {
  /** How often the writer stores the time; reads lag by up to this much (plus wake-up delay). Default 4 ms. */
  readonly resolution?: Duration.DurationInput | undefined
}

/** A `Clock` with cheap millisecond reads, and whether its writer thread is still running. */
export interface CoarseClock extends Clock.Clock {
  /** False once the scope closed or the writer died (reads then fall back to `Date.now()`). */
  readonly isRunning: () => boolean
}

const fallbackNow = () => Date.now()

/**
 * Starts the writer thread in the current scope (stopped and joined when the scope closes) and
 * returns the clock. The resolution is clamped to 1 ms .. 1 s.
 */
export const make = (options?: Options): Effect.Effect<CoarseClock, never, Scope.Scope> =>
  Effect.gen(function*() {
    const resolution = Math.min(1000, Math.max(1, Math.round(Duration.toMillis(options?.resolution ?? 4))))
    const precise = Clock.make()
    const writer = yield* Effect.acquireRelease(
      Effect.sync(() => startWriter(resolution)),
      (w) => Effect.promise(() => w.stop())
    )
    // Until the thread runs, the stored time is the one taken before it started: wait for it.
    yield* Effect.promise(() => writer.started)
    const time = writer.cells.time
    const clock: CoarseClock = {
      [Clock.ClockTypeId]: Clock.ClockTypeId,
      unsafeCurrentTimeMillis: () => readTime(time, fallbackNow),
      currentTimeMillis: Effect.sync(() => readTime(time, fallbackNow)),
      unsafeCurrentTimeNanos: () => precise.unsafeCurrentTimeNanos(),
      currentTimeNanos: precise.currentTimeNanos,
      sleep: (duration) => precise.sleep(duration),
      isRunning: writer.running
    }
    return clock
  })

/**
 * Makes `CoarseClock` the `Clock` of everything built or run under this layer. If the writer thread
 * cannot start, logs a warning and leaves the current clock in place.
 */
export const layer = (options?: Options): Layer.Layer<never> =>
  Layer.unwrapScoped(
    make(options).pipe(
      Effect.map((clock) => Layer.setClock(clock)),
      Effect.catchAllDefect((defect) =>
        Effect.as(
          Effect.logWarning("CoarseClock: no worker thread could be started; keeping the default clock", defect),
          Layer.empty
        )
      )
    )
  )
