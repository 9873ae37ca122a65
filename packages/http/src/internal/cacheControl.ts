/**
 * Lenient, conservative parsers for the header fields the HTTP cache policy reads:
 * Cache-Control (RFC 9111 §5.2), delta-seconds (§1.2.2), HTTP-date (RFC 9110 §5.6.7), Age (§5.1).
 *
 * Every parser is total: malformed input never throws, it resolves to the reading that is safest for a
 * cache (less freshness, more revalidation).
 */

/** Parsed Cache-Control directives (request and response directives share one shape). */
export interface CacheControl {
  readonly maxAge?: number
  readonly sMaxage?: number
  readonly noStore: boolean
  /** `true` for the bare directive; the (lower-cased) field names for `no-cache="a, b"`. */
  readonly noCache: boolean | ReadonlyArray<string>
  /** `true` for the bare directive; the (lower-cased) field names for `private="a, b"`. */
  readonly private: boolean | ReadonlyArray<string>
  readonly public: boolean
  readonly mustRevalidate: boolean
  readonly proxyRevalidate: boolean
  readonly mustUnderstand: boolean
  readonly immutable: boolean
  readonly staleWhileRevalidate?: number
  readonly staleIfError?: number
  /** Request directive; `Infinity` when sent without a value. */
  readonly maxStale?: number
  readonly minFresh?: number
  readonly onlyIfCached: boolean
  readonly noTransform: boolean
}

/** RFC 9111 §1.2.2: delta-seconds larger than this are sent (and treated) as 2^31. */
export const MAX_DELTA_SECONDS = 2147483648

interface Mutable {
  maxAge?: number
  sMaxage?: number
  noStore: boolean
  noCache: boolean | Array<string>
  private: boolean | Array<string>
  public: boolean
  mustRevalidate: boolean
  proxyRevalidate: boolean
  mustUnderstand: boolean
  immutable: boolean
  staleWhileRevalidate?: number
  staleIfError?: number
  maxStale?: number
  minFresh?: number
  onlyIfCached: boolean
  noTransform: boolean
}

const EMPTY: CacheControl = Object.freeze({
  noStore: false,
  noCache: false,
  private: false,
  public: false,
  mustRevalidate: false,
  proxyRevalidate: false,
  mustUnderstand: false,
  immutable: false,
  onlyIfCached: false,
  noTransform: false
})

/**
 * RFC 9111 §1.2.2 delta-seconds: `1*DIGIT`, capped at 2^31. Anything else is `undefined` (invalid).
 * A quoted value (`max-age="60"`) is accepted: §5.2 lets recipients be lenient about the quoted form.
 */
export const parseDeltaSeconds = (value: string): number | undefined => {
  if (!/^[0-9]+$/.test(value)) return undefined
  // Long digit strings overflow to Infinity in Number(); the cap handles both.
  const n = Number(value)
  return n > MAX_DELTA_SECONDS ? MAX_DELTA_SECONDS : n
}

/**
 * Splits a field value on commas that are not inside a quoted-string. A quote opens a quoted-string
 * only as a directive's argument (right after `=`): a stray `"` elsewhere is an ordinary character.
 * An argument left unterminated runs to the end (it hides what follows it); the directives it hides
 * are returned too, so that the restrictive ones among them still apply (the safe side).
 */
const splitDirectives = (value: string): { readonly parts: Array<string>; readonly hidden: Array<string> } => {
  const parts: Array<string> = []
  let start = 0
  let quoteStart = 0
  let inQuotes = false
  let afterEquals = false
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i)
    if (inQuotes) {
      if (c === 92 /* \ */) i++
      else if (c === 34 /* " */) inQuotes = false
    } else if (c === 34 && afterEquals) {
      inQuotes = true
      quoteStart = i + 1
    } else if (c === 44 /* , */) {
      parts.push(value.slice(start, i))
      start = i + 1
    }
    if (c !== 32 && c !== 9) afterEquals = !inQuotes && c === 61 /* = */
  }
  parts.push(value.slice(start))
  return { parts, hidden: inQuotes ? value.slice(quoteStart).split(",") : [] }
}

/** Strips surrounding quotes and backslash escapes; an unterminated quote runs to the end. */
const unquote = (raw: string): string => {
  const v = raw.trim()
  if (!v.startsWith("\"")) return v
  let out = ""
  for (let i = 1; i < v.length; i++) {
    const c = v[i]!
    if (c === "\\") {
      i++
      if (i < v.length) out += v[i]
    } else if (c === "\"") {
      break
    } else {
      out += c
    }
  }
  return out
}

const fieldNames = (value: string): Array<string> =>
  value.split(",").map((s) => s.trim().toLowerCase()).filter((s) => s.length > 0)

/** Bare form wins over the field-name form (it is the more conservative one); field lists are merged. */
const mergeFieldForm = (
  current: boolean | Array<string>,
  value: string | undefined
): boolean | Array<string> => {
  if (current === true) return true
  if (value === undefined) return true
  const names = fieldNames(value)
  // `no-cache=""` names nothing: read it as the bare (stricter) directive.
  if (names.length === 0) return true
  return current === false ? names : [...current, ...names.filter((n) => !current.includes(n))]
}

const minDefined = (a: number | undefined, b: number): number => a === undefined ? b : Math.min(a, b)

/**
 * Parses a Cache-Control field value (request or response) and returns the directives plus how many
 * recognised or unknown directives it held (RFC 9213 ignores a targeted field with no valid directive).
 *
 * Leniency, always towards the safe side (RFC 9111 §4.2.1, §5.2):
 * - directive names are case-insensitive; unknown directives are ignored;
 * - duplicates resolve to the most conservative value (smallest max-age / s-maxage / max-stale /
 *   stale-* windows, largest min-fresh, bare `no-cache`/`private` over field lists);
 * - an invalid or missing number in max-age / s-maxage (request or response) reads as 0 (stale);
 *   in max-stale (with a value), stale-while-revalidate, stale-if-error and min-fresh it reads as 0 too
 *   (no stale allowance; min-fresh 0 adds nothing).
 */
export const parseCacheControlCounted = (value: string | undefined): readonly [CacheControl, number] => {
  if (value === undefined || value.length === 0) return EMPTY_RESULT
  // Origins repeat the same few values: reuse the (frozen) result of a recent parse.
  const recent = recentlyParsed.get(value)
  if (recent !== undefined) return recent
  const result = parseUncached(value)
  if (value.length <= MEMO_MAX_LENGTH) {
    if (recentlyParsed.size >= MEMO_MAX_ENTRIES) recentlyParsed.delete(recentlyParsed.keys().next().value!)
    recentlyParsed.set(value, result)
  }
  return result
}

const EMPTY_RESULT: readonly [CacheControl, number] = Object.freeze([EMPTY, 0] as const)
const MEMO_MAX_ENTRIES = 256
const MEMO_MAX_LENGTH = 256
const recentlyParsed = new Map<string, readonly [CacheControl, number]>()

const parseUncached = (value: string): readonly [CacheControl, number] => {
  const cc: Mutable = { ...EMPTY, noCache: false, private: false }
  let count = 0
  const { hidden, parts } = splitDirectives(value)
  for (const part of hidden) {
    // Inside an unterminated argument: only what makes the response less reusable counts.
    switch (part.split("=")[0]!.trim().toLowerCase()) {
      case "no-store":
        cc.noStore = true
        break
      case "no-cache":
        cc.noCache = true
        break
      case "private":
        cc.private = true
        break
      case "must-revalidate":
        cc.mustRevalidate = true
        break
      case "proxy-revalidate":
        cc.proxyRevalidate = true
        break
    }
  }
  for (const part of parts) {
    const eq = part.indexOf("=")
    const name = (eq === -1 ? part : part.slice(0, eq)).trim().toLowerCase()
    if (name.length === 0) continue
    count++
    const arg = eq === -1 ? undefined : unquote(part.slice(eq + 1))
    const seconds = arg === undefined ? 0 : (parseDeltaSeconds(arg) ?? 0)
    switch (name) {
      case "max-age":
        cc.maxAge = minDefined(cc.maxAge, seconds)
        break
      case "s-maxage":
        cc.sMaxage = minDefined(cc.sMaxage, seconds)
        break
      case "no-store":
        cc.noStore = true
        break
      case "no-cache":
        cc.noCache = mergeFieldForm(cc.noCache, arg)
        break
      case "private":
        cc.private = mergeFieldForm(cc.private, arg)
        break
      case "public":
        cc.public = true
        break
      case "must-revalidate":
        cc.mustRevalidate = true
        break
      case "proxy-revalidate":
        cc.proxyRevalidate = true
        break
      case "must-understand":
        cc.mustUnderstand = true
        break
      case "immutable":
        cc.immutable = true
        break
      case "stale-while-revalidate":
        cc.staleWhileRevalidate = minDefined(cc.staleWhileRevalidate, seconds)
        break
      case "stale-if-error":
        cc.staleIfError = minDefined(cc.staleIfError, seconds)
        break
      case "max-stale":
        cc.maxStale = minDefined(cc.maxStale, arg === undefined ? Number.POSITIVE_INFINITY : seconds)
        break
      case "min-fresh":
        cc.minFresh = Math.max(cc.minFresh ?? 0, seconds)
        break
      case "only-if-cached":
        cc.onlyIfCached = true
        break
      case "no-transform":
        cc.noTransform = true
        break
    }
  }
  if (typeof cc.noCache !== "boolean") Object.freeze(cc.noCache)
  if (typeof cc.private !== "boolean") Object.freeze(cc.private)
  return Object.freeze([Object.freeze(cc), count] as const)
}

/** Parses a Cache-Control field value; see {@link parseCacheControlCounted} for the leniency rules. */
export const parseCacheControl = (value: string | undefined): CacheControl => parseCacheControlCounted(value)[0]

// ---------------------------------------------------------------------------------------------
// HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, obsolete RFC 850 and asctime formats.
// ---------------------------------------------------------------------------------------------

const MONTHS: Readonly<Record<string, number>> = {
  jan: 0,
  feb: 1,
  mar: 2,
  apr: 3,
  may: 4,
  jun: 5,
  jul: 6,
  aug: 7,
  sep: 8,
  oct: 9,
  nov: 10,
  dec: 11
}

const IMF_FIXDATE = /^[A-Za-z]{3}, (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$/
const RFC850 = /^[A-Za-z]{6,9}, (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT$/
const ASCTIME = /^[A-Za-z]{3} ([A-Za-z]{3}) ( \d|\d{2}) (\d{2}):(\d{2}):(\d{2}) (\d{4})$/

const utc = (
  year: number,
  monthName: string,
  day: number,
  hour: number,
  minute: number,
  second: number
): number | undefined => {
  const month = Object.prototype.hasOwnProperty.call(MONTHS, monthName.toLowerCase())
    ? MONTHS[monthName.toLowerCase()]
    : undefined
  if (month === undefined || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) return undefined
  const ms = Date.UTC(year, month, day, hour, minute, Math.min(second, 59))
  // Reject days that roll over into the next month (e.g. 31 Feb).
  return new Date(ms).getUTCDate() === day ? ms : undefined
}

/**
 * Parses an HTTP-date to epoch milliseconds; `undefined` when invalid. Deliberately strict (no
 * `Date.parse`, which reads "0" as the year 2000): callers treat an invalid Expires as already expired
 * (RFC 9111 §5.3) and an invalid Date as absent.
 */
export const parseHttpDate = (value: string | undefined): number | undefined => {
  if (value === undefined) return undefined
  const v = value.trim()
  let m = IMF_FIXDATE.exec(v)
  if (m !== null) return utc(Number(m[3]), m[2]!, Number(m[1]), Number(m[4]), Number(m[5]), Number(m[6]))
  m = RFC850.exec(v)
  if (m !== null) {
    // RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is in the past century.
    const yy = Number(m[3])
    const thisYear = new Date().getUTCFullYear()
    let year = Math.floor(thisYear / 100) * 100 + yy
    if (year > thisYear + 50) year -= 100
    return utc(year, m[2]!, Number(m[1]), Number(m[4]), Number(m[5]), Number(m[6]))
  }
  m = ASCTIME.exec(v)
  if (m !== null) return utc(Number(m[6]), m[1]!, Number(m[2]!.trim()), Number(m[3]), Number(m[4]), Number(m[5]))
  return undefined
}

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"] as const
const MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"] as const
const pad2 = (n: number): string => (n < 10 ? "0" : "") + n

/** Formats epoch milliseconds as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`). */
export const formatHttpDate = (ms: number): string => {
  const d = new Date(Number.isFinite(ms) ? ms : 0)
  return `${DAYS[d.getUTCDay()]}, ${pad2(d.getUTCDate())} ${MONTH_NAMES[d.getUTCMonth()]} ${
    String(d.getUTCFullYear()).padStart(4, "0")
  } ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} GMT`
}

/**
 * RFC 9111 §5.1 / §4.2.3 age_value in seconds: 0 when absent or invalid ("not available"). Several
 * values (a joined, repeated field) resolve to the largest valid one: the conservative reading.
 */
export const parseAge = (value: string | undefined): number => {
  if (value === undefined) return 0
  let age = 0
  for (const part of value.split(",")) {
    const n = parseDeltaSeconds(part.trim())
    if (n !== undefined && n > age) age = n
  }
  return age
}
