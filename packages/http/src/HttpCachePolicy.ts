/**
 * HTTP caching rules (RFC 9111, RFC 5861, RFC 9211, RFC 9213) as pure functions over plain data: no
 * Effect runtime, no clock, no I/O. The HttpClient middleware and the caching proxy call these to
 * decide what to store, what to serve, when to revalidate and what to invalidate.
 *
 * Times are epoch milliseconds passed in by the caller (from Effect's `Clock`), so `TestClock` drives
 * every freshness decision. Header records use lower-case names; repeated fields are joined with ", ".
 *
 * @example
 * ```ts
 * import { HttpCachePolicy } from "@cachekit/http"
 *
 * const options: HttpCachePolicy.PolicyOptions = { shared: true }
 * if (HttpCachePolicy.storability(req, res, options).storable) {
 *   const policy = HttpCachePolicy.store(req, res, { requestTime, responseTime }, options)
 *   // later, for a new request:
 *   const decision = HttpCachePolicy.lookup(policy, req2, now, options)
 * }
 * ```
 *
 * @since 0.1.0
 */
import { Option, Schema } from "effect"
import type { CacheControl as CacheControlShape } from "./internal/cacheControl.js"
import * as cacheControl from "./internal/cacheControl.js"
import * as internal from "./internal/policy.js"
import * as headersInternal from "./internal/policyHeaders.js"

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/**
 * How one request uses the cache (the modes of the Fetch standard / Rust's http-cache):
 *
 * | mode             | read stored response                          | network          | store response          |
 * |------------------|-----------------------------------------------|------------------|-------------------------|
 * | `default`        | RFC 9111 rules (fresh / stale / revalidate)   | when needed      | RFC 9111 rules          |
 * | `no-store`       | never                                         | always           | never                   |
 * | `reload`         | never (unconditional request)                 | always           | RFC 9111 rules          |
 * | `no-cache`       | always revalidated (conditional request)      | always           | RFC 9111 rules          |
 * | `force-cache`    | any matching response, staleness ignored      | only on a miss   | RFC 9111 rules          |
 * | `only-if-cached` | any matching response, staleness ignored      | never (504 miss) | (nothing to store)      |
 * | `ignore-rules`   | any matching response, staleness ignored      | only on a miss   | any 200 to GET/HEAD     |
 *
 * "Matching" always includes Vary and the method: no mode serves one user's variant to another.
 */
export type CacheMode =
  | "default"
  | "no-store"
  | "reload"
  | "no-cache"
  | "force-cache"
  | "only-if-cached"
  | "ignore-rules"

/**
 * Header fields by lower-case name; repeated fields joined with ", ". Inputs in other case are accepted (names
 * are lower-cased on read); every record the policy returns uses lower-case names.
 */
export type Headers = Readonly<Record<string, string>>

/** The parts of a request the policy reads. `url` includes the query string. */
export interface RequestSnapshot {
  readonly method: string
  readonly url: string
  readonly headers: Headers
}

/** The parts of a response the policy reads (never the body). */
export interface ResponseSnapshot {
  readonly status: number
  readonly headers: Headers
}

/** Cache configuration, resolved once when a Layer is built. */
export interface PolicyOptions {
  /** `true` for a shared cache (proxy, CDN), `false` for a private (client) cache. */
  readonly shared: boolean
  /** RFC 9111 §4.2.2 heuristic: this fraction of (Date - Last-Modified). Default 0.1. */
  readonly heuristicFraction?: number
  /** Cap on any freshness lifetime (explicit or heuristic), in milliseconds. */
  readonly maxTtlMillis?: number
  /**
   * RFC 9213 targeted fields, lower-case, highest priority first. Shared caches only. Default
   * `["cdn-cache-control"]`; e.g. `["cachekit-cache-control", "cdn-cache-control"]`; `[]` disables.
   */
  readonly targetedCacheControl?: ReadonlyArray<string>
  /**
   * Statuses stored without explicit freshness (and eligible for heuristic freshness). Other statuses
   * are stored only with max-age, s-maxage (shared) or Expires. Default: RFC 9110 §15.1 heuristically
   * cacheable statuses 200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501.
   */
  readonly cacheableStatuses?: ReadonlySet<number>
  /**
   * How long past freshness (and its stale windows) {@link retainUntil} keeps a response that has a validator
   * (ETag / Last-Modified), so it can still be revalidated with a cheap 304. Default one hour.
   */
  readonly revalidationWindowMillis?: number
}

/** Parsed Cache-Control directives (lenient; see {@link parseCacheControl}). */
export type CacheControl = CacheControlShape

/** Current version of the {@link StoredPolicy} wire shape. Another version decodes as "no policy". */
export const STORED_POLICY_VERSION = 1

/**
 * What the cache keeps next to a stored body: enough to recompute every decision later. A Schema, so
 * it travels as JSON in `CacheEntry.meta` (see {@link encodeStoredPolicy} / {@link decodeStoredPolicy}).
 */
export const StoredPolicy = Schema.Struct({
  version: Schema.Literal(STORED_POLICY_VERSION),
  status: Schema.Number,
  /** End-to-end headers to replay: hop-by-hop, Set-Cookie and no-cache/private-named fields removed. */
  responseHeaders: Schema.Record({ key: Schema.String, value: Schema.String }),
  /** Epoch ms when the request was sent. */
  requestTime: Schema.Number,
  /** Epoch ms when the response arrived. */
  responseTime: Schema.Number,
  /** Normalised request values of the fields named by Vary (`null` = absent; a stored 206 adds Range), or `"*"`. */
  vary: Schema.Union(Schema.Literal("*"), Schema.Record({ key: Schema.String, value: Schema.NullOr(Schema.String) })),
  /** Upper-case request method (GET or HEAD). */
  method: Schema.String,
  url: Schema.String
})
/** @see StoredPolicy */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- named type for the Schema
export interface StoredPolicy extends Schema.Schema.Type<typeof StoredPolicy> {}

/** Why a response may or may not be stored. `reason` names the deciding rule. */
export interface Storability {
  readonly storable: boolean
  readonly reason: string
}

/**
 * What to do with a stored response for a request (RFC 9111 §4):
 * - `Fresh`: serve it (`headers` includes the current `Age`), no origin contact. Also returned for a stale
 *   response the request accepts (`max-stale`) and in `force-cache` / `only-if-cached` / `ignore-rules`.
 * - `Stale`: stale and serving stale is not forbidden. If `serveWhileRevalidate`, serve it now and
 *   revalidate in the background (RFC 5861); otherwise revalidate with `conditional` first, and if the
 *   origin fails (network error or 5xx) serve it while `now < serveIfErrorUntil` (stale-if-error).
 * - `MustRevalidate`: contact the origin first (with `conditional`, which may be empty); on failure the
 *   stored response may be served only while `now < serveIfErrorUntil` (0 when forbidden:
 *   must-revalidate, proxy-revalidate / s-maxage in a shared cache, no-cache).
 * - `VaryMismatch`: the stored response cannot answer this request (Vary values, `Vary: *`, method, or
 *   Range of a stored 206 differ): treat as a miss.
 *
 * `ttl` is the remaining freshness in seconds (negative once stale), for `Cache-Status: ttl=`.
 */
export type Lookup =
  | {
    readonly _tag: "Fresh"
    readonly age: number
    readonly ttl: number
    readonly headers: Headers
  }
  | {
    readonly _tag: "Stale"
    readonly age: number
    readonly ttl: number
    readonly headers: Headers
    readonly serveWhileRevalidate: boolean
    readonly serveIfErrorUntil: number
    readonly conditional: Headers
  }
  | {
    readonly _tag: "MustRevalidate"
    readonly age: number
    readonly ttl: number
    readonly headers: Headers
    readonly conditional: Headers
    readonly serveIfErrorUntil: number
  }
  | { readonly _tag: "VaryMismatch" }

/**
 * Result of merging a 304 into a stored response (RFC 9111 §4.3.4):
 * - `Updated`: serve the stored body with `policy.responseHeaders`; keep the entry only if `storable`
 *   (the 304 may have turned it into no-store / private).
 * - `Mismatch`: the 304's validator does not match this stored response: fetch unconditionally.
 */
export type Revalidation =
  | { readonly _tag: "Updated"; readonly policy: StoredPolicy; readonly storable: boolean }
  | { readonly _tag: "Mismatch" }

/** Request/response timing for the §4.2.3 age calculation (epoch ms). */
export interface Times {
  readonly requestTime: number
  readonly responseTime: number
}

/**
 * RFC 9211 Cache-Status parameters for one cache. §2.1: `hit` only when the response came from the cache
 * without going forward; a stored response validated by a 304 is `fwd: "stale", fwdStatus: 304`, not a hit.
 */
export interface CacheStatusInfo {
  readonly hit: boolean
  readonly fwd?: "uri-miss" | "vary-miss" | "miss" | "request" | "stale" | "partial" | "bypass" | "method"
  readonly fwdStatus?: number
  readonly stored?: boolean
  readonly ttl?: number
  readonly key?: string
  readonly detail?: string
  readonly collapsed?: boolean
}

/** What a mode does, for callers deciding whether to read the backend or the network at all. */
export interface ModeRules {
  /** Read the backend for a stored response. */
  readonly read: boolean
  /** Go to the network (on a miss or revalidation). `false`: answer 504 instead. */
  readonly network: boolean
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/**
 * Parses Cache-Control leniently and conservatively: case-insensitive names, quoted values accepted,
 * duplicates resolve to the most conservative value, invalid numbers in max-age / s-maxage read as 0.
 */
export const parseCacheControl: (value: string | undefined) => CacheControl = cacheControl.parseCacheControl

/** Parses an HTTP-date (IMF-fixdate, RFC 850, asctime) to epoch ms; `undefined` when invalid. */
export const parseHttpDate: (value: string | undefined) => number | undefined = cacheControl.parseHttpDate

/** Formats epoch ms as an IMF-fixdate. */
export const formatHttpDate: (ms: number) => string = cacheControl.formatHttpDate

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/** What the given mode does to reading, the network and (see {@link storability}) storing. */
export const modeRules: (mode: CacheMode) => ModeRules = internal.modeRules

/**
 * RFC 9111 §3 (+ §3.5 Authorization, §5.2): may this response be stored? Set-Cookie: a shared cache
 * does not store a response carrying Set-Cookie unless `no-cache="set-cookie"` / `private="set-cookie"`
 * names it (it is then stripped); no cache replays Set-Cookie from storage.
 */
export const storability: (
  req: RequestSnapshot,
  res: ResponseSnapshot,
  options: PolicyOptions,
  mode?: CacheMode
) => Storability = internal.storability

/** Builds the policy to keep with a (storable) response. */
export const store: (
  req: RequestSnapshot,
  res: ResponseSnapshot,
  times: Times,
  options: PolicyOptions
) => StoredPolicy = internal.store

/** RFC 9111 §4.1: do the request's values of the fields named by Vary match the stored ones? */
export const varyMatches: (stored: StoredPolicy, req: RequestSnapshot) => boolean = internal.varyMatches

/**
 * Secondary cache key for Vary: `""` when the response has no Vary, `"*"` for `Vary: *` (never
 * matches), otherwise the normalised request values of the named fields. Requests whose values differ
 * get different keys.
 */
export const varyKey: (varyHeader: string | undefined, req: RequestSnapshot) => string = internal.varyKey

/** RFC 9111 §4, §4.2, §4.2.4, §5.2.1, RFC 5861: what to do with a stored response for this request at `now`. */
export const lookup: (
  stored: StoredPolicy,
  req: RequestSnapshot,
  now: number,
  options: PolicyOptions,
  mode?: CacheMode
) => Lookup = internal.lookup

/** RFC 9111 §4.2.3: current age of a stored response at `now`, in seconds (fractional). */
export const currentAge: (stored: StoredPolicy, now: number) => number = internal.currentAgeSeconds

/** RFC 9111 §4.2.1: freshness lifetime of a stored response, in seconds (fractional). */
export const freshnessLifetime: (stored: StoredPolicy, options: PolicyOptions) => number =
  internal.freshnessLifetimeSeconds

/**
 * Epoch ms until which a backend should keep the entry: the end of freshness plus the longest stale
 * window (stale-while-revalidate, stale-if-error), or plus `revalidationWindowMillis` when a validator makes
 * revalidation useful.
 */
export const retainUntil: (stored: StoredPolicy, options: PolicyOptions) => number = internal.retainUntil

/** RFC 9111 §4.3.1: If-None-Match (from ETag) / If-Modified-Since (from Last-Modified) for a revalidation. */
export const conditionalHeaders: (stored: StoredPolicy) => Headers = internal.conditionalHeaders

/** RFC 9111 §4.3.3 / §4.3.4: merge a 304 into the stored response. */
export const revalidated: (
  stored: StoredPolicy,
  req: RequestSnapshot,
  res304: ResponseSnapshot,
  times: Times,
  options: PolicyOptions
) => Revalidation = internal.revalidated

/**
 * RFC 9111 §4.3.5: a 200 to a HEAD request freshens a stored GET response when its ETag, Last-Modified and
 * Content-Length (those it carries) equal the stored ones (`Updated`); otherwise (`Mismatch`) the stored
 * response should be treated as stale (dropped or revalidated before its next use).
 */
export const freshenedByHead: (
  stored: StoredPolicy,
  req: RequestSnapshot,
  headResponse: ResponseSnapshot,
  times: Times,
  options: PolicyOptions
) => Revalidation = internal.freshenedByHead

/**
 * RFC 9111 §4.3.2: may a client's own conditional request (If-None-Match, else If-Modified-Since) be answered
 * with 304 from the response the cache is about to serve? Pass the headers of a `Fresh` (or validated)
 * lookup. Returns the 304's headers (RFC 9110 §15.4.5 fields plus Age), or `undefined`: send the full response.
 */
export const notModified: (headers: Headers, req: RequestSnapshot) => Headers | undefined = internal.notModified

/**
 * RFC 9111 §5.2.1.7 + modes: must this request be answered from the cache only (504 on a miss or when
 * the stored response would need the origin)?
 */
export const forbidsNetwork: (req: RequestSnapshot, mode?: CacheMode) => boolean = internal.forbidsNetwork

/**
 * RFC 9111 §4.4: URLs whose stored responses this unsafe request invalidates: the target URI, plus
 * Location and Content-Location when same-origin; only for non-error (2xx, 3xx) responses. Relative
 * request URLs give relative (path + query) results.
 */
export const invalidates: (req: RequestSnapshot, res: ResponseSnapshot) => ReadonlyArray<string> = internal.invalidates

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

/**
 * RFC 9211 Cache-Status member, e.g. `cachekit; hit; ttl=42` or `cachekit; fwd=miss; fwd-status=200; stored`.
 */
export const cacheStatus: (name: string, info: CacheStatusInfo) => string = internal.cacheStatus

/** Removes hop-by-hop headers: Connection, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade and the fields Connection names. */
export const stripHopByHop: (headers: Headers) => Headers = headersInternal.stripHopByHop

/** RFC 9213: removes targeted cache-control fields (default `cdn-cache-control`) before forwarding downstream. */
export const stripTargeted: (headers: Headers, names?: ReadonlyArray<string>) => Headers = internal.stripTargeted

/** Encodes a stored policy as JSON (for `CacheEntry.meta`). */
export const encodeStoredPolicy = (policy: StoredPolicy): string => JSON.stringify(policy)

const decodeJson = Schema.decodeUnknownOption(Schema.parseJson(StoredPolicy))
// Hits decode the same JSON again and again: remember recent results (policies are immutable, so sharing is
// safe, and a shared object also keeps the per-policy memo of parsed headers warm).
const recentlyDecoded = new Map<string, StoredPolicy>()
const RECENTLY_DECODED_MAX = 512

/**
 * Decodes a stored policy; `undefined` for malformed JSON or another version (treat as a miss). Recent results
 * are reused, so a hit does not pay for a Schema decode.
 */
export const decodeStoredPolicy = (json: string): StoredPolicy | undefined => {
  const recent = recentlyDecoded.get(json)
  if (recent !== undefined) return recent
  const decoded = Option.getOrUndefined(decodeJson(json))
  if (decoded !== undefined) {
    if (recentlyDecoded.size >= RECENTLY_DECODED_MAX) {
      recentlyDecoded.delete(recentlyDecoded.keys().next().value!)
    }
    recentlyDecoded.set(json, decoded)
  }
  return decoded
}
