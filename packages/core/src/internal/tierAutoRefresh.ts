/**
 * The machinery behind `AutoRefresh`: hit tracking (top-K over a count-min sketch), the
 * scheduled check, the bounded refresh queue and its worker pool.
 *
 * @internal
 */
import type { Scope } from "effect"
import { Cause, Clock, Duration, Effect, Option, Queue } from "effect"
import type { AutoRefresh, Config, HotKey, Loader, Stats } from "../AutoRefresh.js"
import type { TieredCache } from "../TieredCache.js"
import { TopK } from "./topK.js"

const MINUTE = 60_000

export const make = (
  tiered: TieredCache,
  config: Config,
  initialLoaders: ReadonlyArray<Loader>
): Effect.Effect<AutoRefresh, never, Scope.Scope> =>
  Effect.gen(function*() {
    const enabled = config.enabled ?? true
    const minHitsPerMinute = Math.max(1, config.minHitsPerMinute ?? 60)
    const checkInterval = Duration.decode(config.checkInterval ?? "10 seconds")
    const workers = Math.max(1, Math.floor(config.maxConcurrentRefreshes ?? 4))
    const refreshWindow = Duration.toMillis(config.refreshWindow ?? "30 seconds")
    const topK = new TopK(Math.max(1, config.trackedKeys ?? 256))
    // dropping: a full queue never blocks the check; the key is offered again at the next check
    const queue = yield* Effect.acquireRelease(
      Queue.dropping<string>(Math.max(1, config.queueCapacity ?? 1024)),
      Queue.shutdown
    )
    /** Keys queued or being refreshed: not queued twice, and their hits are not counted meanwhile. */
    const pending = new Set<string>()
    let loaders: ReadonlyArray<Loader> = sortLoaders(initialLoaders)
    let windowStart = yield* Clock.currentTimeMillis
    const stats = { scheduled: 0, refreshed: 0, failed: 0, dropped: 0, inFlight: 0 }

    const loaderFor = (key: string): Loader | undefined => {
      for (const l of loaders) if (key.startsWith(l.prefix)) return l
      return undefined
    }

    const rate = (count: number, now: number) => (count * MINUTE) / Math.max(1, now - windowStart)

    const check: Effect.Effect<number> = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      let queued = 0
      for (const slot of topK.hot(1)) {
        if (rate(slot.count, now) < minHitsPerMinute) break // sorted hottest first
        if (pending.has(slot.key)) continue
        if (slot.expiresAt - now > refreshWindow || now >= slot.staleUntil) continue
        if (loaderFor(slot.key) === undefined) continue
        if (yield* Queue.offer(queue, slot.key)) {
          pending.add(slot.key)
          stats.scheduled++
          queued++
        } else {
          stats.dropped++
        }
      }
      // hits per minute are measured over windows of at least a minute
      if (now - windowStart >= MINUTE) {
        topK.reset()
        windowStart = now
      }
      return queued
    })

    const refresh = (key: string): Effect.Effect<void> =>
      Effect.gen(function*() {
        const l = loaderFor(key)
        const previous = yield* Effect.option(tiered.get(key))
        if (l === undefined || Option.isNone(previous) || Option.isNone(previous.value)) return
        const now = yield* Clock.currentTimeMillis
        stats.inFlight++
        const next = yield* l.load(key, previous.value.value, now).pipe(
          Effect.ensuring(Effect.sync(() => stats.inFlight--)),
          Effect.either
        )
        if (next._tag === "Left") {
          stats.failed++
          yield* Effect.logWarning(`auto-refresh of a hot key failed; keeping the old entry`).pipe(
            Effect.annotateLogs({ key, error: String(next.left) })
          )
          return
        }
        const stored = yield* Effect.either(tiered.set(key, next.right))
        if (stored._tag === "Left") {
          stats.failed++
          yield* Effect.logWarning(`auto-refresh could not store a refreshed entry`).pipe(
            Effect.annotateLogs({ key, error: stored.left.message })
          )
          return
        }
        stats.refreshed++
        topK.touch(key, next.right.expiresAt, next.right.staleUntil)
      }).pipe(
        Effect.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause) ? Effect.failCause(cause) : Effect.logError("auto-refresh worker", cause)
        ),
        Effect.ensuring(Effect.sync(() => pending.delete(key)))
      )

    if (enabled) {
      yield* tiered.observeHits((key, entry) => {
        if (pending.size === 0 || !pending.has(key)) topK.record(key, entry.expiresAt, entry.staleUntil)
      })
      for (let i = 0; i < workers; i++) {
        yield* Queue.take(queue).pipe(Effect.flatMap(refresh), Effect.forever, Effect.forkScoped)
      }
      yield* Effect.sleep(checkInterval).pipe(Effect.zipRight(check), Effect.forever, Effect.forkScoped)
    }

    return {
      register: (l: Loader) =>
        Effect.acquireRelease(
          Effect.sync(() => {
            loaders = sortLoaders([...loaders, l])
          }),
          () =>
            Effect.sync(() => {
              loaders = loaders.filter((x) => x !== l)
            })
        ),
      hotKeys: Effect.map(Clock.currentTimeMillis, (now) =>
        topK.hot(1).map((slot): HotKey => ({
          key: slot.key,
          hitsPerMinute: rate(slot.count, now),
          expiresAt: slot.expiresAt
        }))),
      check: enabled ? check : Effect.succeed(0),
      stats: Effect.sync((): Stats => ({ ...stats }))
    } satisfies AutoRefresh
  })

/** Longest prefix first, so the most specific loader wins. */
const sortLoaders = (loaders: ReadonlyArray<Loader>): ReadonlyArray<Loader> =>
  [...loaders].sort((a, b) => b.prefix.length - a.prefix.length)
