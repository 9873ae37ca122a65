/**
 * The machinery of `HttpClientCache`: lookup, storing tee, coalescing, revalidation.
 *
 * Storage layout in the backend:
 * - a response without Vary is stored under its primary key;
 * - a response with Vary stores a small index entry under the primary key (the Vary header
 *   names and a generation nonce) and the response under `primary \0 nonce \0 values`. Deleting the
 *   index (invalidation) makes every variant of that generation unreachable at once.
 *
 * Coalescing: the first miss for a primary key leads; concurrent requests for the same key wait
 * for the leader's entry to be stored, then read it from the backend (a hit, `collapsed`). If the
 * leader stores nothing (the caller stopped reading, the upstream failed) they retry once, one of
 * them leading; if the response is not storable they go upstream themselves.
 *
 * Across processes (option `distributedSingleFlight`): the leader of a miss asks the gate before
 * going upstream. When another process holds the key, the leader waits for its outcome and, if it
 * stored the response, reads the shared backend again through the normal lookup (so Vary and the
 * `Authorization` rules apply as to any hit); otherwise, or when that read misses, it fetches
 * itself. Only the outcome crosses processes, never a response. A key whose fetch was not storable
 * skips the gate for `uncacheableTtl` (a small bounded map), so concurrent misses of a `no-store`
 * URL in several processes go upstream side by side instead of queueing behind each other's fetch.
 *
 * @internal
 */
import { CacheBackend as Backend } from "@cachekit/core"
import type { CacheEntry, CacheError } from "@cachekit/core"
import { Headers as PlatformHeaders, HttpClient, HttpClientRequest, UrlParams } from "@effect/platform"
import type { HttpClientResponse } from "@effect/platform"
import type { HttpClientError } from "@effect/platform"
import { Clock, Deferred, Duration, Effect, Either, Exit, Fiber, FiberId, Option, Stream } from "effect"
import type { Scope } from "effect"
import * as Policy from "../HttpCachePolicy.js"
import type { DistributedSingleFlight, Options } from "../HttpClientCache.js"
import { type EntryTemplate, makeWriter, tee, type Written } from "./bodyStore.js"
import { type Body, storedBody, StreamResponse } from "./clientResponse.js"

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

export interface Resolved {
  readonly name: string
  readonly key: (request: Policy.RequestSnapshot) => string
  readonly mode: Options["mode"]
  readonly bust: Options["bust"]
  readonly responseMode: Options["responseMode"]
  readonly maxTtlMillis: number | undefined
  readonly cacheStatus: boolean
  readonly xCache: boolean
  readonly maxBodySize: number
  readonly policy: Policy.PolicyOptions
  readonly coalesceTimeout: Duration.Duration
  readonly staleRetentionMillis: number
  readonly distributedSingleFlight: DistributedSingleFlight | undefined
  readonly uncacheableTtlMillis: number
}

const defaultKey = (request: Policy.RequestSnapshot): string => `${request.method} ${request.url}`

export const resolveOptions = (options: Options): Resolved => {
  const maxTtlMillis = options.maxTtl === undefined ? undefined : Duration.toMillis(options.maxTtl)
  return {
    name: options.name ?? "cachekit",
    key: options.key ?? defaultKey,
    mode: options.mode,
    bust: options.bust,
    responseMode: options.responseMode,
    maxTtlMillis,
    cacheStatus: options.cacheStatus ?? true,
    xCache: options.xCache ?? false,
    maxBodySize: options.maxBodySize ?? 16 * 1024 * 1024,
    policy: {
      shared: options.shared ?? false,
      ...(options.heuristicFraction === undefined ? {} : { heuristicFraction: options.heuristicFraction }),
      ...(maxTtlMillis === undefined ? {} : { maxTtlMillis }),
      ...(options.targetedCacheControl === undefined ? {} : { targetedCacheControl: options.targetedCacheControl })
    },
    coalesceTimeout: Duration.decode(options.coalesceTimeout ?? "30 seconds"),
    staleRetentionMillis: Duration.toMillis(options.staleRetention ?? "1 hour"),
    distributedSingleFlight: options.distributedSingleFlight,
    uncacheableTtlMillis: Duration.toMillis(options.uncacheableTtl ?? "10 seconds")
  }
}

// ---------------------------------------------------------------------------------------------
// Stored entries
// ---------------------------------------------------------------------------------------------

const META_POLICY = "http.policy"
const META_VARY = "http.vary"
const META_NONCE = "http.nonce"
/** Set on entries stored under an `ignore-rules` response-mode override: they are served as such. */
const META_MODE = "http.mode"

/** Decoded policies by entry object: an in-process backend hands back the same object on every hit. */
const policyCache = new WeakMap<CacheEntry.CacheEntry, Policy.StoredPolicy>()

const policyOf = (entry: CacheEntry.CacheEntry): Policy.StoredPolicy | undefined => {
  const cached = policyCache.get(entry)
  if (cached !== undefined) return cached
  const json = entry.meta?.[META_POLICY]
  if (json === undefined) return undefined
  const decoded = Policy.decodeStoredPolicy(json)
  if (decoded !== undefined) policyCache.set(entry, decoded)
  return decoded
}

/** RFC 9111 §4.1 secondary key: the primary key, the index generation, the request's Vary values. */
const variantKey = (primary: string, nonce: string, vary: string, request: Policy.RequestSnapshot) =>
  `${primary}\u0000${nonce}\u0000${Policy.varyKey(vary, request)}`

interface Found {
  readonly storageKey: string
  readonly entry: CacheEntry.CacheEntry
  readonly policy: Policy.StoredPolicy
  readonly body: Body
}

type LookupResult =
  | { readonly _tag: "Found"; readonly found: Found }
  | { readonly _tag: "Miss"; readonly fwd: "uri-miss" | "vary-miss" }

const uriMiss: LookupResult = { _tag: "Miss", fwd: "uri-miss" }
const varyMiss: LookupResult = { _tag: "Miss", fwd: "vary-miss" }

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

type Outcome = "stored" | "abandoned" | "uncacheable"

/** A body too large for the backend is as good as uncacheable: followers go upstream at once. */
const outcomeOf = (written: Written): Outcome =>
  written === "stored" ? "stored" : written === "too-large" ? "uncacheable" : "abandoned"

/** Most keys remembered as not storable (the least recently marked is forgotten first). */
const UNCACHEABLE_KEYS_MAX = 10_000

interface Inflight {
  readonly done: Deferred.Deferred<Outcome>
}

/** What the leader of a gated miss learns first: its own fetch's response, or another process's outcome. */
type Handed =
  | {
    readonly _tag: "Here"
    readonly exit: Exit.Exit<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>
  }
  | { readonly _tag: "Elsewhere"; readonly outcome: Outcome }

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS", "TRACE"])
const CACHEABLE_METHODS = new Set(["GET", "HEAD"])

type Fwd = "uri-miss" | "vary-miss" | "miss" | "request" | "stale"

type XCache = "HIT" | "MISS" | "STALE" | "REVALIDATED" | "BYPASS"

export const make = (
  options: Resolved,
  client: HttpClient.HttpClient
): Effect.Effect<HttpClient.HttpClient, never, Backend.CacheBackendTag | Scope.Scope> =>
  Effect.gen(function*() {
    const backend = yield* Backend.CacheBackendTag
    const syncFinal = Backend.syncMissIsFinal(backend)
    const scope = yield* Effect.scope
    const inflight = new Map<string, Inflight>()
    const refreshing = new Set<string>()
    // Primary keys whose last gated fetch was not storable -> until when they skip the gate.
    // Insertion order is the order of marking: the first key is the one to forget when full.
    const uncacheableUntil = new Map<string, number>()
    const policyOptions = options.policy

    // -- backend access (backend failures are misses: the cache never breaks the client) --------

    const readEntry = (key: string, now: number): Effect.Effect<
      Option.Option<{
        readonly entry: CacheEntry.CacheEntry
        readonly body: Body
      }>
    > => {
      if (backend.unsafeGetSync !== undefined) {
        const entry = backend.unsafeGetSync(key, now)
        if (entry !== undefined) return Effect.succeed(Option.some({ entry, body: entry.value }))
        // a tiered backend's sync read is its L1 only: a lower tier may still have the key
        if (syncFinal) return Effect.succeed(Option.none())
      }
      const read: Effect.Effect<
        Option.Option<{ readonly entry: CacheEntry.CacheEntry; readonly body: Body }>,
        CacheError.CacheError
      > = backend.streaming !== undefined
        ? Effect.map(backend.streaming.getStream(key), Option.map((s) => ({ entry: s.entry, body: storedBody(s) })))
        : Effect.map(backend.get(key), Option.map((entry) => ({ entry, body: entry.value })))
      return read.pipe(
        Effect.catchAll((error) =>
          Effect.logWarning("cachekit http: backend read failed, treating as a miss", error).pipe(
            Effect.as(Option.none())
          )
        )
      )
    }

    const deleteKey = (key: string) =>
      backend.delete(key).pipe(
        Effect.catchAll((error) => Effect.logWarning("cachekit http: backend delete failed", error)),
        Effect.asVoid
      )

    const lookupEntry = (primary: string, request: Policy.RequestSnapshot, now: number) =>
      Effect.gen(function*() {
        const first = yield* readEntry(primary, now)
        if (Option.isNone(first)) return uriMiss
        let storageKey = primary
        let read = first.value
        const vary = read.entry.meta?.[META_VARY]
        if (vary !== undefined) {
          storageKey = variantKey(primary, read.entry.meta?.[META_NONCE] ?? "", vary, request)
          const variant = yield* readEntry(storageKey, now)
          if (Option.isNone(variant)) return varyMiss
          read = variant.value
        }
        const policy = policyOf(read.entry)
        if (policy === undefined) return uriMiss
        if (!Policy.varyMatches(policy, request)) return varyMiss
        return { _tag: "Found", found: { storageKey, entry: read.entry, policy, body: read.body } } as LookupResult
      })

    /**
     * Entry times: fresh until the policy's freshness lifetime ends (RFC 9111 §4.2), kept while it
     * can still be served stale or revalidated (`Policy.retainUntil`, at least `staleRetention`
     * past expiry when it has a validator). `ignore-rules` entries live `maxTtl` (or `staleRetention`).
     */
    const templateFor = (policy: Policy.StoredPolicy, now: number, ignoreRules: boolean): EntryTemplate => {
      const meta: Record<string, string> = { [META_POLICY]: Policy.encodeStoredPolicy(policy) }
      if (ignoreRules) {
        const until = now + (options.maxTtlMillis ?? options.staleRetentionMillis)
        meta[META_MODE] = "ignore-rules"
        return { createdAt: now, expiresAt: until, staleUntil: until, tags: [], meta }
      }
      const remaining = (Policy.freshnessLifetime(policy, policyOptions) - Policy.currentAge(policy, now)) * 1000
      const expiresAt = now + Math.max(0, remaining)
      const hasValidator = policy.responseHeaders["etag"] !== undefined ||
        policy.responseHeaders["last-modified"] !== undefined
      const staleUntil = Math.max(
        Policy.retainUntil(policy, policyOptions),
        hasValidator ? expiresAt + options.staleRetentionMillis : expiresAt,
        now + 1
      )
      return { createdAt: now, expiresAt, staleUntil, tags: [], meta }
    }

    /** Where a new response goes; writes the Vary index first when the response varies. */
    const storageKeyFor = (
      primary: string,
      vary: string | undefined,
      request: Policy.RequestSnapshot,
      template: EntryTemplate
    ) =>
      Effect.gen(function*() {
        if (vary === undefined || vary.trim() === "") return primary
        const normalised = vary.split(",").map((name) => name.trim().toLowerCase()).filter((name) => name !== "")
          .sort().join(", ")
        if (normalised === "") return primary
        const now = yield* Clock.currentTimeMillis
        const existing = yield* readEntry(primary, now)
        let nonce: string
        if (Option.isSome(existing) && existing.value.entry.meta?.[META_VARY] === normalised) {
          nonce = existing.value.entry.meta[META_NONCE] ?? ""
          if (existing.value.entry.staleUntil >= template.staleUntil) {
            return variantKey(primary, nonce, normalised, request)
          }
        } else {
          // A new generation: variants stored under an older index stay unreachable.
          nonce = Math.random().toString(36).slice(2, 10)
        }
        const indexed = yield* backend.set(primary, {
          value: new Uint8Array(0),
          size: 0,
          createdAt: template.createdAt,
          expiresAt: template.expiresAt,
          staleUntil: template.staleUntil,
          tags: [],
          meta: { [META_VARY]: normalised, [META_NONCE]: nonce }
        }).pipe(
          Effect.as(true),
          Effect.catchAll((error) =>
            Effect.logWarning("cachekit http: storing a Vary index failed", error).pipe(Effect.as(false))
          )
        )
        return indexed ? variantKey(primary, nonce, normalised, request) : undefined
      })

    // -- responses ------------------------------------------------------------------------------

    const decorateRecord = (headers: Policy.Headers, status: string, x: XCache): Record<string, string> => {
      const out: Record<string, string> = { ...headers }
      if (options.cacheStatus) {
        const previous = headers["cache-status"]
        // RFC 9211 §2: the cache nearest the origin comes first, so ours is appended.
        out["cache-status"] = previous === undefined ? status : `${previous}, ${status}`
      }
      if (options.xCache) out["x-cache"] = x
      return out
    }

    const decorate = (headers: Policy.Headers, status: string, x: XCache): PlatformHeaders.Headers =>
      PlatformHeaders.unsafeFromRecord(decorateRecord(headers, status, x))

    const cacheStatus = (info: Parameters<typeof Policy.cacheStatus>[1]) => Policy.cacheStatus(options.name, info)

    const respond = (
      request: HttpClientRequest.HttpClientRequest,
      status: number,
      headers: Policy.Headers,
      body: Body,
      cacheStatusValue: string,
      x: XCache
    ): HttpClientResponse.HttpClientResponse =>
      new StreamResponse(request, status, decorate(headers, cacheStatusValue, x), body)

    const passThrough = (
      request: HttpClientRequest.HttpClientRequest,
      response: HttpClientResponse.HttpClientResponse,
      cacheStatusValue: string,
      x: XCache
    ) => respond(request, response.status, response.headers, response.stream, cacheStatusValue, x)

    /** A stored response (headers carry the RFC 9111 §5.1 Age); a caller's matching validators get a 304. */
    const serveStored = (
      request: HttpClientRequest.HttpClientRequest,
      snapshot: Policy.RequestSnapshot,
      found: Found,
      headers: Policy.Headers,
      cacheStatusValue: string,
      x: XCache
    ) => {
      if (found.policy.status === 200 && notModified(snapshot.headers, found.policy.responseHeaders)) {
        return respond(request, 304, notModifiedHeaders(headers), EMPTY, cacheStatusValue, x)
      }
      const body = snapshot.method === "HEAD" ? EMPTY : found.body
      return respond(request, found.policy.status, headers, body, cacheStatusValue, x)
    }

    const withAge = (policy: Policy.StoredPolicy, now: number): Policy.Headers => ({
      ...policy.responseHeaders,
      age: String(Math.floor(Policy.currentAge(policy, now)))
    })

    // -- upstream ---------------------------------------------------------------------------------

    const snapshotOf = (response: HttpClientResponse.HttpClientResponse): Policy.ResponseSnapshot => ({
      status: response.status,
      headers: response.headers
    })

    /**
     * Sends the request upstream and stores the response when it may be stored; the returned
     * response's body is tee'd into the backend. `settle` learns the outcome exactly once.
     */
    const fetchAndStore = (
      request: HttpClientRequest.HttpClientRequest,
      snapshot: Policy.RequestSnapshot,
      primary: string,
      mode: Policy.CacheMode,
      fwd: Fwd,
      settle: (outcome: Outcome) => Effect.Effect<void>
    ): Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError> =>
      Effect.gen(function*() {
        // A caller's own validators are not forwarded on a miss: the cache asks for the whole
        // response (storable, unlike a 304) and answers the condition itself.
        const callerConditional = snapshot.headers["if-none-match"] !== undefined ||
          snapshot.headers["if-modified-since"] !== undefined
        const outgoing = callerConditional
          ? HttpClientRequest.make(request.method)(snapshot.url, {
            headers: PlatformHeaders.remove(request.headers, ["if-none-match", "if-modified-since"])
          })
          : request
        const requestTime = yield* Clock.currentTimeMillis
        const response = yield* client.execute(outgoing)
        const responseTime = yield* Clock.currentTimeMillis
        const served = yield* storeResponse(
          request,
          response,
          snapshot,
          primary,
          mode,
          requestTime,
          responseTime,
          fwd,
          settle
        )
        if (callerConditional && response.status === 200 && notModified(snapshot.headers, response.headers)) {
          // The body still flows into the backend, in the background (in the layer's scope).
          yield* discard(served)
          return new StreamResponse(
            request,
            304,
            PlatformHeaders.unsafeFromRecord({ ...notModifiedHeaders(served.headers) }),
            EMPTY
          )
        }
        return served
      }).pipe(Effect.onExit((exit) => exit._tag === "Failure" ? settle("abandoned") : Effect.void))

    /**
     * One upstream exchange per primary key at a time: the leader runs `lead`, followers wait for
     * its entry and serve it from the backend.
     */
    const coalesced = (
      request: HttpClientRequest.HttpClientRequest,
      snapshot: Policy.RequestSnapshot,
      primary: string,
      lead: (settle: (outcome: Outcome) => Effect.Effect<void>) => Effect.Effect<
        HttpClientResponse.HttpClientResponse,
        HttpClientError.HttpClientError
      >,
      direct: Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>,
      attempt = 0
    ): Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError> =>
      Effect.suspend(() => {
        const existing = inflight.get(primary)
        if (existing === undefined) {
          const done = Deferred.unsafeMake<Outcome>(FiberId.none)
          const self: Inflight = { done }
          inflight.set(primary, self)
          const settle = (outcome: Outcome) =>
            Effect.suspend(() => {
              if (inflight.get(primary) === self) inflight.delete(primary)
              return Deferred.succeed(done, outcome)
            })
          return lead(settle)
        }
        return Deferred.await(existing.done).pipe(
          Effect.timeoutOption(options.coalesceTimeout),
          Effect.flatMap((outcome) => {
            if (Option.isNone(outcome)) {
              // The leader's caller is not reading its body: stop waiting on it.
              if (inflight.get(primary) === existing) inflight.delete(primary)
              return attempt < 1 ? coalesced(request, snapshot, primary, lead, direct, attempt + 1) : direct
            }
            if (outcome.value === "stored") {
              return Effect.flatMap(Clock.currentTimeMillis, (now) =>
                Effect.flatMap(lookupEntry(primary, snapshot, now), (result) =>
                  result._tag === "Found"
                    ? Effect.succeed(
                      serveStored(
                        request,
                        snapshot,
                        result.found,
                        withAge(result.found.policy, now),
                        cacheStatus({ hit: true, collapsed: true }),
                        "HIT"
                      )
                    )
                    : direct))
            }
            if (outcome.value === "abandoned" && attempt < 1) {
              return coalesced(request, snapshot, primary, lead, direct, attempt + 1)
            }
            return direct
          })
        )
      })

    /**
     * A stored response for a request that missed a moment ago, or `undefined`. `afterFlight`: read
     * after the flight it waited for stored one (RFC 9111 §4 lets collapsed requests reuse that
     * response, as local followers do); otherwise only a fresh entry counts.
     */
    const storedSince = (
      request: HttpClientRequest.HttpClientRequest,
      snapshot: Policy.RequestSnapshot,
      primary: string,
      mode: Policy.CacheMode,
      afterFlight: boolean
    ) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const result = yield* lookupEntry(primary, snapshot, now)
        if (result._tag === "Miss") return undefined
        const found = result.found
        if (afterFlight) {
          return serveStored(
            request,
            snapshot,
            found,
            withAge(found.policy, now),
            cacheStatus({ hit: true, collapsed: true }),
            "HIT"
          )
        }
        const lookupMode = mode === "default" && found.entry.meta?.[META_MODE] === "ignore-rules"
          ? "ignore-rules"
          : mode
        const decision = Policy.lookup(found.policy, snapshot, now, policyOptions, lookupMode)
        if (decision._tag !== "Fresh") return undefined
        return serveStored(
          request,
          snapshot,
          found,
          decision.headers,
          cacheStatus({ hit: true, ttl: Math.round(decision.ttl), collapsed: true }),
          "HIT"
        )
      })

    /** Whether `primary` is inside its not-storable window (then it skips the gate); forgets expired marks. */
    const knownUncacheable = (primary: string, now: number): boolean => {
      const until = uncacheableUntil.get(primary)
      if (until === undefined) return false
      if (now < until) return true
      uncacheableUntil.delete(primary)
      return false
    }

    /** `settle` that also records the outcome for the gate: not storable marks the key, stored clears it. */
    const noting = (primary: string, settle: (outcome: Outcome) => Effect.Effect<void>) => (outcome: Outcome) =>
      outcome === "abandoned" || options.uncacheableTtlMillis <= 0
        ? settle(outcome)
        : Effect.zipRight(
          Effect.map(Clock.currentTimeMillis, (now) => {
            uncacheableUntil.delete(primary)
            if (outcome === "stored") return
            uncacheableUntil.set(primary, now + options.uncacheableTtlMillis)
            if (uncacheableUntil.size > UNCACHEABLE_KEYS_MAX) {
              uncacheableUntil.delete(uncacheableUntil.keys().next().value!)
            }
          }),
          settle(outcome)
        )

    /**
     * The leader of a miss behind the cross-process gate. The fetch runs in a fiber of the layer's
     * scope (the gate holds its lock until the body is stored, which needs this caller to read the
     * response first); the caller gets the response as soon as that fiber has it, or, when another
     * process fetched, re-reads the backend. Interrupting the caller interrupts the fetch.
     */
    const acrossProcesses = (
      gate: DistributedSingleFlight,
      request: HttpClientRequest.HttpClientRequest,
      snapshot: Policy.RequestSnapshot,
      primary: string,
      mode: Policy.CacheMode,
      fwd: Fwd,
      settle: (outcome: Outcome) => Effect.Effect<void>
    ): Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError> =>
      Effect.gen(function*() {
        const handed = yield* Deferred.make<Handed>()
        const fetchHere = Effect.gen(function*() {
          // Another process may have stored the response between our lookup and the lock.
          const already = yield* storedSince(request, snapshot, primary, mode, false)
          if (already !== undefined) {
            yield* Deferred.succeed(handed, { _tag: "Here", exit: Exit.succeed(already) })
            yield* settle("stored")
            return "stored" as const
          }
          const outcome = yield* Deferred.make<Outcome>()
          const report = (value: Outcome) => Effect.zipRight(settle(value), Deferred.succeed(outcome, value))
          const exit = yield* Effect.exit(fetchAndStore(request, snapshot, primary, mode, fwd, report))
          yield* Deferred.succeed(handed, { _tag: "Here", exit })
          if (Exit.isFailure(exit)) return "abandoned" as const
          return yield* Deferred.await(outcome).pipe(
            Effect.timeoutTo({
              duration: options.coalesceTimeout,
              onTimeout: () => "abandoned" as const,
              onSuccess: (o) => o
            })
          )
        })
        const fiber = yield* gate.run(primary, fetchHere).pipe(
          // a no-op when the fetch ran here (it handed its response over first)
          Effect.flatMap((outcome) => Deferred.succeed(handed, { _tag: "Elsewhere", outcome })),
          Effect.onInterrupt(() => Deferred.succeed(handed, { _tag: "Elsewhere", outcome: "abandoned" })),
          // the caller may run uninterruptibly (a server app does): the gate's waits must still time out
          Effect.interruptible,
          Effect.forkIn(scope)
        )
        const result = yield* Deferred.await(handed).pipe(
          Effect.onInterrupt(() => Effect.zipRight(Fiber.interruptFork(fiber), settle("abandoned")))
        )
        if (result._tag === "Here") return yield* result.exit
        if (result.outcome === "stored") {
          const served = yield* storedSince(request, snapshot, primary, mode, true)
          if (served !== undefined) {
            yield* settle("stored")
            return served
          }
        }
        // Not stored for this request (not storable, another Vary variant, failed, timed out): fetch here.
        return yield* fetchAndStore(request, snapshot, primary, mode, fwd, settle)
      })

    /** Conditional request for a stored response (RFC 9111 §4.3); 304 merges, errors may serve stale. */
    const revalidate = (
      request: HttpClientRequest.HttpClientRequest,
      snapshot: Policy.RequestSnapshot,
      primary: string,
      found: Found,
      conditional: Policy.Headers,
      serveIfErrorUntil: number,
      mode: Policy.CacheMode,
      settle: (outcome: Outcome) => Effect.Effect<void>
    ): Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError> =>
      Effect.gen(function*() {
        const requestTime = yield* Clock.currentTimeMillis
        const outgoing = HttpClientRequest.setHeaders(request, conditional)
        const attempt = yield* Effect.either(client.execute(outgoing))
        const responseTime = yield* Clock.currentTimeMillis
        // RFC 5861 §4 stale-if-error: a network error or a 5xx inside the window serves the stored response.
        const staleOnError = (fwdStatus: number | undefined) =>
          serveStored(
            request,
            snapshot,
            found,
            withAge(found.policy, responseTime),
            cacheStatus({
              hit: true,
              fwd: "stale",
              ...(fwdStatus === undefined ? {} : { fwdStatus }),
              detail: "stale-if-error"
            }),
            "STALE"
          )
        if (Either.isLeft(attempt)) {
          yield* settle("abandoned")
          if (responseTime < serveIfErrorUntil) return staleOnError(undefined)
          return yield* Effect.fail(attempt.left)
        }
        const response = attempt.right
        if (response.status === 304) {
          const merged = Policy.revalidated(found.policy, snapshot, snapshotOf(response), {
            requestTime,
            responseTime
          }, policyOptions)
          yield* discard(response)
          if (merged._tag === "Mismatch") {
            // The 304 does not describe what we hold: ask again without validators (§4.3.4).
            yield* settle("abandoned")
            return yield* fetchAndStore(request, snapshot, primary, mode, "stale", () => Effect.void)
          }
          if (merged.storable) {
            yield* restore(found, merged.policy, responseTime)
          } else {
            yield* deleteKey(found.storageKey)
          }
          yield* settle(merged.storable ? "stored" : "uncacheable")
          return serveStored(
            request,
            snapshot,
            { ...found, policy: merged.policy },
            withAge(merged.policy, responseTime),
            cacheStatus({ hit: false, fwd: "stale", fwdStatus: 304 }),
            "REVALIDATED"
          )
        }
        if (response.status >= 500 && responseTime < serveIfErrorUntil) {
          yield* discard(response)
          yield* settle("abandoned")
          return staleOnError(response.status)
        }
        // A new response replaces the stored one (or, not storable, passes through).
        return yield* storeResponse(
          request,
          response,
          snapshot,
          primary,
          mode,
          requestTime,
          responseTime,
          "stale",
          settle
        )
      }).pipe(Effect.onExit((exit) => exit._tag === "Failure" ? settle("abandoned") : Effect.void))

    /** Stores `response` when the policy (or the mode) allows, tee'ing its body into the backend. */
    const storeResponse = (
      request: HttpClientRequest.HttpClientRequest,
      response: HttpClientResponse.HttpClientResponse,
      snapshot: Policy.RequestSnapshot,
      primary: string,
      mode: Policy.CacheMode,
      requestTime: number,
      responseTime: number,
      fwd: Fwd,
      settle: (outcome: Outcome) => Effect.Effect<void>
    ): Effect.Effect<HttpClientResponse.HttpClientResponse> =>
      Effect.gen(function*() {
        const resSnapshot = snapshotOf(response)
        const effectiveMode = options.responseMode?.(snapshot, resSnapshot) ?? mode
        const storable = Policy.storability(snapshot, resSnapshot, policyOptions, effectiveMode).storable
        const policy = storable
          ? Policy.store(snapshot, resSnapshot, { requestTime, responseTime }, policyOptions)
          : undefined
        const template = policy === undefined || policy.vary === "*"
          ? undefined
          : templateFor(policy, responseTime, effectiveMode === "ignore-rules")
        const storageKey = template === undefined
          ? undefined
          : yield* storageKeyFor(primary, response.headers["vary"], snapshot, template)
        if (storageKey === undefined || template === undefined) {
          yield* settle("uncacheable")
          return passThrough(request, response, cacheStatus({ hit: false, fwd, fwdStatus: response.status }), "MISS")
        }
        const status = cacheStatus({ hit: false, fwd, fwdStatus: response.status, stored: true })
        if (hasNoBody(snapshot.method, response)) {
          // Nothing to stream: store now, so waiting followers are not held by a caller that never
          // reads an empty body (HEAD, 204, 304, Content-Length: 0).
          const writer = yield* makeWriter(backend, storageKey, template, options.maxBodySize, scope)
          yield* settle(outcomeOf(yield* writer.finish))
          return respond(request, response.status, response.headers, response.stream, status, "MISS")
        }
        const body = tee(
          response.stream,
          makeWriter(backend, storageKey, template, options.maxBodySize, scope),
          (written) => settle(outcomeOf(written))
        )
        return respond(
          request,
          response.status,
          response.headers,
          body,
          cacheStatus({ hit: false, fwd, fwdStatus: response.status, stored: true }),
          "MISS"
        )
      })

    /** Rewrites a stored entry with a merged policy (after a 304), keeping its body. */
    const restore = (found: Found, merged: Policy.StoredPolicy, now: number) => {
      const template = templateFor(merged, now, false)
      const streaming = backend.streaming
      const write = streaming !== undefined && !(found.body instanceof Uint8Array)
        ? Effect.flatMap(streaming.getStream(found.storageKey), (stored) =>
          Option.isNone(stored)
            ? Effect.void
            : Effect.asVoid(streaming.setStream(found.storageKey, template, stored.value.body)))
        : backend.set(found.storageKey, { ...template, value: found.entry.value, size: found.entry.size })
      return write.pipe(
        Effect.catchAll((error) => Effect.logWarning("cachekit http: updating a revalidated entry failed", error))
      )
    }

    /** Reads and drops a body we do not forward (a 304, or a 5xx replaced by a stale response). */
    const discard = (response: HttpClientResponse.HttpClientResponse) =>
      Effect.forkIn(Effect.ignore(Stream.runDrain(response.stream)), scope)

    const only504 = (request: HttpClientRequest.HttpClientRequest, fwd: Fwd) =>
      // RFC 9111 §5.2.1.7: only-if-cached and nothing usable stored.
      respond(request, 504, {}, Stream.empty, cacheStatus({ hit: false, fwd, detail: "only-if-cached" }), "MISS")

    // -- the request path ---------------------------------------------------------------------------

    const handle = (
      request: HttpClientRequest.HttpClientRequest
    ): Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError> =>
      Effect.gen(function*() {
        const url = UrlParams.makeUrl(request.url, request.urlParams, Option.none())
        if (Either.isLeft(url)) return yield* client.execute(request)
        const snapshot: Policy.RequestSnapshot = {
          method: request.method,
          url: url.right.href,
          headers: request.headers
        }
        const primary = options.key(snapshot)
        if (options.bust !== undefined) {
          for (const key of options.bust(request, primary)) yield* deleteKey(key)
        }

        if (!CACHEABLE_METHODS.has(request.method)) {
          const response = yield* client.execute(request)
          if (!SAFE_METHODS.has(request.method)) {
            // RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI
            // and the same-origin Location / Content-Location URIs.
            for (const target of Policy.invalidates(snapshot, snapshotOf(response))) {
              yield* deleteKey(options.key({ method: "GET", url: target, headers: {} }))
              yield* deleteKey(options.key({ method: "HEAD", url: target, headers: {} }))
            }
          }
          return passThrough(request, response, cacheStatus({ hit: false, fwd: "method" }), "BYPASS")
        }
        const mode = options.mode?.(request) ?? "default"
        const rules = Policy.modeRules(mode)
        if ((!rules.read && mode === "no-store") || bypassesCache(request.headers)) {
          // Range and state-changing preconditions pass through: partial responses are not
          // assembled from the cache here, and If-Match / If-Unmodified-Since are the origin's call.
          const response = yield* client.execute(request)
          return passThrough(request, response, cacheStatus({ hit: false, fwd: "bypass" }), "BYPASS")
        }

        const direct = (fwd: Fwd) => fetchAndStore(request, snapshot, primary, mode, fwd, () => Effect.void)
        // The cross-process gate only for requests whose answer another process may have stored for
        // them: reading the cache allowed, no credentials (a per-user response is never shared).
        const gate = options.distributedSingleFlight !== undefined && rules.read &&
            request.headers["authorization"] === undefined
          ? options.distributedSingleFlight
          : undefined
        const miss = (fwd: Fwd) =>
          coalesced(
            request,
            snapshot,
            primary,
            gate === undefined
              ? (settle) => fetchAndStore(request, snapshot, primary, mode, fwd, settle)
              : (settle) =>
                Effect.flatMap(Clock.currentTimeMillis, (now) =>
                  // a key known not to be storable: other processes' fetches would not help, go upstream now
                  uncacheableUntil.size > 0 && knownUncacheable(primary, now)
                    ? fetchAndStore(request, snapshot, primary, mode, fwd, noting(primary, settle))
                    : acrossProcesses(gate, request, snapshot, primary, mode, fwd, noting(primary, settle))),
            direct(fwd)
          )
        if (!rules.read) return yield* miss("request")

        const now = yield* Clock.currentTimeMillis
        const noNetwork = Policy.forbidsNetwork(snapshot, mode)
        const result = yield* lookupEntry(primary, snapshot, now)
        if (result._tag === "Miss") return noNetwork ? only504(request, result.fwd) : yield* miss(result.fwd)
        const found = result.found
        // An entry stored against its own rules (an `ignore-rules` override) is served by that rule
        // until the backend drops it.
        const lookupMode = mode === "default" && found.entry.meta?.[META_MODE] === "ignore-rules"
          ? "ignore-rules"
          : mode
        const decision = Policy.lookup(found.policy, snapshot, now, policyOptions, lookupMode)
        switch (decision._tag) {
          case "Fresh":
            return serveStored(
              request,
              snapshot,
              found,
              decision.headers,
              cacheStatus({ hit: true, ttl: Math.round(decision.ttl) }),
              "HIT"
            )
          case "VaryMismatch":
            return noNetwork ? only504(request, "vary-miss") : yield* miss("vary-miss")
          case "Stale":
          case "MustRevalidate": {
            if (noNetwork) return only504(request, "stale")
            if (decision._tag === "Stale" && decision.serveWhileRevalidate) {
              yield* refreshInBackground(request, snapshot, primary, found, decision.conditional, mode)
              return serveStored(
                request,
                snapshot,
                found,
                decision.headers,
                cacheStatus({ hit: true, ttl: Math.round(decision.ttl), detail: "stale-while-revalidate" }),
                "STALE"
              )
            }
            const { conditional, serveIfErrorUntil } = decision
            return yield* coalesced(
              request,
              snapshot,
              primary,
              (settle) => revalidate(request, snapshot, primary, found, conditional, serveIfErrorUntil, mode, settle),
              revalidate(request, snapshot, primary, found, conditional, serveIfErrorUntil, mode, () => Effect.void)
            )
          }
        }
      })

    /** RFC 5861 §3: one background revalidation per stored response, in the layer's scope. */
    const refreshInBackground = (
      request: HttpClientRequest.HttpClientRequest,
      snapshot: Policy.RequestSnapshot,
      primary: string,
      found: Found,
      conditional: Policy.Headers,
      mode: Policy.CacheMode
    ) =>
      Effect.suspend(() => {
        if (refreshing.has(found.storageKey)) return Effect.void
        refreshing.add(found.storageKey)
        return revalidate(request, snapshot, primary, found, conditional, 0, mode, () => Effect.void).pipe(
          Effect.flatMap((response) => Stream.runDrain(response.stream)),
          Effect.catchAllCause((cause) => Effect.logDebug("cachekit http: background revalidation failed", cause)),
          Effect.ensuring(Effect.sync(() => refreshing.delete(found.storageKey))),
          Effect.forkIn(scope),
          Effect.asVoid
        )
      })

    // -- the synchronous hit path ------------------------------------------------------------------

    /**
     * The `Fresh` branch of `handle` without effects, for an in-process backend: the same key, the
     * same Vary index and variant reads, the same `Policy.lookup`, the same headers. Anything else
     * (a miss, stale, a conditional or Range request, a custom mode or bust, an `ignore-rules`
     * entry, a 304 or HEAD answer) returns `undefined` and the caller takes `handle`.
     */
    const getSync = backend.unsafeGetSync
    const peekSync = backend.unsafePeekSync
    const syncHit: SyncLookup | undefined = getSync === undefined || options.mode !== undefined ||
        options.bust !== undefined
      ? undefined
      : (method, url, headers, now) => {
        if (method !== "GET" || bypassesCache(headers)) return undefined
        if (headers["if-none-match"] !== undefined || headers["if-modified-since"] !== undefined) return undefined
        const snapshot: Policy.RequestSnapshot = { method, url, headers }
        const primary = options.key(snapshot)
        // Decide on reads that record nothing (when the backend can peek); only an answered hit is
        // then read for real, so a request that falls through to the Effect path (which reads again)
        // is counted once in the backend's stats and frequency sketch, not twice.
        const read = peekSync ?? getSync
        let entry = read(primary, now)
        if (entry === undefined) return undefined
        let variant: string | undefined
        const vary = entry.meta?.[META_VARY]
        if (vary !== undefined) {
          variant = variantKey(primary, entry.meta?.[META_NONCE] ?? "", vary, snapshot)
          entry = read(variant, now)
          if (entry === undefined) return undefined
        }
        if (entry.meta?.[META_MODE] !== undefined) return undefined
        const policy = policyOf(entry)
        if (policy === undefined || !Policy.varyMatches(policy, snapshot)) return undefined
        const decision = Policy.lookup(policy, snapshot, now, policyOptions, "default")
        if (decision._tag !== "Fresh") return undefined
        if (peekSync !== undefined) {
          getSync(primary, now)
          if (variant !== undefined) getSync(variant, now)
        }
        return {
          status: policy.status,
          headers: decorateRecord(decision.headers, cacheStatus({ hit: true, ttl: Math.round(decision.ttl) }), "HIT"),
          body: entry.value
        }
      }

    const cached = HttpClient.makeWith<never, never, HttpClientError.HttpClientError, never>(
      (requestEffect) => Effect.flatMap(requestEffect, handle),
      Effect.succeed
    )
    return syncHit === undefined ? cached : Object.assign(cached, { [SyncLookupId]: syncHit })
  })

// ---------------------------------------------------------------------------------------------
// Synchronous hits (for the proxy's fast path)
// ---------------------------------------------------------------------------------------------

/** A fresh stored response, ready to write: status, headers (with Age and Cache-Status) and the whole body. */
export interface SyncHit {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: Uint8Array
}

/**
 * Answers a GET from the cache synchronously when the stored response is fresh, else `undefined`
 * (then send the request through the client). `url` is the absolute URL as the client would see
 * it (`new URL(...).href`), `headers` lower-cased, `now` the `Clock` reading.
 */
export type SyncLookup = (
  method: string,
  url: string,
  headers: Policy.Headers,
  now: number
) => SyncHit | undefined

const SyncLookupId: unique symbol = Symbol.for("@cachekit/http/HttpClientCache/syncLookup")

/** The synchronous hit path of a client made by `make`, when its backend can read synchronously. */
export const syncLookupOf = (client: HttpClient.HttpClient): SyncLookup | undefined =>
  (client as HttpClient.HttpClient & { readonly [SyncLookupId]?: SyncLookup })[SyncLookupId]

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const bypassesCache = (headers: Policy.Headers): boolean =>
  headers["range"] !== undefined || headers["if-match"] !== undefined ||
  headers["if-unmodified-since"] !== undefined || headers["if-range"] !== undefined

const EMPTY = new Uint8Array(0)

const hasNoBody = (method: string, response: HttpClientResponse.HttpClientResponse): boolean =>
  method === "HEAD" || response.status === 204 || response.status === 304 ||
  response.headers["content-length"] === "0"

/**
 * RFC 9110 §13.2.2: the caller's own validators against a stored 200. If-None-Match (weak
 * comparison, §13.1.2) wins; If-Modified-Since counts only without it.
 */
const notModified = (request: Policy.Headers, stored: Policy.Headers): boolean => {
  const ifNoneMatch = request["if-none-match"]
  if (ifNoneMatch !== undefined) {
    const etag = stored["etag"]
    return etag !== undefined && etagMatches(ifNoneMatch, etag)
  }
  const since = Policy.parseHttpDate(request["if-modified-since"])
  const lastModified = Policy.parseHttpDate(stored["last-modified"])
  return since !== undefined && lastModified !== undefined && lastModified <= since
}

/** RFC 9110 §13.1.2 If-None-Match uses the weak comparison. */
const etagMatches = (ifNoneMatch: string, etag: string): boolean => {
  if (ifNoneMatch.trim() === "*") return true
  const strip = (tag: string) => tag.trim().replace(/^W\//, "")
  const target = strip(etag)
  return ifNoneMatch.split(",").some((candidate) => strip(candidate) === target)
}

/** RFC 9110 §15.4.5: a 304 carries the headers a 200 would have, minus the content ones. */
const notModifiedHeaders = (headers: Policy.Headers): Policy.Headers => {
  const out: Record<string, string> = {}
  for (const name in headers) {
    if (name === "content-length" || name === "content-encoding" || name === "transfer-encoding") continue
    out[name] = headers[name]!
  }
  return out
}
