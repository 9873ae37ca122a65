/**
 * The machinery behind `TieredCache`: the read walk with promotion, write-through, the per-tier
 * guard (timeout + circuit breaker, fail-open), invalidation across tiers and the bus subscriber.
 *
 * @internal
 */
import type { Scope } from "effect"
import {
  Cause,
  Clock,
  Deferred,
  Duration,
  Effect,
  Exit,
  FiberId,
  Metric,
  MetricBoundaries,
  MetricKey,
  Option,
  Schedule,
  Stream
} from "effect"
import type { CacheBackend, Health } from "../CacheBackend.js"
import { validateKey } from "../CacheBackend.js"
import type { CacheEntry } from "../CacheEntry.js"
import type { CacheError } from "../CacheError.js"
import { backendTimeout, backendUnavailable, EntryTooLarge } from "../CacheError.js"
import type { InvalidationBus, InvalidationBusError, Message } from "../InvalidationBus.js"
import type {
  HitListener,
  InvalidationReport,
  Options,
  SetOptions,
  Tier,
  TieredCache,
  TierStats
} from "../TieredCache.js"
import { CircuitBreaker } from "./circuitBreaker.js"

/** Meta keys holding an entry's original expiry when a tier stores it with a scaled/overridden one. */
export const META_ORIGINAL_EXPIRES = "ck.exp"
export const META_ORIGINAL_STALE = "ck.stale"

const SKIPPED: unique symbol = Symbol.for("@cachekit/core/TieredCache/skipped")
type Skipped = typeof SKIPPED

interface Counters {
  hits: number
  misses: number
  promotions: number
  errors: number
  timeouts: number
  skipped: number
}

const COUNTER_NAMES = ["hits", "misses", "promotions", "errors", "timeouts", "skipped"] as const

const counterMetrics = {
  hits: Metric.counter("cachekit_tier_hits_total", { description: "reads answered by a tier", incremental: true }),
  misses: Metric.counter("cachekit_tier_misses_total", {
    description: "reads a tier did not answer",
    incremental: true
  }),
  promotions: Metric.counter("cachekit_tier_promotions_total", {
    description: "entries copied up into a tier",
    incremental: true
  }),
  errors: Metric.counter("cachekit_tier_errors_total", {
    description: "failed or timed-out tier operations",
    incremental: true
  }),
  timeouts: Metric.counter("cachekit_tier_timeouts_total", {
    description: "timed-out tier operations",
    incremental: true
  }),
  skipped: Metric.counter("cachekit_tier_skipped_total", {
    description: "tier calls skipped because the circuit was open",
    incremental: true
  })
}

const latencyKey = MetricKey.histogram(
  "cachekit_tier_latency_ms",
  MetricBoundaries.exponential({ start: 0.01, factor: 2, count: 20 }),
  "latency of tier operations (milliseconds)"
)

/**
 * The latency histogram of one tier, with the tier tag in its key: `Metric.tagged` would look the
 * tagged key up in the metric registry (hashing it) on every update, once per tier call.
 */
const latencyMetricOf = (tier: string): Metric.Metric.Histogram<number> =>
  Metric.fromMetricKey(MetricKey.tagged(latencyKey, "tier", tier))

interface TierRuntime {
  readonly index: number
  readonly name: string
  readonly backend: CacheBackend
  readonly sync: ((key: string, now: number) => CacheEntry | undefined) | undefined
  readonly ttlScale: number
  readonly promote: "always" | "never" | { readonly afterHits: number; readonly windowMillis: number }
  readonly promotionHits: Map<string, { count: number; windowStart: number }>
  readonly writeThrough: boolean
  readonly maxEntrySize: number
  readonly timeout: Duration.Duration | undefined
  readonly timeoutMillis: number
  /** Reads go through the backend's `unsafeGetPromise` (offered, and no Effect timeout to race). */
  readonly readsPromise: boolean
  readonly breaker: CircuitBreaker | undefined
  readonly local: boolean
  readonly counters: Counters
  readonly flushed: Counters
  readonly latency: Metric.Metric.Histogram<number>
  readonly counterMetrics: { readonly [K in keyof Counters]: Metric.Metric.Counter<number> }
}

/** One walk below L1 in flight for a key, shared by every concurrent reader of that key. */
interface Walk {
  deferred: Deferred.Deferred<Option.Option<CacheEntry>> | undefined
  superseded: boolean
}

const zero = (): Counters => ({ hits: 0, misses: 0, promotions: 0, errors: 0, timeouts: 0, skipped: 0 })

const resolveTier = (tier: Tier, index: number): TierRuntime => {
  const name = tier.name ?? `${tier.backend.name}#${index + 1}`
  const promote = tier.promote ?? "always"
  const timeout = tier.timeout === undefined ? undefined : Duration.decode(tier.timeout)
  const breakerOptions = tier.breaker === false ? undefined : tier.breaker ?? {}
  return {
    index,
    name,
    backend: tier.backend,
    sync: tier.backend.unsafeGetSync,
    ttlScale: tier.ttlScale !== undefined && tier.ttlScale > 0 ? tier.ttlScale : 1,
    promote: typeof promote === "string"
      ? promote
      : { afterHits: Math.max(1, promote.afterHits), windowMillis: Duration.toMillis(promote.window) },
    promotionHits: new Map(),
    writeThrough: tier.writeThrough ?? true,
    maxEntrySize: Math.min(
      tier.maxEntrySize ?? Number.POSITIVE_INFINITY,
      tier.backend.maxEntrySize ?? Number.POSITIVE_INFINITY
    ),
    timeout,
    timeoutMillis: timeout === undefined ? Number.POSITIVE_INFINITY : Duration.toMillis(timeout),
    readsPromise: timeout === undefined && tier.backend.unsafeGetPromise !== undefined,
    breaker: breakerOptions === undefined ? undefined : new CircuitBreaker({
      failureThreshold: Math.max(1, breakerOptions.failureThreshold ?? 5),
      resetAfterMillis: Duration.toMillis(breakerOptions.resetAfter ?? "30 seconds")
    }),
    local: tier.local ?? index === 0,
    counters: zero(),
    flushed: zero(),
    latency: latencyMetricOf(name),
    counterMetrics: {
      hits: counterMetrics.hits.pipe(Metric.tagged("tier", name)),
      misses: counterMetrics.misses.pipe(Metric.tagged("tier", name)),
      promotions: counterMetrics.promotions.pipe(Metric.tagged("tier", name)),
      errors: counterMetrics.errors.pipe(Metric.tagged("tier", name)),
      timeouts: counterMetrics.timeouts.pipe(Metric.tagged("tier", name)),
      skipped: counterMetrics.skipped.pipe(Metric.tagged("tier", name))
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Lifetimes per tier
// ---------------------------------------------------------------------------------------------

const scaled = (createdAt: number, at: number, scale: number): number =>
  scale === 1 || !Number.isFinite(at) ? at : createdAt + (at - createdAt) * scale

const metaNumber = (entry: CacheEntry, key: string): number | undefined => {
  const raw = entry.meta?.[key]
  return raw === undefined ? undefined : Number(raw)
}

const withOriginal = (entry: CacheEntry, expiresAt: number, staleUntil: number): CacheEntry => {
  const originalExpires = metaNumber(entry, META_ORIGINAL_EXPIRES) ?? entry.expiresAt
  const originalStale = metaNumber(entry, META_ORIGINAL_STALE) ?? entry.staleUntil
  return {
    ...entry,
    expiresAt,
    staleUntil: Math.max(expiresAt, staleUntil),
    meta: {
      ...entry.meta,
      [META_ORIGINAL_EXPIRES]: String(originalExpires),
      [META_ORIGINAL_STALE]: String(originalStale)
    }
  }
}

/** The entry as `set` writes it into a tier: a per-call TTL, else the tier's TTL scale. */
const entryForSet = (entry: CacheEntry, tier: TierRuntime, ttl: Duration.DurationInput | undefined, now: number) => {
  if (ttl !== undefined) {
    const expiresAt = now + Duration.toMillis(ttl)
    const grace = entry.staleUntil - entry.expiresAt
    return withOriginal(entry, expiresAt, Number.isNaN(grace) ? expiresAt : expiresAt + grace)
  }
  if (tier.ttlScale === 1) return entry
  return withOriginal(
    entry,
    scaled(entry.createdAt, entry.expiresAt, tier.ttlScale),
    scaled(entry.createdAt, entry.staleUntil, tier.ttlScale)
  )
}

/**
 * The entry as promotion writes it into a higher tier: that tier's lifetime computed from the
 * ORIGINAL expiry and the creation time, and never beyond what the lower tier had. Promotion
 * therefore never extends an entry's life. `undefined` when nothing servable is left.
 */
const entryForPromotion = (entry: CacheEntry, tier: TierRuntime, now: number): CacheEntry | undefined => {
  const originalExpires = metaNumber(entry, META_ORIGINAL_EXPIRES) ?? entry.expiresAt
  const originalStale = metaNumber(entry, META_ORIGINAL_STALE) ?? entry.staleUntil
  const expiresAt = Math.min(entry.expiresAt, scaled(entry.createdAt, originalExpires, tier.ttlScale))
  const staleUntil = Math.max(
    expiresAt,
    Math.min(entry.staleUntil, scaled(entry.createdAt, originalStale, tier.ttlScale))
  )
  if (staleUntil <= now) return undefined
  if (expiresAt === entry.expiresAt && staleUntil === entry.staleUntil) return entry
  return withOriginal(entry, expiresAt, staleUntil)
}

// ---------------------------------------------------------------------------------------------
// The guard around every tier call
// ---------------------------------------------------------------------------------------------

/** Failures that mean "the tier is unwell" (they count for the breaker); other errors are answers. */
const isInfrastructureFailure = (cause: Cause.Cause<CacheError>): boolean =>
  Option.match(Cause.failureOption(cause), {
    onNone: () => true, // a defect
    onSome: (error) => error._tag === "BackendUnavailable" || error._tag === "BackendTimeout"
  })

const describe = (cause: Cause.Cause<CacheError>): string =>
  Option.match(Cause.failureOption(cause), { onNone: () => Cause.pretty(cause), onSome: (e) => e.message })

/** Last error per tier, for operations that must report one. */
const lastErrors = new WeakMap<TierRuntime, CacheError>()

const lastErrorOf = (tier: TierRuntime, operation: string): CacheError =>
  lastErrors.get(tier) ??
    backendUnavailable(tier.name, operation, "circuit open", "the tier failed recently and is not being called")

/** The breaker's word before a tier call: `true` when the call is skipped (counted). */
const skips = (tier: TierRuntime, now: number): boolean => {
  if (tier.breaker !== undefined && tier.breaker.decide(now) === "skip") {
    tier.counters.skipped++
    return true
  }
  return false
}

/** Bookkeeping of a tier call that answered: the breaker closes, the latency is recorded. */
const succeeded = (tier: TierRuntime, started: number): void => {
  tier.breaker?.onSuccess()
  tier.latency.unsafeUpdate(performance.now() - started, [])
}

/**
 * Bookkeeping of a tier call that failed (not interrupted): counted, remembered, fed to the
 * breaker when the tier is unwell, logged; the call then counts as `SKIPPED`.
 */
const failed = (tier: TierRuntime, operation: string, cause: Cause.Cause<CacheError>): Effect.Effect<Skipped> => {
  const breaker = tier.breaker
  tier.counters.errors++
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) lastErrors.set(tier, failure.value)
  if (Option.isSome(failure) && failure.value._tag === "BackendTimeout") tier.counters.timeouts++
  const infrastructure = isInfrastructureFailure(cause)
  return Clock.currentTimeMillis.pipe(
    Effect.tap((at) => {
      if (infrastructure) breaker?.onFailure(at)
      else breaker?.onSuccess()
    }),
    Effect.zipRight(
      Effect.logWarning(`tier ${tier.name}: ${operation} failed, continuing without it`).pipe(
        Effect.annotateLogs({
          tier: tier.name,
          operation,
          error: describe(cause),
          breaker: breaker?.state ?? "none"
        })
      )
    ),
    Effect.as(SKIPPED)
  )
}

/**
 * Runs one tier operation with the tier's timeout and breaker. Never fails (except by
 * interruption): a skipped, failed or timed-out call is counted, logged, and returns `SKIPPED`.
 */
const guarded = <A>(
  tier: TierRuntime,
  operation: string,
  effect: Effect.Effect<A, CacheError>,
  now: number
): Effect.Effect<A | Skipped> => {
  if (skips(tier, now)) return Effect.succeed(SKIPPED)
  const started = performance.now()
  const timeout = tier.timeout
  // Effect's timeout races two fibers per call: on an L2 hit that costs more than the Redis round
  // trip itself, so it is opt-in (the project's network backends time out their own commands).
  const bounded = timeout === undefined ? effect : Effect.timeoutFail(effect, {
    duration: timeout,
    onTimeout: () => backendTimeout(tier.name, operation, tier.timeoutMillis)
  })
  return bounded.pipe(
    Effect.matchCauseEffect({
      onSuccess: (a) => {
        succeeded(tier, started)
        return Effect.succeed(a)
      },
      onFailure: (cause) => {
        if (Cause.isInterruptedOnly(cause)) {
          tier.breaker?.onAbandon()
          return Effect.failCause(cause as Cause.Cause<never>)
        }
        return failed(tier, operation, cause)
      }
    })
  )
}

/** A rejection of `unsafeGetPromise`: a `CacheError` is a failure, anything else a defect. */
const rejectionCause = (error: unknown): Cause.Cause<CacheError> =>
  typeof error === "object" && error !== null && "_tag" in error && typeof error._tag === "string" &&
    error instanceof Error
    ? Cause.fail(error as CacheError)
    : Cause.die(error)

// ---------------------------------------------------------------------------------------------
// make
// ---------------------------------------------------------------------------------------------

export const make = (
  tierConfigs: ReadonlyArray<Tier>,
  options?: Options & { readonly bus?: InvalidationBus | undefined }
): Effect.Effect<TieredCache, InvalidationBusError, Scope.Scope> =>
  Effect.gen(function*() {
    const tiers = tierConfigs.map(resolveTier)
    const count = tiers.length
    const bus = options?.bus
    const broadcastAlways = (options?.broadcast ?? "always") === "always"
    const maxTracked = Math.max(1, options?.maxTrackedPromotions ?? 10_000)
    const name = options?.name ?? "tiered"
    let listeners: ReadonlyArray<HitListener> = []
    const localTiers = tiers.filter((t) => t.local)
    const none = Effect.succeed(Option.none<CacheEntry>())

    const notify = (key: string, entry: CacheEntry, tier: number) => {
      for (let i = 0; i < listeners.length; i++) listeners[i]!(key, entry, tier)
    }

    const publish = (message: Message): Effect.Effect<void, InvalidationBusError> =>
      bus === undefined ? Effect.void : bus.publish(message)

    /** Publishing as a side effect of a CacheBackend call: logged, never failing the call. */
    const publishQuietly = (message: Message): Effect.Effect<void> =>
      bus === undefined || !broadcastAlways ? Effect.void : publish(message).pipe(
        Effect.catchAll((error) =>
          Effect.logWarning("tiered cache: could not broadcast an invalidation", error.message)
        )
      )

    // -- reads ------------------------------------------------------------------------------

    const shouldPromote = (tier: TierRuntime, key: string, now: number): boolean => {
      const rule = tier.promote
      if (rule === "always") return true
      if (rule === "never") return false
      const seen = tier.promotionHits.get(key)
      if (seen === undefined || now - seen.windowStart >= rule.windowMillis) {
        if (seen !== undefined) tier.promotionHits.delete(key)
        if (rule.afterHits <= 1) return true
        if (tier.promotionHits.size >= maxTracked) {
          // forget the oldest tracked key (Map iterates in insertion order)
          const oldest = tier.promotionHits.keys().next()
          if (!oldest.done) tier.promotionHits.delete(oldest.value)
        }
        tier.promotionHits.set(key, { count: 1, windowStart: now })
        return false
      }
      seen.count++
      if (seen.count < rule.afterHits) return false
      tier.promotionHits.delete(key)
      return true
    }

    const promote = (key: string, entry: CacheEntry, foundAt: number, now: number, walk: Walk | undefined) => {
      // a write or invalidation of the key since this walk started: what it found must not go up
      if (walk?.superseded === true) return Effect.void
      let writes: Array<Effect.Effect<unknown>> | undefined
      for (let j = foundAt - 1; j >= 0; j--) {
        const tier = tiers[j]!
        if (entry.size > tier.maxEntrySize || !shouldPromote(tier, key, now)) continue
        const promoted = entryForPromotion(entry, tier, now)
        if (promoted === undefined) continue
        tier.counters.promotions++
        ;(writes ??= []).push(guarded(tier, "promote", tier.backend.set(key, promoted), now))
      }
      return writes === undefined ? Effect.void : Effect.all(writes, { discard: true })
    }

    /** What a tier's read found: a hit stops the walk (promoting into the tiers above), else on down. */
    const found = (
      key: string,
      i: number,
      now: number,
      token: Walk | undefined,
      clock: Clock.Clock,
      result: Option.Option<CacheEntry> | Skipped
    ): Effect.Effect<Option.Option<CacheEntry>> => {
      if (result === SKIPPED) return walk(key, i + 1, now, token, clock)
      const tier = tiers[i]!
      if (Option.isNone(result)) {
        tier.counters.misses++
        return walk(key, i + 1, now, token, clock)
      }
      tier.counters.hits++
      notify(key, result.value, i)
      if (i === 0) return Effect.succeed(result)
      const promotion = promote(key, result.value, i, now, token)
      return promotion === Effect.void ? Effect.succeed(result) : Effect.as(promotion, result)
    }

    /**
     * A tier read through the backend's `unsafeGetPromise`: the L2 hit path in one asynchronous step.
     * The tier has no Effect timeout (else it reads through `guarded`); the backend's commands time
     * out, so the Promise always settles. The breaker, counters and latency of `guarded` are done in
     * the reply callback; a failure's logging and the promotion of a hit run in the fiber. No
     * canceler is registered for a plain call (`Effect.async` wraps a read that has one in
     * `onInterrupt`, which about doubles the CPU cost of an L2 hit), so the reply of a reader
     * interrupted meanwhile is still counted, but its promotion and a failure's fail-open steps do
     * not run; only a half-open breaker's probe registers one (an abandoned probe must free the slot).
     *
     * `last`: the read is the shared walk's last step (the lowest tier), so it ends the walk itself
     * (`endWalk` in the reply callback) instead of an `Effect.onExit` around it. The readers waiting
     * on the walk get the reply even if the reader that started it was interrupted meanwhile; a
     * promotion the answer triggers runs after they have it.
     */
    const readPromised = (
      key: string,
      i: number,
      now: number,
      token: Walk | undefined,
      clock: Clock.Clock,
      last: boolean
    ): Effect.Effect<Option.Option<CacheEntry>> => {
      const tier = tiers[i]!
      const breaker = tier.breaker
      const decision = breaker === undefined ? "call" : breaker.decide(now)
      if (decision === "skip") {
        tier.counters.skipped++
        if (last) endWalk(key, token!, missed)
        return walk(key, i + 1, now, token, clock)
      }
      return Effect.async<Option.Option<CacheEntry>>((resume) => {
        const started = performance.now()
        let reply: Promise<CacheEntry | undefined>
        try {
          reply = tier.backend.unsafeGetPromise!(key, clock)
        } catch (error) {
          reply = Promise.reject(error)
        }
        let abandoned = false
        reply.then(
          (entry) => {
            const result = entry === undefined ? Option.none<CacheEntry>() : Option.some(entry)
            if (abandoned) {
              if (last) endWalk(key, token!, result)
              return
            }
            succeeded(tier, started)
            // counted and the promotion decided now, while the walk can still be superseded by a
            // write; the promotion's writes run in the fiber (not at all if it was interrupted)
            const next = found(key, i, now, token, clock, result)
            if (last) endWalk(key, token!, result)
            resume(next)
          },
          (error) => {
            if (last) endWalk(key, token!, missed)
            if (abandoned) return
            resume(
              Effect.suspend(() =>
                Effect.flatMap(failed(tier, "get", rejectionCause(error)), () => walk(key, i + 1, now, token, clock))
              )
            )
          }
        )
        if (decision === "probe") {
          return Effect.sync(() => {
            abandoned = true
            breaker!.onAbandon()
          })
        }
      })
    }

    const walk = (
      key: string,
      i: number,
      now: number,
      token: Walk | undefined,
      clock: Clock.Clock
    ): Effect.Effect<Option.Option<CacheEntry>> => {
      if (i >= count) return none
      const tier = tiers[i]!
      if (tier.readsPromise) return readPromised(key, i, now, token, clock, false)
      return Effect.flatMap(
        guarded(tier, "get", tier.backend.get(key), now),
        (result) => found(key, i, now, token, clock, result)
      )
    }

    /**
     * The walk below L1 is single-flight per key: concurrent misses of one key share one walk (one
     * call per lower tier), so with the Cache service's single-flight compute on top, N concurrent
     * misses cost one walk and one compute. The first reader runs the walk in its own fiber (no
     * fork on the L2 hit path); if it is interrupted, the readers waiting on it walk again.
     */
    const walks = new Map<string, Walk>()
    const sharedWalk = (
      key: string,
      from: number,
      now: number,
      clock: Clock.Clock
    ): Effect.Effect<Option.Option<CacheEntry>> => {
      if (from >= count) return none
      const existing = walks.get(key)
      if (existing !== undefined) {
        // the Deferred is made by the first waiter: a walk nobody joins allocates none
        const deferred = existing.deferred ??= Deferred.unsafeMake(FiberId.none)
        return Effect.catchAllCause(
          Deferred.await(deferred),
          (cause) => Cause.isInterruptedOnly(cause) ? sharedWalk(key, from, now, clock) : Effect.failCause(cause)
        )
      }
      const token: Walk = { deferred: undefined, superseded: false }
      walks.set(key, token)
      // the common L1-miss-then-L2 read: the Promise read ends the walk itself (no onExit around it)
      if (from === count - 1 && tiers[from]!.readsPromise) return readPromised(key, from, now, token, clock, true)
      return Effect.onExit(walk(key, from, now, token, clock), (exit) => {
        if (walks.get(key) === token) walks.delete(key)
        return token.deferred === undefined ? Effect.void : Deferred.done(token.deferred, exit)
      })
    }

    /** Ends a shared walk with its answer: new readers walk again, the waiters get the answer. */
    const endWalk = (
      key: string,
      token: Walk,
      answer: Option.Option<CacheEntry> | Exit.Exit<Option.Option<CacheEntry>>
    ) => {
      if (walks.get(key) === token) walks.delete(key)
      if (token.deferred !== undefined) {
        Deferred.unsafeDone(token.deferred, Exit.isExit(answer) ? answer : Exit.succeed(answer))
      }
    }
    const missed: Exit.Exit<Option.Option<CacheEntry>> = Exit.succeed(Option.none())

    /** A write or invalidation of `key`: in-flight walks must not promote what they found, new reads walk again. */
    const supersede = (key: string) => {
      const token = walks.get(key)
      if (token !== undefined) {
        token.superseded = true
        walks.delete(key)
      }
    }

    const first = tiers[0]
    const get = (key: string): Effect.Effect<Option.Option<CacheEntry>, CacheError> => {
      if (key.length === 0) return validateKey(key).pipe(Effect.zipRight(none))
      return Effect.clockWith((clock) => {
        const now = clock.unsafeCurrentTimeMillis()
        // hot path: an in-process L1 answers synchronously, no tier call allocated
        if (first !== undefined && first.sync !== undefined && (first.breaker?.state ?? "closed") === "closed") {
          const entry = first.sync(key, now)
          if (entry !== undefined) {
            first.counters.hits++
            notify(key, entry, 0)
            return Effect.succeed(Option.some(entry))
          }
          first.counters.misses++
          return sharedWalk(key, 1, now, clock)
        }
        return sharedWalk(key, 0, now, clock)
      })
    }

    // -- synchronous reads: the face's unsafePeekSync / unsafeGetSync ------------------------
    // Offered when L1 can both peek and read synchronously (an in-process memory tier). They only
    // ever answer from L1: `undefined` means "not in L1, or L1's circuit is not closed", never a
    // final miss (the face says `unsafeSyncMissIsFinal: false`); the caller then asks `get`, which
    // walks the lower tiers and counts the miss once, because the sync miss counted nothing.

    const l1Peek = first?.backend.unsafePeekSync
    const l1Get = first?.sync
    const l1Usable = () => (first!.breaker?.state ?? "closed") === "closed"
    const peekSync = l1Peek === undefined || l1Get === undefined
      ? undefined
      : (key: string, now: number): CacheEntry | undefined => l1Usable() ? l1Peek(key, now) : undefined
    const getSync = l1Peek === undefined || l1Get === undefined
      ? undefined
      : (key: string, now: number): CacheEntry | undefined => {
        if (!l1Usable() || l1Peek(key, now) === undefined) return undefined
        // a hit: read for real, so L1 counts it and records the key's frequency, as `get` does
        const entry = l1Get(key, now)
        if (entry === undefined) return undefined
        first!.counters.hits++
        notify(key, entry, 0)
        return entry
      }

    // -- writes -----------------------------------------------------------------------------

    const setLocal = (key: string, entry: CacheEntry, setOptions: SetOptions | undefined) =>
      Effect.gen(function*() {
        yield* validateKey(key)
        const now = yield* Clock.currentTimeMillis
        supersede(key)
        let written = 0
        let eligible = 0
        let lastError: CacheError | undefined
        // lowest tier first: a reader that misses L1 meanwhile finds the new value below
        for (let i = count - 1; i >= 0; i--) {
          const tier = tiers[i]!
          if (!tier.writeThrough || entry.size > tier.maxEntrySize) {
            // this tier does not take the new value: it must not keep serving an old one
            yield* guarded(tier, "delete", tier.backend.delete(key), now)
            continue
          }
          eligible++
          const stored = entryForSet(entry, tier, setOptions?.ttl?.[i], now)
          if (stored.staleUntil <= now) {
            yield* guarded(tier, "delete", tier.backend.delete(key), now)
            continue
          }
          const result = yield* guarded(tier, "set", tier.backend.set(key, stored), now)
          if (result === SKIPPED) lastError = lastErrorOf(tier, "set")
          else written++
        }
        if (eligible === 0) {
          return yield* new EntryTooLarge({
            key,
            size: entry.size,
            maxSize: Math.max(...tiers.map((t) => t.maxEntrySize)),
            message: `entry "${key}" of ${entry.size} bytes is larger than every tier accepts`
          })
        }
        if (written === 0 && lastError !== undefined) return yield* lastError
      })

    const set = (key: string, entry: CacheEntry, setOptions?: SetOptions) =>
      Effect.zipRight(setLocal(key, entry, setOptions), publishQuietly({ _tag: "Update", keys: [key] }))

    const setWithBroadcast = (key: string, entry: CacheEntry, setOptions?: SetOptions) =>
      Effect.zipRight(
        setLocal(key, entry, setOptions),
        publish({ _tag: "Update", keys: [key] }).pipe(
          Effect.mapError((e) => backendUnavailable(name, "broadcast", e.cause, e.message))
        )
      )

    // -- invalidation -----------------------------------------------------------------------

    const forgetKey = (key: string) => {
      supersede(key)
      for (const tier of tiers) tier.promotionHits.delete(key)
    }

    /** Deletes a key from the given tiers, lowest first; fails (after trying all) if one could not. */
    const deleteFrom = (targets: ReadonlyArray<TierRuntime>, key: string) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        forgetKey(key)
        let removed = false
        let failure: CacheError | undefined
        for (let i = targets.length - 1; i >= 0; i--) {
          const tier = targets[i]!
          const result = yield* guarded(tier, "delete", tier.backend.delete(key), now)
          if (result === SKIPPED) failure ??= lastErrorOf(tier, "delete")
          else removed = removed || result
        }
        // again after the deletes: a walk that started meanwhile may have read the old entry
        forgetKey(key)
        return { removed, failure }
      })

    const invalidateWith = (key: string, broadcast: (m: Message) => Effect.Effect<void>) =>
      Effect.gen(function*() {
        yield* validateKey(key)
        const { failure, removed } = yield* deleteFrom(tiers, key)
        yield* broadcast({ _tag: "Invalidate", keys: [key] })
        if (failure !== undefined) return yield* failure
        return removed
      })

    const publishLogged = (message: Message) =>
      publish(message).pipe(
        Effect.catchAll((error) =>
          Effect.logWarning("tiered cache: could not broadcast an invalidation", error.message)
        )
      )

    /** Soft expiry: the entry stays (servable until `staleUntil`) but is no longer fresh. */
    const expireTagged = (tier: TierRuntime, tags: ReadonlyArray<string>, now: number) =>
      Effect.gen(function*() {
        const index = tier.backend.tags!
        let affected = 0
        const seen = new Set<string>()
        for (const tag of tags) {
          const keys = yield* index.keysForTag(tag)
          for (const key of keys) {
            if (seen.has(key)) continue
            seen.add(key)
            const found = yield* tier.backend.get(key)
            if (Option.isNone(found)) continue
            const entry = found.value
            if (!entry.tags.some((t) => tags.includes(t))) continue // the tag link was stale
            if (entry.staleUntil <= now) {
              yield* tier.backend.delete(key)
            } else if (entry.expiresAt > now) {
              yield* tier.backend.set(key, { ...entry, expiresAt: now })
            }
            affected++
          }
        }
        return affected
      })

    /**
     * Runs one invalidation on every target tier, lowest first. `operation` gives the tier's own
     * operation, or `undefined` when the tier lacks the capability: such a tier is skipped (reported)
     * or, for messages from other instances, cleared, since it cannot tell which entries are affected.
     */
    const invalidateIn = (
      targets: ReadonlyArray<TierRuntime>,
      whenUnsupported: "skip" | "clear",
      operation: (tier: TierRuntime, now: number) =>
        | readonly [name: string, effect: Effect.Effect<number, CacheError>]
        | undefined
    ) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        let affected = 0
        const skippedTiers: Array<string> = []
        for (let i = targets.length - 1; i >= 0; i--) {
          const tier = targets[i]!
          const op = operation(tier, now)
          if (op === undefined) {
            if (whenUnsupported === "clear") yield* guarded(tier, "clear", tier.backend.clear, now)
            else skippedTiers.push(tier.name)
            continue
          }
          const result = yield* guarded(tier, op[0], op[1], now)
          if (result === SKIPPED) skippedTiers.push(tier.name)
          else affected += result
        }
        supersedeAll() // which keys in-flight walks touch is unknown: none of them may promote
        return { affected, skippedTiers }
      })

    const invalidateTagsIn = (
      targets: ReadonlyArray<TierRuntime>,
      tags: ReadonlyArray<string>,
      mode: "delete" | "expire",
      whenUnsupported: "skip" | "clear"
    ) =>
      invalidateIn(targets, whenUnsupported, (tier, now) =>
        tier.backend.tags === undefined
          ? undefined
          : mode === "delete"
          ? ["deleteByTags", tier.backend.tags.deleteByTags(tags)]
          : ["expireTags", expireTagged(tier, tags, now)])

    const invalidatePatternIn = (
      targets: ReadonlyArray<TierRuntime>,
      pattern: string,
      whenUnsupported: "skip" | "clear"
    ) =>
      invalidateIn(targets, whenUnsupported, (tier) =>
        tier.backend.scan === undefined
          ? undefined
          : ["deletePattern", tier.backend.scan.deletePattern(pattern)])

    const invalidateTags = (
      tags: ReadonlyArray<string>,
      opts?: { readonly mode?: "delete" | "expire" | undefined }
    ): Effect.Effect<InvalidationReport, CacheError> => {
      const mode = opts?.mode ?? "delete"
      return invalidateTagsIn(tiers, tags, mode, "skip").pipe(
        Effect.tap(publishLogged({ _tag: "InvalidateTags", tags, mode }))
      )
    }

    const invalidatePattern = (pattern: string): Effect.Effect<InvalidationReport, CacheError> =>
      invalidatePatternIn(tiers, pattern, "skip").pipe(
        Effect.tap(publishLogged({ _tag: "InvalidatePattern", pattern }))
      )

    const supersedeAll = () => {
      for (const token of walks.values()) token.superseded = true
      walks.clear()
    }

    const clearTiers = (targets: ReadonlyArray<TierRuntime>) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        supersedeAll()
        let failure: CacheError | undefined
        for (let i = targets.length - 1; i >= 0; i--) {
          const tier = targets[i]!
          const result = yield* guarded(tier, "clear", tier.backend.clear, now)
          if (result === SKIPPED) failure ??= lastErrorOf(tier, "clear")
          tier.promotionHits.clear()
        }
        return failure
      })

    const clearWith = (broadcast: (m: Message) => Effect.Effect<void>): Effect.Effect<void, CacheError> =>
      Effect.flatMap(
        clearTiers(tiers),
        (failure) =>
          Effect.zipRight(broadcast({ _tag: "Clear" }), failure === undefined ? Effect.void : Effect.fail(failure))
      )

    const clearLocal: Effect.Effect<void> = Effect.asVoid(clearTiers(localTiers))

    const updateEverywhere = <E>(
      key: string,
      update: (current: Option.Option<CacheEntry>) => Effect.Effect<Option.Option<CacheEntry>, E>,
      setOptions?: SetOptions
    ): Effect.Effect<void, CacheError | E> =>
      get(key).pipe(
        Effect.flatMap(update),
        Effect.flatMap(Option.match({
          onNone: () => Effect.asVoid(invalidateWith(key, publishLogged)),
          onSome: (next) => setWithBroadcast(key, next, setOptions)
        }))
      )

    // -- the bus: other instances' changes reach the local tiers -----------------------------

    const applyRemote = (message: Message): Effect.Effect<unknown> => {
      switch (message._tag) {
        case "Invalidate":
        case "Update":
          return Effect.forEach(message.keys, (key) => deleteFrom(localTiers, key), { discard: true })
        case "InvalidateTags":
          return invalidateTagsIn(localTiers, message.tags, message.mode, "clear")
        case "InvalidatePattern":
          return invalidatePatternIn(localTiers, message.pattern, "clear")
        case "Clear":
          return clearLocal
      }
    }

    if (bus !== undefined && localTiers.length > 0) {
      const events = yield* bus.subscribe
      yield* events.pipe(
        Stream.runForEach((event) => {
          switch (event._tag) {
            case "Received":
              return applyRemote(event.message)
            case "Disconnected":
              return Effect.logWarning("tiered cache: invalidation bus disconnected")
            // Redis Pub/Sub (like any fire-and-forget bus) does not replay what was published while
            // we were away, so any local entry may be stale. Resynchronising would mean re-reading
            // every local entry from the shared tier (one round trip each, and it still cannot see
            // tag or pattern deletes); clearing the small, short-lived local tiers is exact and
            // they refill from the shared tier on the next reads.
            case "Reconnected":
            case "Overflow":
              return Effect.zipRight(
                Effect.logWarning(`tiered cache: bus ${event._tag.toLowerCase()}, clearing the local tiers`),
                clearLocal
              )
          }
        }),
        Effect.forkScoped
      )
    }

    // -- stats and metrics ------------------------------------------------------------------

    const flushMetrics = Effect.sync(() => {
      for (const tier of tiers) {
        for (const counter of COUNTER_NAMES) {
          const delta = tier.counters[counter] - tier.flushed[counter]
          if (delta > 0) {
            tier.counterMetrics[counter].unsafeUpdate(delta, [])
            tier.flushed[counter] = tier.counters[counter]
          }
        }
      }
    })
    // counters are plain numbers on the hot path and pushed to the Metric registry in batches
    yield* flushMetrics.pipe(Effect.repeat(Schedule.spaced("10 seconds")), Effect.forkScoped)
    yield* Effect.addFinalizer(() => flushMetrics)

    const stats: Effect.Effect<ReadonlyArray<TierStats>> = Effect.zipRight(
      flushMetrics,
      Effect.sync(() =>
        tiers.map((tier): TierStats => ({
          name: tier.name,
          ...tier.counters,
          breaker: tier.breaker?.state ?? "closed",
          breakerOpened: tier.breaker?.opened ?? 0
        }))
      )
    )

    const observeHits = (listener: HitListener): Effect.Effect<void, never, Scope.Scope> =>
      Effect.acquireRelease(
        Effect.sync(() => {
          listeners = [...listeners, listener]
        }),
        () => Effect.sync(() => {
          listeners = listeners.filter((l) => l !== listener)
        })
      )

    // -- the CacheBackend face --------------------------------------------------------------

    const health: Effect.Effect<Health> = Effect.gen(function*() {
      const started = yield* Clock.currentTimeMillis
      const all = yield* Effect.forEach(tiers, (t) => t.backend.health, { concurrency: "unbounded" })
      const latencyMillis = (yield* Clock.currentTimeMillis) - started
      const down = all.filter((h) => h.status === "down")
      const status = down.length === 0
        ? all.every((h) => h.status === "up") ? "up" : "degraded"
        : down.length === all.length
        ? "down"
        : "degraded"
      return {
        backend: name,
        status,
        latencyMillis,
        detail: all.map((h, i) => `${tiers[i]!.name}: ${h.status}`).join(", ")
      } satisfies Health
    })

    const lowestWith = <K extends "tags" | "scan">(capability: K) =>
      [...tiers].reverse().find((t) => t.backend[capability] !== undefined)?.backend[capability]

    const tagSource = lowestWith("tags")
    const scanSource = lowestWith("scan")
    const sizes = tiers.map((t) => t.maxEntrySize)

    const backend: CacheBackend = {
      name,
      get,
      set: (key, entry) => set(key, entry),
      delete: (key) => invalidateWith(key, publishQuietly),
      clear: clearWith(publishQuietly),
      health,
      tags: tagSource === undefined ? undefined : {
        deleteByTags: (tags) =>
          invalidateTagsIn(tiers, tags, "delete", "skip").pipe(
            Effect.tap(publishQuietly({ _tag: "InvalidateTags", tags, mode: "delete" })),
            Effect.map((r) => r.affected)
          ),
        keysForTag: tagSource.keysForTag,
        listTags: tagSource.listTags
      },
      scan: scanSource === undefined ? undefined : {
        keys: scanSource.keys,
        deletePattern: (pattern) =>
          invalidatePatternIn(tiers, pattern, "skip").pipe(
            Effect.tap(publishQuietly({ _tag: "InvalidatePattern", pattern })),
            Effect.map((r) => r.affected)
          )
      },
      maxEntrySize: sizes.every(Number.isFinite) ? Math.max(...sizes) : undefined,
      unsafeGetSync: getSync,
      unsafePeekSync: peekSync,
      unsafeSyncMissIsFinal: getSync === undefined ? undefined : false
    }

    return {
      backend,
      tierNames: tiers.map((t) => t.name),
      get,
      set,
      setWithBroadcast,
      updateEverywhere,
      invalidate: (key) => invalidateWith(key, publishLogged),
      invalidateTags,
      invalidatePattern,
      clear: clearWith(publishLogged),
      clearLocal,
      stats,
      observeHits
    } satisfies TieredCache
  })
