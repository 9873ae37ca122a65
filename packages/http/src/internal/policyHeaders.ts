/**
 * Header-record helpers for the cache policy: own-property reads (header names come from the network,
 * so `constructor` or `__proto__` must never reach the prototype), hop-by-hop stripping, and Vary
 * normalisation.
 */

export type Headers = Readonly<Record<string, string>>

const hasOwn = Object.prototype.hasOwnProperty

/** Reads a header by its lower-case name, own properties only. */
export const header = (headers: Headers, name: string): string | undefined =>
  hasOwn.call(headers, name) ? headers[name] : undefined

/** Builds a header record from entries without ever touching the prototype (`__proto__` stays a key). */
export const fromEntries = (entries: Iterable<readonly [string, string]>): Headers => Object.fromEntries(entries)

/** Lower-cases names; a repeated name (different case) is joined with ", ". */
export const lowerCaseNames = (headers: Headers): Headers => {
  let clean = true
  for (const name of Object.keys(headers)) {
    if (name !== name.toLowerCase()) {
      clean = false
      break
    }
  }
  if (clean) return headers
  const out = new Map<string, string>()
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase()
    const prev = out.get(lower)
    out.set(lower, prev === undefined ? value : `${prev}, ${value}`)
  }
  return fromEntries(out)
}

/**
 * RFC 9110 §7.6.1 hop-by-hop fields, plus the legacy ones proxies strip (Keep-Alive, Proxy-Connection)
 * and the proxy credentials (Proxy-Authenticate / Proxy-Authorization are meant for one hop).
 */
const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade"
])

/** Removes hop-by-hop headers and every field named in Connection. Names must be lower-case. */
export const stripHopByHop = (headers: Headers): Headers => {
  const connection = header(headers, "connection")
  const named = connection === undefined
    ? undefined
    : new Set(connection.split(",").map((s) => s.trim().toLowerCase()).filter((s) => s.length > 0))
  let touched = false
  for (const name of Object.keys(headers)) {
    if (HOP_BY_HOP.has(name) || named?.has(name) === true) {
      touched = true
      break
    }
  }
  if (!touched) return headers
  return fromEntries(
    Object.entries(headers).filter(([name]) => !HOP_BY_HOP.has(name) && named?.has(name) !== true)
  )
}

/** Removes the named fields (names lower-case). Returns the same record when nothing is removed. */
export const without = (headers: Headers, names: ReadonlyArray<string>): Headers => {
  if (names.length === 0 || !names.some((n) => hasOwn.call(headers, n))) return headers
  const drop = new Set(names)
  return fromEntries(Object.entries(headers).filter(([name]) => !drop.has(name)))
}

/** Field names listed in a Vary value, lower-cased; `"*"` when it contains `*` (or `__proto__`). */
export const varyNames = (value: string | undefined): ReadonlyArray<string> | "*" => {
  if (value === undefined) return []
  const names: Array<string> = []
  for (const raw of value.split(",")) {
    const name = raw.trim().toLowerCase()
    if (name.length === 0) continue
    // "__proto__" cannot survive a JSON/Schema round trip as a record key; never matching is the safe reading.
    if (name === "*" || name === "__proto__") return "*"
    if (!names.includes(name)) names.push(name)
  }
  return names
}

/**
 * Request fields whose values are case-insensitive tokens / media ranges / language tags, so lower-casing
 * them cannot merge two requests that deserve different responses. Other fields keep their case.
 */
const CASE_INSENSITIVE: ReadonlySet<string> = new Set([
  "accept",
  "accept-encoding",
  "accept-charset",
  "accept-language",
  "te",
  "sec-ch-ua-mobile",
  "save-data"
])

/**
 * Normalises a request field value for Vary matching (RFC 9111 §4.1 allows normalising whitespace and
 * case where the field's syntax makes that safe): leading/trailing whitespace removed, runs of
 * whitespace collapsed, whitespace around `,` `;` `=` removed, and tokens lower-cased for the fields
 * above. `null` stands for "absent", which only matches absent.
 */
export const normaliseVaryValue = (name: string, value: string | undefined): string | null => {
  if (value === undefined) return null
  // Fast path for the common value without whitespace (e.g. "gzip,br", "en-US").
  const v = value.indexOf(" ") === -1 && value.indexOf("\t") === -1 ? value : collapseWhitespace(value)
  return CASE_INSENSITIVE.has(name) ? v.toLowerCase() : v
}

const isSeparator = (c: string): boolean => c === "," || c === ";" || c === "="

/** Drops leading/trailing blanks and blanks next to `,` `;` `=`; other runs of blanks become one space. */
const collapseWhitespace = (value: string): string => {
  let out = ""
  let blank = false
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!
    if (c === " " || c === "\t") {
      blank = true
    } else if (isSeparator(c)) {
      out += c
      blank = false
    } else {
      if (blank && out.length > 0 && !isSeparator(out[out.length - 1]!)) out += " "
      out += c
      blank = false
    }
  }
  return out
}
