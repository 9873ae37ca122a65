/**
 * The RFC 9111 decisions behind `HttpCachePolicy`. Pure functions over plain records; see the public
 * module for the contract of each export.
 */
import type {
  CacheMode,
  CacheStatusInfo,
  Lookup,
  ModeRules,
  PolicyOptions,
  RequestSnapshot,
  ResponseSnapshot,
  Revalidation,
  Storability,
  StoredPolicy,
  Times
} from "../HttpCachePolicy.js"
import type { CacheControl } from "./cacheControl.js"
import {
  formatHttpDate,
  MAX_DELTA_SECONDS,
  parseAge,
  parseCacheControl,
  parseCacheControlCounted,
  parseHttpDate
} from "./cacheControl.js"
import type { Headers } from "./policyHeaders.js"
import {
  fromEntries,
  header,
  lowerCaseNames,
  normaliseVaryValue,
  stripHopByHop,
  varyNames,
  without
} from "./policyHeaders.js"

// ---------------------------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------------------------

/** RFC 9110 §15.1: statuses that are heuristically cacheable. */
export const DEFAULT_CACHEABLE_STATUSES: ReadonlySet<number> = new Set([
  200,
  203,
  204,
  206,
  300,
  301,
  308,
  404,
  405,
  410,
  414,
  501
])
export const DEFAULT_TARGETED: ReadonlyArray<string> = ["cdn-cache-control"]
export const DEFAULT_HEURISTIC_FRACTION = 0.1
/** How long past its stale windows an entry with validators is kept, so it can still be revalidated. */
export const DEFAULT_REVALIDATION_WINDOW_MILLIS = 60 * 60 * 1000

const EMPTY_HEADERS: Headers = Object.freeze({})
const VARY_MISMATCH: Lookup = Object.freeze({ _tag: "VaryMismatch" })
const MISMATCH: Revalidation = Object.freeze({ _tag: "Mismatch" })

// ---------------------------------------------------------------------------------------------
// Cache-Control selection
// ---------------------------------------------------------------------------------------------

interface ResponseDirectives {
  readonly cc: CacheControl
  /** An RFC 9213 targeted field was used: Cache-Control and Expires are ignored. */
  readonly targeted: boolean
}

/**
 * RFC 9213 §2.2: a shared cache uses the first targeted field (in its list order) that holds at least
 * one directive, and then ignores Cache-Control and Expires; otherwise Cache-Control.
 */
const responseDirectives = (headers: Headers, options: PolicyOptions): ResponseDirectives => {
  if (options.shared) {
    for (const name of options.targetedCacheControl ?? DEFAULT_TARGETED) {
      const value = header(headers, name.toLowerCase())
      if (value === undefined) continue
      const [cc, count] = parseCacheControlCounted(value)
      if (count > 0) return { cc, targeted: true }
    }
  }
  return { cc: parseCacheControl(header(headers, "cache-control")), targeted: false }
}

const PRAGMA_NO_CACHE: CacheControl = Object.freeze({ ...parseCacheControl("no-cache") })

/** Request directives; RFC 9111 §5.4: `Pragma: no-cache` counts as no-cache only without Cache-Control. */
const requestDirectives = (headers: Headers): CacheControl => {
  const value = header(headers, "cache-control")
  if (value === undefined) {
    const pragma = header(headers, "pragma")
    if (pragma !== undefined && pragma.split(",").some((p) => p.trim().toLowerCase() === "no-cache")) {
      return PRAGMA_NO_CACHE
    }
  }
  return parseCacheControl(value)
}

const namesField = (directive: boolean | ReadonlyArray<string>, name: string): boolean =>
  typeof directive !== "boolean" && directive.includes(name)

// ---------------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------------

const MODE_RULES: Readonly<Record<CacheMode, ModeRules>> = {
  "default": { read: true, network: true },
  "no-store": { read: false, network: true },
  "reload": { read: false, network: true },
  "no-cache": { read: true, network: true },
  "force-cache": { read: true, network: true },
  "only-if-cached": { read: true, network: false },
  "ignore-rules": { read: true, network: true }
}

export const modeRules = (mode: CacheMode): ModeRules => MODE_RULES[mode] ?? MODE_RULES.default

const servesAnyStored = (mode: CacheMode): boolean =>
  mode === "force-cache" || mode === "only-if-cached" || mode === "ignore-rules"

export const forbidsNetwork = (req: RequestSnapshot, mode: CacheMode = "default"): boolean =>
  !modeRules(mode).network || requestDirectives(lowerCaseNames(req.headers)).onlyIfCached

// ---------------------------------------------------------------------------------------------
// Storability (RFC 9111 §3)
// ---------------------------------------------------------------------------------------------

const yes = (reason: string): Storability => ({ storable: true, reason })
const no = (reason: string): Storability => ({ storable: false, reason })

export const storability = (
  req: RequestSnapshot,
  res: ResponseSnapshot,
  options: PolicyOptions,
  mode: CacheMode = "default"
): Storability => {
  if (mode === "no-store") return no("mode no-store: nothing is stored")
  const method = req.method.toUpperCase()
  if (method !== "GET" && method !== "HEAD") return no(`§3: method ${method} is not cacheable here`)
  const status = res.status
  if (!Number.isInteger(status) || status < 200 || status > 599) return no(`§3: status ${status} is not a final status`)
  if (status === 304) return no("§4.3.4: a 304 updates a stored response, it is not stored itself")
  if (mode === "ignore-rules") {
    return status === 200 ? yes("mode ignore-rules: any 200 is stored") : no("mode ignore-rules stores only 200")
  }
  const reqHeaders = lowerCaseNames(req.headers)
  if (requestDirectives(reqHeaders).noStore) return no("§5.2.1.5: request no-store")
  const headers = lowerCaseNames(res.headers)
  const { cc, targeted } = responseDirectives(headers, options)
  const understood = (options.cacheableStatuses ?? DEFAULT_CACHEABLE_STATUSES).has(status)
  if (cc.mustUnderstand && !understood) return no(`§5.2.2.3: must-understand and status ${status} is not understood`)
  // §5.2.2.3: a cache that understands the status may ignore no-store when must-understand is present.
  if (cc.noStore && !(cc.mustUnderstand && understood)) return no("§5.2.2.5: response no-store")
  if (options.shared && cc.private === true) return no("§5.2.2.7: private response in a shared cache")
  if (
    options.shared && header(reqHeaders, "authorization") !== undefined &&
    !cc.public && cc.sMaxage === undefined && !cc.mustRevalidate
  ) {
    return no("§3.5: Authorization in a shared cache needs public, s-maxage or must-revalidate")
  }
  if (varyNames(header(headers, "vary")) === "*") return no("§4.1: Vary: * never matches a later request")
  if (
    options.shared && header(headers, "set-cookie") !== undefined &&
    !namesField(cc.noCache, "set-cookie") && !namesField(cc.private, "set-cookie")
  ) {
    return no("Set-Cookie in a shared cache (stored only when no-cache/private names set-cookie)")
  }
  if (understood) return yes(`§3: status ${status} is cacheable by default`)
  if (options.shared && cc.sMaxage !== undefined) return yes("§3: explicit s-maxage")
  if (cc.maxAge !== undefined) return yes("§3: explicit max-age")
  if (!targeted && header(headers, "expires") !== undefined) return yes("§3: explicit Expires")
  return no(`§3: status ${status} is stored only with explicit freshness`)
}

// ---------------------------------------------------------------------------------------------
// Storing
// ---------------------------------------------------------------------------------------------

/**
 * §3.1 headers kept for replay: hop-by-hop removed; fields named by `no-cache="..."` (and, in a shared
 * cache, `private="..."`) removed (they may not be reused without revalidation); Set-Cookie never
 * replayed from storage.
 */
const replayHeaders = (headers: Headers, cc: CacheControl, options: PolicyOptions): Headers => {
  const drop = ["set-cookie"]
  if (typeof cc.noCache !== "boolean") drop.push(...cc.noCache)
  if (options.shared && typeof cc.private !== "boolean") drop.push(...cc.private)
  return without(stripHopByHop(headers), drop)
}

const varyRecord = (
  status: number,
  vary: string | undefined,
  reqHeaders: Headers
): StoredPolicy["vary"] => {
  const names = varyNames(vary)
  if (names === "*") return "*"
  // A stored 206 answers only the same Range: treat Range as an implicit Vary field.
  const all = status === 206 && !names.includes("range") ? [...names, "range"] : names
  if (all.length === 0) return EMPTY_HEADERS
  // Direct assignment is safe: varyNames never yields "__proto__".
  const record: Record<string, string | null> = {}
  for (const name of all) record[name] = normaliseVaryValue(name, header(reqHeaders, name))
  return record
}

export const store = (
  req: RequestSnapshot,
  res: ResponseSnapshot,
  times: Times,
  options: PolicyOptions
): StoredPolicy => {
  const headers = lowerCaseNames(res.headers)
  const { cc } = responseDirectives(headers, options)
  return {
    version: 1,
    status: res.status,
    responseHeaders: replayHeaders(headers, cc, options),
    requestTime: times.requestTime,
    responseTime: times.responseTime,
    vary: varyRecord(res.status, header(headers, "vary"), lowerCaseNames(req.headers)),
    method: req.method.toUpperCase(),
    url: req.url
  }
}

// ---------------------------------------------------------------------------------------------
// Vary (RFC 9111 §4.1)
// ---------------------------------------------------------------------------------------------

const varyMatchesHeaders = (stored: StoredPolicy, reqHeaders: Headers): boolean => {
  const vary = stored.vary
  if (vary === "*") return false
  for (const name of Object.keys(vary)) {
    if (normaliseVaryValue(name, header(reqHeaders, name)) !== vary[name]) return false
  }
  return true
}

export const varyMatches = (stored: StoredPolicy, req: RequestSnapshot): boolean =>
  varyMatchesHeaders(stored, lowerCaseNames(req.headers))

export const varyKey = (varyHeader: string | undefined, req: RequestSnapshot): string => {
  const names = varyNames(varyHeader)
  if (names === "*") return "*"
  if (names.length === 0) return ""
  const reqHeaders = lowerCaseNames(req.headers)
  return [...names].sort().map((name) =>
    `${name}:${JSON.stringify(normaliseVaryValue(name, header(reqHeaders, name)))}`
  ).join("\n")
}

// ---------------------------------------------------------------------------------------------
// Freshness (§4.2.1, §4.2.2) and age (§4.2.3)
// ---------------------------------------------------------------------------------------------

interface Derived {
  readonly options: PolicyOptions
  readonly cc: CacheControl
  readonly lifetimeMs: number
  /** corrected_initial_age, in ms. */
  readonly initialAgeMs: number
  /** The replay headers with `Age` for the last age (in whole seconds) served: hits within one second share it. */
  lastAge: number
  lastHeaders: Headers
}

// Lookups on a hit recompute nothing from headers when the same policy object is seen again.
const derivedCache = new WeakMap<StoredPolicy, Derived>()

const derive = (stored: StoredPolicy, options: PolicyOptions): Derived => {
  const cached = derivedCache.get(stored)
  if (cached !== undefined && cached.options === options) return cached
  const headers = stored.responseHeaders
  const { cc, targeted } = responseDirectives(headers, options)
  // RFC 9110 §6.6.1: a missing or invalid Date reads as the time the response was received.
  const date = parseHttpDate(header(headers, "date")) ?? stored.responseTime

  let lifetimeMs: number
  if (options.shared && cc.sMaxage !== undefined) {
    lifetimeMs = cc.sMaxage * 1000
  } else if (cc.maxAge !== undefined) {
    lifetimeMs = cc.maxAge * 1000
  } else if (!targeted && header(headers, "expires") !== undefined) {
    // §5.3: an invalid Expires (e.g. "0") is in the past.
    const expires = parseHttpDate(header(headers, "expires"))
    lifetimeMs = expires === undefined ? 0 : Math.max(0, expires - date)
  } else {
    // §4.2.2: heuristics only for heuristically cacheable statuses (or public) with Last-Modified.
    const lastModified = parseHttpDate(header(headers, "last-modified"))
    const heuristic = (options.cacheableStatuses ?? DEFAULT_CACHEABLE_STATUSES).has(stored.status) || cc.public
    lifetimeMs = heuristic && lastModified !== undefined
      ? Math.max(0, date - lastModified) * (options.heuristicFraction ?? DEFAULT_HEURISTIC_FRACTION)
      : 0
  }
  if (options.maxTtlMillis !== undefined) lifetimeMs = Math.min(lifetimeMs, Math.max(0, options.maxTtlMillis))

  const derived: Derived = {
    options,
    cc,
    lifetimeMs,
    initialAgeMs: correctedInitialAge(stored, date),
    lastAge: -1,
    lastHeaders: headers
  }
  derivedCache.set(stored, derived)
  return derived
}

/** §4.2.3 corrected_initial_age = max(apparent_age, corrected_age_value), in ms. */
const correctedInitialAge = (stored: StoredPolicy, date: number): number => {
  const apparentAge = Math.max(0, stored.responseTime - date)
  const responseDelay = Math.max(0, stored.responseTime - stored.requestTime)
  const correctedAgeValue = parseAge(header(stored.responseHeaders, "age")) * 1000 + responseDelay
  return Math.max(apparentAge, correctedAgeValue)
}

/** §4.2.3 current_age = corrected_initial_age + resident_time, in ms. */
const currentAgeMs = (stored: StoredPolicy, initialAgeMs: number, now: number): number =>
  initialAgeMs + Math.max(0, now - stored.responseTime)

export const currentAgeSeconds = (stored: StoredPolicy, now: number): number =>
  currentAgeMs(
    stored,
    correctedInitialAge(stored, parseHttpDate(header(stored.responseHeaders, "date")) ?? stored.responseTime),
    now
  ) / 1000

export const freshnessLifetimeSeconds = (stored: StoredPolicy, options: PolicyOptions): number =>
  derive(stored, options).lifetimeMs / 1000

/** §4.2.4: stale responses may not be served without revalidation. */
const staleForbidden = (cc: CacheControl, options: PolicyOptions): boolean =>
  cc.noCache === true || cc.mustRevalidate || (options.shared && (cc.proxyRevalidate || cc.sMaxage !== undefined))

export const retainUntil = (stored: StoredPolicy, options: PolicyOptions): number => {
  const d = derive(stored, options)
  const expiresAt = stored.responseTime + d.lifetimeMs - d.initialAgeMs
  const staleWindow = staleForbidden(d.cc, options)
    ? 0
    : Math.max(d.cc.staleWhileRevalidate ?? 0, d.cc.staleIfError ?? 0) * 1000
  const hasValidator = header(stored.responseHeaders, "etag") !== undefined ||
    header(stored.responseHeaders, "last-modified") !== undefined
  const revalidationWindow = hasValidator
    ? Math.max(0, options.revalidationWindowMillis ?? DEFAULT_REVALIDATION_WINDOW_MILLIS)
    : 0
  return expiresAt + Math.max(staleWindow, revalidationWindow)
}

/** §5.1: the replay headers with the current Age; reuses the last record built for the same whole second. */
const withAge = (headers: Headers, derived: Derived, ageMs: number): Headers => {
  const seconds = Math.min(Math.floor(ageMs / 1000), MAX_DELTA_SECONDS)
  if (seconds !== derived.lastAge) {
    derived.lastHeaders = { ...headers, age: String(seconds) }
    derived.lastAge = seconds
  }
  return derived.lastHeaders
}

// ---------------------------------------------------------------------------------------------
// Lookup (§4)
// ---------------------------------------------------------------------------------------------

export const lookup = (
  stored: StoredPolicy,
  req: RequestSnapshot,
  now: number,
  options: PolicyOptions,
  mode: CacheMode = "default"
): Lookup => {
  const reqHeaders = lowerCaseNames(req.headers)
  const method = req.method.toUpperCase()
  // §4: the method must allow reuse; a stored GET answers HEAD (RFC 9110 §9.3.2), not the reverse.
  if (method !== stored.method && !(method === "HEAD" && stored.method === "GET")) return VARY_MISMATCH
  if (!varyMatchesHeaders(stored, reqHeaders)) return VARY_MISMATCH

  const d = derive(stored, options)
  const ageMs = currentAgeMs(stored, d.initialAgeMs, now)
  const age = ageMs / 1000
  const remainingMs = d.lifetimeMs - ageMs
  const ttl = remainingMs / 1000
  const headers = withAge(stored.responseHeaders, d, ageMs)

  if (!modeRules(mode).read) {
    return { _tag: "MustRevalidate", age, ttl, headers, conditional: EMPTY_HEADERS, serveIfErrorUntil: 0 }
  }
  if (servesAnyStored(mode)) return { _tag: "Fresh", age, ttl, headers }

  const cc = d.cc
  const reqCC = requestDirectives(reqHeaders)
  const fresh = remainingMs > 0
  const forbidden = staleForbidden(cc, options)
  const expiresAt = now + remainingMs
  // RFC 5861 §4: stale-if-error may come from the response or the request.
  const staleIfErrorMs = Math.max(cc.staleIfError ?? 0, reqCC.staleIfError ?? 0) * 1000
  const serveIfErrorUntil = cc.noCache === true
    ? 0
    : forbidden
    ? (fresh ? expiresAt : 0)
    : fresh || (staleIfErrorMs > 0 && expiresAt + staleIfErrorMs > now)
    ? expiresAt + staleIfErrorMs
    : 0

  const mustRevalidate = mode === "no-cache" || cc.noCache === true || reqCC.noCache ||
    // §5.2.1.1: request max-age; max-age=0 always asks for validation (what reloads send).
    (reqCC.maxAge !== undefined && (reqCC.maxAge === 0 || ageMs > reqCC.maxAge * 1000)) ||
    // §5.2.1.3: min-fresh: fresh for at least that many more seconds.
    (fresh && reqCC.minFresh !== undefined && remainingMs <= reqCC.minFresh * 1000)
  if (mustRevalidate) {
    return { _tag: "MustRevalidate", age, ttl, headers, conditional: conditionalHeaders(stored), serveIfErrorUntil }
  }
  if (fresh) return { _tag: "Fresh", age, ttl, headers }

  // Stale from here on. §5.2.1.2: the client accepts staleness up to max-stale (unless forbidden, §4.2.4).
  if (!forbidden && reqCC.maxStale !== undefined && -remainingMs <= reqCC.maxStale * 1000) {
    return { _tag: "Fresh", age, ttl, headers }
  }
  const conditional = conditionalHeaders(stored)
  if (forbidden) return { _tag: "MustRevalidate", age, ttl, headers, conditional, serveIfErrorUntil: 0 }
  const swr = cc.staleWhileRevalidate
  return {
    _tag: "Stale",
    age,
    ttl,
    headers,
    serveWhileRevalidate: swr !== undefined && -remainingMs < swr * 1000,
    serveIfErrorUntil,
    conditional
  }
}

// ---------------------------------------------------------------------------------------------
// Revalidation (§4.3)
// ---------------------------------------------------------------------------------------------

export const conditionalHeaders = (stored: StoredPolicy): Headers => {
  const etag = header(stored.responseHeaders, "etag")?.trim()
  const lastModified = header(stored.responseHeaders, "last-modified")
  const hasTag = etag !== undefined && etag.length > 0
  const hasDate = lastModified !== undefined && parseHttpDate(lastModified) !== undefined
  if (!hasTag && !hasDate) return EMPTY_HEADERS
  const out: Array<readonly [string, string]> = []
  if (hasTag) out.push(["if-none-match", etag])
  if (hasDate) out.push(["if-modified-since", lastModified.trim()])
  return fromEntries(out)
}

const opaqueTag = (tag: string): string => (tag.startsWith("W/") ? tag.slice(2) : tag)

/**
 * §4.3.4 selection, for the one stored response a conditional request was made from:
 * - a strong ETag in the 304 selects a stored response with the same strong ETag;
 * - a weak ETag selects one whose ETag matches by weak comparison;
 * - otherwise a Last-Modified selects one with the same Last-Modified;
 * - a 304 with no validator at all is taken to validate it: the request only named this response's
 *   validators (§4.3.4 selects a lone stored response in that case too).
 */
const validatorMatches = (stored: Headers, fresh: Headers): boolean => {
  const newTag = header(fresh, "etag")?.trim()
  const oldTag = header(stored, "etag")?.trim()
  if (newTag !== undefined && newTag.length > 0) {
    if (oldTag === undefined) return false
    if (!newTag.startsWith("W/")) return !oldTag.startsWith("W/") && oldTag === newTag
    return opaqueTag(oldTag) === opaqueTag(newTag)
  }
  const newDate = header(fresh, "last-modified")
  if (newDate !== undefined) {
    const a = parseHttpDate(newDate)
    return a !== undefined && a === parseHttpDate(header(stored, "last-modified"))
  }
  return true
}

/**
 * §3.2: fields a 304 does not overwrite because the stored body depends on them (its length, coding
 * and range), plus the ones never replayed. Date and Age of the stored response are replaced by the
 * 304's (or the receipt time), since the merged response is as old as the 304.
 */
const NOT_UPDATED: ReadonlySet<string> = new Set([
  "content-length",
  "content-encoding",
  "content-range",
  "set-cookie"
])

/** §3.2 / §4.3.4: the stored response updated with the header fields of a 304 (or a HEAD 200, §4.3.5). */
const merge = (
  stored: StoredPolicy,
  req: RequestSnapshot,
  incoming: Headers,
  times: Times,
  options: PolicyOptions
): Revalidation => {
  const merged = new Map<string, string>()
  for (const [name, value] of Object.entries(stored.responseHeaders)) {
    if (name !== "date" && name !== "age") merged.set(name, value)
  }
  for (const [name, value] of Object.entries(incoming)) {
    if (!NOT_UPDATED.has(name)) merged.set(name, value)
  }
  if (!merged.has("date")) merged.set("date", formatHttpDate(times.responseTime))
  const mergedHeaders = fromEntries(merged)
  const { cc } = responseDirectives(mergedHeaders, options)
  const policy: StoredPolicy = {
    ...stored,
    responseHeaders: replayHeaders(mergedHeaders, cc, options),
    requestTime: times.requestTime,
    responseTime: times.responseTime
  }
  // Whether the merged response may stay stored. The stored content came from the request that stored it, so
  // this request's Authorization does not make it user-specific (the 304's own directives still count, and a
  // request no-store still forbids the update).
  const storable = storability(
    { method: stored.method, url: stored.url, headers: without(lowerCaseNames(req.headers), ["authorization"]) },
    { status: stored.status, headers: mergedHeaders },
    options
  ).storable
  return { _tag: "Updated", policy, storable }
}

export const revalidated = (
  stored: StoredPolicy,
  req: RequestSnapshot,
  res304: ResponseSnapshot,
  times: Times,
  options: PolicyOptions
): Revalidation => {
  if (res304.status !== 304) return MISMATCH
  const incoming = stripHopByHop(lowerCaseNames(res304.headers))
  if (!validatorMatches(stored.responseHeaders, incoming)) return MISMATCH
  return merge(stored, req, incoming, times, options)
}

/**
 * §4.3.5: a 200 to a HEAD request updates a stored GET response when every validator it carries (ETag,
 * Last-Modified) has the stored value and its Content-Length, if any, is the stored one; otherwise the stored
 * response is to be considered stale (`Mismatch`).
 */
export const freshenedByHead = (
  stored: StoredPolicy,
  req: RequestSnapshot,
  headResponse: ResponseSnapshot,
  times: Times,
  options: PolicyOptions
): Revalidation => {
  if (stored.method !== "GET" || req.method.toUpperCase() !== "HEAD" || headResponse.status !== 200) return MISMATCH
  const incoming = stripHopByHop(lowerCaseNames(headResponse.headers))
  for (const name of ["etag", "last-modified", "content-length"]) {
    const value = header(incoming, name)
    if (value !== undefined && value.trim() !== header(stored.responseHeaders, name)?.trim()) return MISMATCH
  }
  return merge(stored, req, incoming, times, options)
}

// ---------------------------------------------------------------------------------------------
// Answering a client's conditional request (§4.3.2)
// ---------------------------------------------------------------------------------------------

const ENTITY_TAG = /(?:W\/)?"[^"]*"|\*/g

/** RFC 9110 §15.4.5: the fields a 304 carries (plus Age, and Last-Modified when there is no ETag). */
const keptIn304 = (name: string, hasTag: boolean): boolean =>
  name === "date" || name === "etag" || name === "vary" || name === "expires" || name === "content-location" ||
  name === "age" || name.endsWith("cache-control") || (!hasTag && name === "last-modified")

export const notModified = (headers: Headers, req: RequestSnapshot): Headers | undefined => {
  const method = req.method.toUpperCase()
  if (method !== "GET" && method !== "HEAD") return undefined
  const reqHeaders = lowerCaseNames(req.headers)
  const etag = header(headers, "etag")?.trim()
  const ifNoneMatch = header(reqHeaders, "if-none-match")
  let matches: boolean
  if (ifNoneMatch !== undefined) {
    // RFC 9110 §13.1.2: weak comparison; If-Modified-Since is then ignored (§13.2.2).
    const tags: ReadonlyArray<string> = ifNoneMatch.match(ENTITY_TAG) ?? []
    matches = tags.includes("*") ||
      (etag !== undefined && tags.some((tag) => opaqueTag(tag) === opaqueTag(etag)))
  } else {
    const since = parseHttpDate(header(reqHeaders, "if-modified-since"))
    // §4.3.2: compare with Last-Modified, or with Date when there is none.
    const modified = parseHttpDate(header(headers, "last-modified")) ?? parseHttpDate(header(headers, "date"))
    matches = since !== undefined && modified !== undefined && modified <= since
  }
  if (!matches) return undefined
  const hasTag = etag !== undefined
  return fromEntries(Object.entries(headers).filter(([name]) => keptIn304(name, hasTag)))
}

// ---------------------------------------------------------------------------------------------
// Invalidation (§4.4)
// ---------------------------------------------------------------------------------------------

const SAFE_METHODS: ReadonlySet<string> = new Set(["GET", "HEAD", "OPTIONS", "TRACE"])
const RELATIVE_BASE = "http://cachekit.invalid"

const tryUrl = (value: string, base?: string | URL): URL | undefined => {
  try {
    return new URL(value, base)
  } catch {
    return undefined
  }
}

export const invalidates = (req: RequestSnapshot, res: ResponseSnapshot): ReadonlyArray<string> => {
  if (SAFE_METHODS.has(req.method.toUpperCase())) return []
  if (!(res.status >= 200 && res.status < 400)) return []
  const target = req.url.split("#")[0]!
  const absolute = tryUrl(req.url)
  const reqHeaders = lowerCaseNames(req.headers)
  // A relative (origin-form) request URL: the origin is the Host header's.
  const base = absolute ?? tryUrl(req.url, `http://${header(reqHeaders, "host") ?? "cachekit.invalid"}`) ??
    tryUrl(req.url, RELATIVE_BASE)
  const out = [target]
  if (base === undefined) return out
  const resHeaders = lowerCaseNames(res.headers)
  for (const name of ["location", "content-location"]) {
    const value = header(resHeaders, name)?.trim()
    if (value === undefined || value.length === 0) continue
    const url = tryUrl(value, base)
    if (url === undefined) continue
    // Same origin only, so a response cannot evict another origin's entries.
    const sameOrigin = absolute !== undefined ? url.origin === base.origin : url.host === base.host
    if (!sameOrigin) continue
    url.hash = ""
    const formatted = absolute !== undefined ? url.href : url.pathname + url.search
    if (!out.includes(formatted)) out.push(formatted)
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// RFC 9211 Cache-Status, RFC 9213 targeted fields
// ---------------------------------------------------------------------------------------------

const SF_TOKEN = /^[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*$/
const MAX_SF_INTEGER = 999_999_999_999_999

/** An sf-string: printable ASCII only, `\` and `"` escaped. */
const sfString = (value: string): string =>
  `"${value.replace(/[^\x20-\x7e]/g, "?").replace(/[\\"]/g, (c) => `\\${c}`)}"`

const sfTokenOrString = (value: string): string => (SF_TOKEN.test(value) ? value : sfString(value))

const sfInteger = (n: number): string => String(Math.max(-MAX_SF_INTEGER, Math.min(MAX_SF_INTEGER, Math.trunc(n))) || 0)

export const cacheStatus = (name: string, info: CacheStatusInfo): string => {
  const parts = [sfTokenOrString(name)]
  if (info.hit) parts.push("hit")
  if (info.fwd !== undefined) parts.push(`fwd=${info.fwd}`)
  if (info.fwdStatus !== undefined && Number.isFinite(info.fwdStatus)) {
    parts.push(`fwd-status=${sfInteger(info.fwdStatus)}`)
  }
  if (info.ttl !== undefined && Number.isFinite(info.ttl)) parts.push(`ttl=${sfInteger(info.ttl)}`)
  if (info.stored === true) parts.push("stored")
  if (info.collapsed === true) parts.push("collapsed")
  if (info.key !== undefined) parts.push(`key=${sfString(info.key)}`)
  if (info.detail !== undefined) parts.push(`detail=${sfTokenOrString(info.detail)}`)
  return parts.join("; ")
}

export const stripTargeted = (headers: Headers, names: ReadonlyArray<string> = DEFAULT_TARGETED): Headers =>
  without(lowerCaseNames(headers), names.map((n) => n.toLowerCase()))
