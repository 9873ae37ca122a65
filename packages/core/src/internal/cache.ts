/**
 * Machinery of `Cache`: option resolution, the read paths (a synchronous hot path for in-process
 * backends, an Effect path for the others), single-flight computes and stats.
 *
 * @internal
 */
import type { Scope } from "effect"
import type { Clock } from "effect"
import type { MetricHook } from "effect"
import {
  Cause,
  Deferred,
  Duration,
  Effect,
  Effectable,
  Exit,
  FiberId,
  FiberRef,
  Metric,
  MetricKey,
  Option,
  Scheduler,
  Utils
} from "effect"
import type * as CacheApi from "../Cache.js"
import { ComputeTimeout, TagsUnsupported } from "../Cache.js"
import type { CacheBackend } from "../CacheBackend.js"
import { DEFAULT_MAX_KEY_LENGTH, syncMissIsFinal } from "../CacheBackend.js"
import type { CacheEntry } from "../CacheEntry.js"
import type { CacheError } from "../CacheError.js"
import { EntryTooLarge, InvalidKey, InvalidTtl } from "../CacheError.js"
import type { Codec } from "../Codec.js"
import * as Codecs from "../Codec.js"
import * as metricKeys from "./cacheMetrics.js"

// ---------------------------------------------------------------------------------------------
// Options: resolved into plain millisecond numbers once per layer; per-call options only touch
// the fields they set.
// ---------------------------------------------------------------------------------------------

/** @internal */
export interface Resolved {
  readonly ttl: number
  readonly negativeTtl: number
  readonly grace: number
  readonly refreshAhead: number
  readonly softTimeout: number
  readonly hardTimeout: number
  readonly failSafe: boolean
  readonly maxStale: number
  readonly tags: ReadonlyArray<string>
}

const DEFAULTS: Resolved = {
  ttl: 5 * 60_000,
  negativeTtl: 0,
  grace: 0,
  refreshAhead: 0,
  softTimeout: Number.POSITIVE_INFINITY,
  hardTimeout: Number.POSITIVE_INFINITY,
  failSafe: false,
  maxStale: 60 * 60_000,
  tags: []
}

/** Negative numbers, NaN and unparsable strings are `InvalidTtl`; `Infinity` means "never". */
export const toMillis = (field: string, input: Duration.DurationInput): number | InvalidTtl => {
  const invalid = (reason: string) =>
    new InvalidTtl({ field, value: input, reason, message: `${field} ${String(input)} is not usable: ${reason}` })
  if (typeof input === "number") {
    if (Number.isNaN(input)) return invalid("NaN")
    if (input < 0) return invalid("negative")
    return input
  }
  if (typeof input === "bigint" && input < BigInt(0)) return invalid("negative")
  if (typeof input === "string" && input.trim().startsWith("-")) return invalid("negative")
  if (Array.isArray(input) && input.some((part) => Number(part) < 0 || Number.isNaN(Number(part)))) {
    return invalid("negative or NaN")
  }
  const decoded = Duration.decodeUnknown(input)
  if (Option.isNone(decoded)) return invalid("not a duration")
  return Duration.toMillis(decoded.value)
}

type DurationField = "ttl" | "negativeTtl" | "grace" | "refreshAhead" | "softTimeout" | "hardTimeout" | "maxStale"
const durationFields: ReadonlyArray<DurationField> = [
  "ttl",
  "negativeTtl",
  "grace",
  "refreshAhead",
  "softTimeout",
  "hardTimeout",
  "maxStale"
]

/** Merges the fields `options` sets over `base`; `base` itself when nothing is set. */
export const resolve = (base: Resolved, options: CacheApi.CacheOptions | undefined): Resolved | InvalidTtl => {
  if (options === undefined) return base
  let out: { -readonly [K in keyof Resolved]: Resolved[K] } | undefined
  for (let i = 0; i < durationFields.length; i++) {
    const field = durationFields[i]!
    const input = options[field]
    if (input === undefined) continue
    const millis = toMillis(field, input)
    if (typeof millis !== "number") return millis
    out ??= { ...base }
    out[field] = millis
  }
  if (options.failSafe !== undefined && options.failSafe !== base.failSafe) {
    out ??= { ...base }
    out.failSafe = options.failSafe
  }
  if (options.tags !== undefined) {
    out ??= { ...base }
    out.tags = options.tags
  }
  return out ?? base
}

/** Drops `None` fields of a parsed config. */
export const definedFields = <T extends Record<string, Option.Option<unknown>>>(
  config: T
): { readonly [K in keyof T]?: T[K] extends Option.Option<infer A> ? A : never } => {
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(config)) {
    const value = config[key]!
    if (Option.isSome(value)) out[key] = value.value
  }
  return out as { readonly [K in keyof T]?: T[K] extends Option.Option<infer A> ? A : never }
}

// ---------------------------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------------------------

type Counter =
  | "hits"
  | "misses"
  | "staleServed"
  | "computes"
  | "computeErrors"
  | "backgroundRefreshes"
  | "backendErrors"

const NO_LABELS: ReadonlyArray<never> = []

/** A plain counter mirrored into an effect counter whose `cache` label is part of its key (no per-update label work). */
class Count {
  value = 0
  /**
   * The registry's own counter for the key (what `Metric.fromMetricKey(key).unsafeUpdate` updates,
   * without its two lookups per call), so the metric stays exact and costs one call per count.
   */
  private readonly hook: MetricHook.MetricHook.Counter<number>
  constructor(key: MetricKey.MetricKey.Counter<number>, cacheName: string) {
    this.hook = Metric.globalMetricRegistry.get(MetricKey.tagged(key, "cache", cacheName))
  }
  inc(): void {
    this.value++
    this.hook.update(1)
  }
}

class Stats {
  readonly hits: Count
  readonly misses: Count
  readonly staleServed: Count
  readonly computes: Count
  readonly computeErrors: Count
  readonly backgroundRefreshes: Count
  readonly backendErrors: Count
  readonly evictions: Metric.Metric.Gauge<number>
  constructor(readonly name: string) {
    this.hits = new Count(metricKeys.hits, name)
    this.misses = new Count(metricKeys.misses, name)
    this.staleServed = new Count(metricKeys.staleServed, name)
    this.computes = new Count(metricKeys.computes, name)
    this.computeErrors = new Count(metricKeys.computeErrors, name)
    this.backgroundRefreshes = new Count(metricKeys.backgroundRefreshes, name)
    this.backendErrors = new Count(metricKeys.backendErrors, name)
    this.evictions = Metric.fromMetricKey(MetricKey.tagged(metricKeys.evictions, "cache", name))
  }
  bump(counter: Counter): void {
    this[counter].inc()
  }
}

// ---------------------------------------------------------------------------------------------
// The cache
// ---------------------------------------------------------------------------------------------

/** Meta key marking an entry that stores a compute failure (negative caching). */
export const FAILURE_META = "cachekit.failure"
const failureMeta = { [FAILURE_META]: "1" }
const isFailureEntry = (entry: CacheEntry): boolean => entry.meta !== undefined && entry.meta[FAILURE_META] === "1"

/** A decoded value remembered per entry object, with the effects a hit returns (no allocation on a hit). */
interface Memo<A> {
  readonly value: A
  readonly some: Effect.Effect<Option.Option<A>>
  readonly succeed: Effect.Effect<A>
}

const noneEffect: Effect.Effect<Option.Option<never>> = Effect.succeed(Option.none())

/**
 * An entry this cache built (`set`, a compute). Besides the `CacheEntry` fields it carries the
 * decoded value of one typed view (the first that remembers it) in private fields: not enumerable,
 * not copied by a spread, not serialized. A hit through that view then reads its value from the
 * entry instead of a `WeakMap` lookup (about a sixth of a hit's cost in bench/cache-hit). Entries
 * from elsewhere (a lower tier, a copy) and the other typed views use the per-view `WeakMap`.
 */
class OwnEntry implements CacheEntry {
  #owner: object | undefined = undefined
  #memo: Memo<unknown> | undefined = undefined
  constructor(
    readonly value: Uint8Array,
    readonly createdAt: number,
    readonly expiresAt: number,
    readonly staleUntil: number,
    readonly tags: ReadonlyArray<string>,
    readonly size: number,
    readonly meta: Readonly<Record<string, string>> | undefined
  ) {}
  /** The value `owner` remembered on `entry`, if `entry` is an `OwnEntry` that `owner` holds. */
  static memoOf(entry: CacheEntry, owner: object): Memo<unknown> | undefined {
    // A brand check (`#owner in`) is cheaper than `instanceof` here.
    return #owner in entry && (entry as OwnEntry).#owner === owner ? (entry as OwnEntry).#memo : undefined
  }
  /** Stores `m` for `owner` on `entry`; false when `entry` is not an `OwnEntry` or another view holds it. */
  static remember(entry: CacheEntry, owner: object, m: Memo<unknown>): boolean {
    if (!(#owner in entry)) return false
    const own = entry as OwnEntry
    if (own.#owner !== undefined && own.#owner !== owner) return false
    own.#owner = owner
    own.#memo = m
    return true
  }
}

/**
 * The effect `get` and `getOrCompute` return: the lookup runs when the effect runs (as with
 * `Effect.suspend`), and additionally when an `Effect.gen` generator reaches `yield*` on it, so a hit
 * hands the generator a ready `Exit` and skips a trip through the fiber's run loop. Either way the
 * read happens at execution time, never when the effect is built.
 *
 * For that `yield*` the object is its own iterator and its own `YieldWrap` (the generator hands the
 * object to the runtime, which asks it for the effect to run), so a hit allocates nothing besides
 * this object. A second `yield*` of the same object while the first is still suspended (a miss
 * awaited in another fiber) gets a fresh iterator instead.
 */
class Lookup<A, E, R, P1, P2, P3> {
  /** 1 between the iterator's first `next` (the lookup) and its second (the result). */
  private state = 0
  /** The effect the lookup returned, handed to the runtime through the `YieldWrap` protocol. */
  private pending: Effect.Effect<A, E, R> | undefined = undefined
  // The step and its arguments are fields (not a closure) so that building the effect is one
  // allocation; no `extends` (the Effect prototype is attached below) so construction is plain.
  constructor(
    readonly step: (key: string, p1: P1, p2: P2, p3: P3) => Effect.Effect<A, E, R>,
    readonly key: string,
    readonly p1: P1,
    readonly p2: P2,
    readonly p3: P3
  ) {}
  commit(): Effect.Effect<A, E, R> {
    return this.step(this.key, this.p1, this.p2, this.p3)
  }
  [Symbol.iterator](): Effect.EffectGenerator<Effect.Effect<A, E, R>> {
    if (this.state !== 0) {
      return new Utils.SingleShotGen(new Utils.YieldWrap(this.step(this.key, this.p1, this.p2, this.p3)))
    }
    return this as unknown as Effect.EffectGenerator<Effect.Effect<A, E, R>>
  }
  next(value: unknown): IteratorResult<unknown> {
    if (this.state === 0) {
      this.pending = this.step(this.key, this.p1, this.p2, this.p3)
      this.state = 1
      return { value: this, done: false }
    }
    this.state = 0
    this.pending = undefined
    return { value, done: true }
  }
  return(value: unknown): IteratorResult<unknown> {
    this.state = 0
    this.pending = undefined
    return { value, done: true }
  }
  throw(error: unknown): never {
    this.state = 0
    this.pending = undefined
    throw error
  }
  [Utils.YieldWrapTypeId](): Effect.Effect<A, E, R> {
    return this.pending!
  }
}
Object.setPrototypeOf(Lookup.prototype, Effectable.CommitPrototype)

const lookup = <A, E, R, P1, P2, P3>(
  step: (key: string, p1: P1, p2: P2, p3: P3) => Effect.Effect<A, E, R>,
  key: string,
  p1: P1,
  p2: P2,
  p3: P3
): Effect.Effect<A, E, R> => new Lookup(step, key, p1, p2, p3) as unknown as Effect.Effect<A, E, R>

/** Runs a fiber's start synchronously, in the forking fiber's turn (see `startCompute`). */
const startAtOnce = Scheduler.make((task) => task())

type Waiter = Deferred.Deferred<unknown, unknown>

/** @internal */
export const make = (
  backend: CacheBackend,
  options: CacheApi.CacheLayerOptions,
  scope: Scope.Scope
): Effect.Effect<CacheApi.Cache, InvalidTtl> =>
  // The Clock of the layer's context is captured once: a hit then reads the time without looking
  // up a service (TestClock still drives it when the layer is built under it).
  Effect.clockWith((clock) => {
    const defaults = resolve(DEFAULTS, options)
    if (!isResolved(defaults)) return Effect.fail(defaults)
    const name = options.name ?? "default"
    const maxKeyLength = options.maxKeyLength ?? DEFAULT_MAX_KEY_LENGTH
    const maxEntrySize = options.maxEntrySize ?? backend.maxEntrySize ?? Number.POSITIVE_INFINITY
    const stats = new Stats(name)
    // Single-flight: one Deferred per key being computed, shared by every typed view of this cache.
    const inflight = new Map<string, Waiter>()
    const syncGet = backend.unsafeGetSync
    // a tiered backend's sync read answers from its L1 only: its `undefined` sends the read to `get`
    const syncFinal = syncMissIsFinal(backend)
    const core: Core = {
      backend,
      clock,
      defaults,
      maxKeyLength,
      maxEntrySize,
      stats,
      inflight,
      syncGet,
      syncFinal,
      scope
    }
    const bytesView = makeTyped(core, Codecs.bytes)
    const cache: CacheApi.Cache = {
      ...bytesView,
      name,
      typed: (schema) => makeTyped(core, Codecs.schema(schema)),
      withCodec: (codec) => makeTyped(core, codec),
      invalidateTags: (tags) =>
        backend.tags === undefined
          ? Effect.fail(
            new TagsUnsupported({
              backend: backend.name,
              message: `backend ${backend.name} has no tag index, so tags cannot be invalidated`
            })
          )
          : backend.tags.deleteByTags(tags),
      clear: backend.clear,
      stats: Effect.map(backend.stats ?? Effect.succeed(undefined), (backendStats) => {
        if (backendStats !== undefined) stats.evictions.unsafeUpdate(backendStats.evictions, NO_LABELS)
        return {
          name,
          hits: stats.hits.value,
          misses: stats.misses.value,
          staleServed: stats.staleServed.value,
          computes: stats.computes.value,
          computeErrors: stats.computeErrors.value,
          backgroundRefreshes: stats.backgroundRefreshes.value,
          backendErrors: stats.backendErrors.value,
          evictions: backendStats?.evictions
        }
      })
    }
    return Effect.succeed(cache)
  })

const isResolved = (r: Resolved | InvalidTtl): r is Resolved => !(r instanceof InvalidTtl)

interface Core {
  readonly backend: CacheBackend
  readonly clock: Clock.Clock
  readonly defaults: Resolved
  readonly maxKeyLength: number
  readonly maxEntrySize: number
  readonly stats: Stats
  readonly inflight: Map<string, Waiter>
  readonly syncGet: ((key: string, now: number) => CacheEntry | undefined) | undefined
  /** Whether `syncGet`'s `undefined` is a final miss (else ask `backend.get`). */
  readonly syncFinal: boolean
  readonly scope: Scope.Scope
}

const makeTyped = <A>(core: Core, codec: Codec<A>): CacheApi.TypedCache<A> => {
  const { backend, clock, defaults, inflight, maxEntrySize, maxKeyLength, scope, stats, syncFinal, syncGet } = core
  // Decoded values of entries not built here (or held by another view); also this view's identity
  // for `OwnEntry`'s slot.
  const memo = new WeakMap<CacheEntry, Memo<A>>()
  const memoOf = (entry: CacheEntry): Memo<A> | undefined =>
    (OwnEntry.memoOf(entry, memo) as Memo<A> | undefined) ?? memo.get(entry)

  const remember = (entry: CacheEntry, value: A): Memo<A> => {
    const m: Memo<A> = { value, some: Effect.succeed(Option.some(value)), succeed: Effect.succeed(value) }
    if (!OwnEntry.remember(entry, memo, m)) memo.set(entry, m)
    return m
  }

  const badKey = (key: string): InvalidKey | undefined => {
    if (typeof key !== "string" || key.length === 0) {
      return new InvalidKey({ key: String(key), reason: "empty", message: "cache keys must not be empty" })
    }
    if (key.length > maxKeyLength) {
      return new InvalidKey({
        key: key.slice(0, 64),
        reason: "too long",
        message: `cache key of ${key.length} characters is longer than the limit of ${maxKeyLength}`
      })
    }
    return undefined
  }

  const deleteQuietly = (key: string) =>
    Effect.catchAll(backend.delete(key), () => Effect.sync(() => stats.bump("backendErrors")))

  /** Decodes an entry's value once per entry object; an undecodable entry is deleted and is `undefined`. */
  const decodeEntry = (key: string, entry: CacheEntry): Effect.Effect<Memo<A> | undefined> =>
    Effect.matchEffect(codec.decode(key, entry.value), {
      onFailure: () => Effect.as(deleteQuietly(key), undefined),
      onSuccess: (value) => Effect.succeed(remember(entry, value))
    })

  const makeEntry = (
    value: Uint8Array,
    now: number,
    ttl: number,
    keepStale: number,
    tags: ReadonlyArray<string>,
    meta?: Readonly<Record<string, string>>
  ): CacheEntry => {
    const expiresAt = now + ttl
    return new OwnEntry(value, now, expiresAt, expiresAt + keepStale, tags, value.byteLength, meta)
  }

  const keepStaleFor = (r: Resolved) => Math.max(r.grace, r.failSafe || Number.isFinite(r.softTimeout) ? r.maxStale : 0)

  const checkSize = (key: string, bytes: Uint8Array): EntryTooLarge | undefined =>
    bytes.byteLength > maxEntrySize
      ? new EntryTooLarge({
        key,
        size: bytes.byteLength,
        maxSize: maxEntrySize,
        message: `value for "${key}" has ${bytes.byteLength} bytes, more than the limit of ${maxEntrySize}`
      })
      : undefined

  // ---- get ----------------------------------------------------------------------------------

  const onEntryForGet = (
    key: string,
    entry: CacheEntry | undefined,
    now: number,
    allowStale: boolean
  ): Effect.Effect<Option.Option<A>> => {
    if (entry === undefined || now >= entry.staleUntil || isFailureEntry(entry)) {
      stats.misses.inc()
      return noneEffect
    }
    const stale = now >= entry.expiresAt
    if (!stale) {
      const m = memoOf(entry)
      if (m !== undefined) {
        stats.hits.inc()
        return m.some
      }
    } else if (!allowStale) {
      stats.misses.inc()
      return noneEffect
    }
    const served: Counter = stale ? "staleServed" : "hits"
    const m = memoOf(entry)
    if (m !== undefined) {
      stats.bump(served)
      return m.some
    }
    return Effect.map(decodeEntry(key, entry), (decoded) => {
      stats.bump(decoded === undefined ? "misses" : served)
      return decoded === undefined ? Option.none() : Option.some(decoded.value)
    })
  }

  /** The hot path of an in-process backend: one Clock read, one synchronous lookup. */
  const readSync = (key: string, allowStale: boolean): Effect.Effect<Option.Option<A>, CacheError> => {
    const now = clock.unsafeCurrentTimeMillis()
    const entry = syncGet!(key, now)
    if (entry === undefined && !syncFinal) return readAsync(key, allowStale)
    // The common case inline: a fresh, already decoded value.
    if (entry !== undefined && now < entry.expiresAt && entry.meta === undefined) {
      const m = memoOf(entry)
      if (m !== undefined) {
        stats.hits.inc()
        return m.some
      }
    }
    return onEntryForGet(key, entry, now, allowStale)
  }

  const get = (key: string, options?: CacheApi.GetOptions): Effect.Effect<Option.Option<A>, CacheError> => {
    if (typeof key !== "string" || key.length === 0 || key.length > maxKeyLength) return Effect.fail(badKey(key)!)
    const allowStale = options !== undefined && options.allowStale === true
    if (syncGet !== undefined) {
      return lookup(readSync, key, allowStale, undefined, undefined)
    }
    return Effect.suspend(() => readAsync(key, allowStale))
  }

  const readAsync = (key: string, allowStale: boolean): Effect.Effect<Option.Option<A>, CacheError> =>
    Effect.flatMap(
      backend.get(key),
      (found) => onEntryForGet(key, Option.getOrUndefined(found), clock.unsafeCurrentTimeMillis(), allowStale)
    )

  // ---- set / delete -------------------------------------------------------------------------

  const set = (key: string, value: A, options?: CacheApi.CacheOptions): Effect.Effect<void, CacheError> => {
    const invalid = badKey(key)
    if (invalid !== undefined) return Effect.fail(invalid)
    const r = resolve(defaults, options)
    if (!isResolved(r)) return Effect.fail(r)
    return Effect.flatMap(codec.encode(key, value), (bytes) => {
      const tooLarge = checkSize(key, bytes)
      if (tooLarge !== undefined) return Effect.fail(tooLarge)
      return Effect.suspend(() => {
        const entry = makeEntry(bytes, clock.unsafeCurrentTimeMillis(), r.ttl, keepStaleFor(r), r.tags)
        return Effect.map(backend.set(key, entry), () => {
          remember(entry, value)
        })
      })
    })
  }

  const del = (key: string): Effect.Effect<boolean, CacheError> => {
    const invalid = badKey(key)
    return invalid !== undefined ? Effect.fail(invalid) : backend.delete(key)
  }

  // ---- getOrCompute -------------------------------------------------------------------------

  /**
   * The compute of one key, run in the cache's scope (not the caller's): its result completes the
   * Deferred every waiter awaits; it then stores the value (a failing store is absorbed) and leaves
   * the in-flight map whatever happens, so no key is ever stuck.
   *
   * With `awaited` (a caller waits for it) the worker starts inside this call, up to its first
   * asynchronous step (the compute's timer or I/O begins at once), instead of queueing behind every
   * fiber the scheduler already has: in a stampede those are the other callers, and the compute
   * would begin only after all of them had started. A background refresh starts the usual way, so
   * a reader served stale never runs any of the compute itself.
   */
  const startCompute = <E, R>(
    key: string,
    compute: Effect.Effect<A, E, R>,
    r: Resolved,
    options: CacheApi.ComputeOptions<A, E> | undefined,
    hasFallback: boolean,
    awaited: boolean
  ): Effect.Effect<Deferred.Deferred<A, E | ComputeTimeout | CacheApi.InputError>, never, R> =>
    // Uninterruptible from registering the Deferred to forking the worker: an interruption in
    // between would leave a Deferred nobody completes, and every later caller of the key stuck on it.
    Effect.uninterruptible(Effect.suspend(() => {
      const existing = inflight.get(key)
      if (existing !== undefined) {
        return Effect.succeed(existing as Deferred.Deferred<A, E | ComputeTimeout | CacheApi.InputError>)
      }
      const deferred = Deferred.unsafeMake<A, E | ComputeTimeout | CacheApi.InputError>(FiberId.none)
      inflight.set(key, deferred as Waiter)
      stats.bump("computes")
      const timed: Effect.Effect<A, E | ComputeTimeout, R> = Number.isFinite(r.hardTimeout)
        ? Effect.timeoutFail(compute, {
          duration: r.hardTimeout,
          onTimeout: () =>
            new ComputeTimeout({
              key,
              timeoutMillis: r.hardTimeout,
              message: `compute of "${key}" took longer than its hard timeout of ${r.hardTimeout} ms`
            })
        })
        : compute
      const worker = Effect.exit(timed).pipe(
        Effect.flatMap((exit) =>
          Exit.isSuccess(exit)
            ? storeValue(key, exit.value, r, options, deferred)
            : storeFailure(key, exit.cause, r, options, hasFallback, deferred)
        ),
        Effect.ensuring(Effect.suspend(() => {
          if (inflight.get(key) === deferred) inflight.delete(key)
          return Deferred.interrupt(deferred)
        }))
      )
      // The worker itself stays interruptible (hard timeout, scope close), whatever the flags here.
      if (!awaited) return Effect.as(Effect.forkIn(Effect.interruptible(worker), scope), deferred)
      // Forked under a scheduler that runs the start at once; the worker then goes back to the
      // caller's scheduler for everything after its first step.
      return Effect.flatMap(FiberRef.get(FiberRef.currentScheduler), (scheduler) =>
        Effect.as(
          Effect.withScheduler(
            Effect.forkIn(Effect.interruptible(Effect.withScheduler(worker, scheduler)), scope),
            startAtOnce
          ),
          deferred
        ))
    }))

  const storeValue = <E>(
    key: string,
    value: A,
    r: Resolved,
    options: CacheApi.ComputeOptions<A, E> | undefined,
    deferred: Deferred.Deferred<A, E | ComputeTimeout | CacheApi.InputError>
  ): Effect.Effect<void> =>
    Effect.matchEffect(codec.encode(key, value), {
      onFailure: (error) => Effect.asVoid(Deferred.fail(deferred, error)),
      onSuccess: (bytes): Effect.Effect<void> => {
        const tooLarge = checkSize(key, bytes)
        if (tooLarge !== undefined) return Effect.asVoid(Deferred.fail(deferred, tooLarge))
        const empty = options?.isEmpty !== undefined && r.negativeTtl > 0 && options.isEmpty(value)
        // Store first, then release the waiters: a caller that invalidates the key right after getting
        // its value must not be overtaken by this write (which would bring the old value back).
        return Effect.zipRight(
          Effect.suspend(() => {
            const entry = empty
              ? makeEntry(bytes, clock.unsafeCurrentTimeMillis(), r.negativeTtl, 0, r.tags)
              : makeEntry(bytes, clock.unsafeCurrentTimeMillis(), r.ttl, keepStaleFor(r), r.tags)
            return Effect.matchEffect(backend.set(key, entry), {
              onFailure: () => Effect.sync(() => stats.bump("backendErrors")),
              onSuccess: () => Effect.sync(() => void remember(entry, value))
            })
          }),
          Deferred.succeed(deferred, value)
        )
      }
    })

  const storeFailure = <E>(
    key: string,
    cause: Cause.Cause<E | ComputeTimeout>,
    r: Resolved,
    options: CacheApi.ComputeOptions<A, E> | undefined,
    hasFallback: boolean,
    deferred: Deferred.Deferred<A, E | ComputeTimeout | CacheApi.InputError>
  ): Effect.Effect<void> => {
    stats.bump("computeErrors")
    const release = Deferred.failCause(deferred, cause)
    const failure = Cause.failureOption(cause)
    const errorCodec = options?.errorCodec
    // Negative caching of failures: only the compute's own typed failure, only when asked for, and
    // never over a stale value that fail-safe could still serve.
    if (
      r.negativeTtl <= 0 || errorCodec === undefined || Option.isNone(failure) ||
      failure.value instanceof ComputeTimeout || (hasFallback && r.failSafe)
    ) {
      return Effect.asVoid(release)
    }
    const error = failure.value as E
    return Effect.zipRight(
      release,
      Effect.matchEffect(errorCodec.encode(key, error), {
        onFailure: () => Effect.void,
        onSuccess: (bytes) =>
          Effect.suspend(() =>
            Effect.catchAll(
              backend.set(
                key,
                makeEntry(bytes, clock.unsafeCurrentTimeMillis(), r.negativeTtl, 0, r.tags, failureMeta)
              ),
              () => Effect.sync(() => stats.bump("backendErrors"))
            )
          )
      })
    )
  }

  /** Waits for the key's compute (joining one in flight); with a stale fallback, honours soft timeout and fail-safe. */
  const awaitCompute = <E, R>(
    key: string,
    compute: Effect.Effect<A, E, R>,
    r: Resolved,
    options: CacheApi.ComputeOptions<A, E> | undefined,
    fallback: Memo<A> | undefined
  ): Effect.Effect<A, E | ComputeTimeout | CacheApi.InputError, R> => {
    // Called at execution time: a caller that finds the key in flight just awaits it.
    const existing = inflight.get(key) as Deferred.Deferred<A, E | ComputeTimeout | CacheApi.InputError> | undefined
    if (existing !== undefined) return waitFor(existing, r, fallback)
    return Effect.flatMap(
      startCompute(key, compute, r, options, fallback !== undefined, true),
      (deferred) => waitFor(deferred, r, fallback)
    )
  }

  const waitFor = <E>(
    deferred: Deferred.Deferred<A, E>,
    r: Resolved,
    fallback: Memo<A> | undefined
  ): Effect.Effect<A, E> => {
    const wait = Deferred.await(deferred)
    if (fallback === undefined) return wait
    const serveStale = Effect.suspend(() => {
      stats.bump("staleServed")
      return fallback.succeed
    })
    const soft = Number.isFinite(r.softTimeout)
      ? Effect.flatMap(
        Effect.timeoutOption(wait, r.softTimeout),
        (result) => Option.isSome(result) ? Effect.succeed(result.value) : serveStale
      )
      : wait
    return r.failSafe ? Effect.catchAll(soft, () => serveStale) : soft
  }

  const refreshInBackground = <E, R>(
    key: string,
    compute: Effect.Effect<A, E, R>,
    r: Resolved,
    options: CacheApi.ComputeOptions<A, E> | undefined
  ): Effect.Effect<void, never, R> => {
    if (inflight.has(key)) return Effect.void
    stats.bump("backgroundRefreshes")
    return Effect.asVoid(startCompute(key, compute, r, options, true, false))
  }

  const onEntryForCompute = <E, R>(
    key: string,
    entry: CacheEntry | undefined,
    now: number,
    compute: Effect.Effect<A, E, R>,
    r: Resolved,
    options: CacheApi.ComputeOptions<A, E> | undefined
  ): Effect.Effect<A, E | ComputeTimeout | CacheApi.InputError, R> => {
    if (entry === undefined || now >= entry.staleUntil) {
      stats.bump("misses")
      return awaitCompute(key, compute, r, options, undefined)
    }
    if (isFailureEntry(entry)) {
      const errorCodec = options?.errorCodec
      if (errorCodec === undefined || now >= entry.expiresAt) {
        stats.bump("misses")
        return awaitCompute(key, compute, r, options, undefined)
      }
      return Effect.matchEffect(errorCodec.decode(key, entry.value), {
        onFailure: () =>
          Effect.zipRight(
            deleteQuietly(key),
            Effect.suspend(() => {
              stats.bump("misses")
              return awaitCompute(key, compute, r, options, undefined)
            })
          ),
        onSuccess: (error) => {
          stats.bump("hits")
          return Effect.fail(error)
        }
      })
    }
    const m = memoOf(entry)
    if (m !== undefined) return onDecoded(key, entry, m, now, compute, r, options)
    return Effect.flatMap(decodeEntry(key, entry), (decoded) => {
      if (decoded !== undefined) return onDecoded(key, entry, decoded, now, compute, r, options)
      stats.bump("misses")
      return awaitCompute(key, compute, r, options, undefined)
    })
  }

  const onDecoded = <E, R>(
    key: string,
    entry: CacheEntry,
    m: Memo<A>,
    now: number,
    compute: Effect.Effect<A, E, R>,
    r: Resolved,
    options: CacheApi.ComputeOptions<A, E> | undefined
  ): Effect.Effect<A, E | ComputeTimeout | CacheApi.InputError, R> => {
    if (now < entry.expiresAt) {
      stats.hits.inc()
      if (r.refreshAhead > 0 && now >= entry.expiresAt - r.refreshAhead && !inflight.has(key)) {
        return Effect.zipRight(refreshInBackground(key, compute, r, options), m.succeed)
      }
      return m.succeed
    }
    if (now < entry.expiresAt + r.grace) {
      // Stale-while-revalidate: this reader never waits for the refresh.
      stats.bump("staleServed")
      return Effect.zipRight(refreshInBackground(key, compute, r, options), m.succeed)
    }
    // Past the grace window but still kept for fail-safe / soft timeout: a fresh value is needed.
    stats.bump("misses")
    return awaitCompute(key, compute, r, options, m)
  }

  const readOrComputeSync = <E, R>(
    key: string,
    compute: Effect.Effect<A, E, R>,
    r: Resolved,
    options: CacheApi.ComputeOptions<A, E> | undefined
  ): Effect.Effect<A, E | ComputeTimeout | CacheApi.InputError, R> => {
    const now = clock.unsafeCurrentTimeMillis()
    const entry = syncGet!(key, now)
    if (entry === undefined && !syncFinal) return readOrComputeAsync(key, compute, r, options)
    // The common case inline: a fresh, already decoded value outside the refresh-ahead window.
    if (entry !== undefined && now < entry.expiresAt - r.refreshAhead && entry.meta === undefined) {
      const m = memoOf(entry)
      if (m !== undefined) {
        stats.hits.inc()
        return m.succeed
      }
    }
    return onEntryForCompute(key, entry, now, compute, r, options)
  }

  const getOrCompute = <E, R>(
    key: string,
    compute: Effect.Effect<A, E, R>,
    options?: CacheApi.ComputeOptions<A, E>
  ): Effect.Effect<A, E | ComputeTimeout | CacheApi.InputError, R> => {
    if (typeof key !== "string" || key.length === 0 || key.length > maxKeyLength) return Effect.fail(badKey(key)!)
    // No options (the common call) means the layer's defaults, already resolved.
    const r = options === undefined ? defaults : resolve(defaults, options)
    if (!isResolved(r)) return Effect.fail(r)
    if (syncGet !== undefined) {
      return lookup(readOrComputeSync<E, R>, key, compute, r, options)
    }
    return Effect.suspend(() => readOrComputeAsync(key, compute, r, options))
  }

  const readOrComputeAsync = <E, R>(
    key: string,
    compute: Effect.Effect<A, E, R>,
    r: Resolved,
    options: CacheApi.ComputeOptions<A, E> | undefined
  ): Effect.Effect<A, E | ComputeTimeout | CacheApi.InputError, R> =>
    Effect.matchEffect(backend.get(key), {
      // A backend that is down falls back to the compute (single-flight still applies).
      onFailure: () =>
        Effect.suspend(() => {
          stats.bump("backendErrors")
          stats.bump("misses")
          return awaitCompute(key, compute, r, options, undefined)
        }),
      onSuccess: (found) =>
        onEntryForCompute(key, Option.getOrUndefined(found), clock.unsafeCurrentTimeMillis(), compute, r, options)
    })

  return { get, set, delete: del, getOrCompute }
}
