/**
 * RFC 9110 §14 byte ranges for `HttpServerCache`: parsing `Range: bytes=...`, `If-Range`, and the
 * `Content-Range` of a 206 / 416.
 *
 * @internal
 */

/** An inclusive byte interval of a representation. */
export interface ByteRange {
  readonly start: number
  readonly end: number
}

export type RangeRequest =
  /** No usable Range header (absent, another unit, malformed): serve the whole representation (§14.2). */
  | { readonly _tag: "Whole" }
  | { readonly _tag: "Ranges"; readonly ranges: ReadonlyArray<ByteRange> }
  /** Every range starts past the end (§15.5.17 416). */
  | { readonly _tag: "Unsatisfiable" }

const WHOLE: RangeRequest = { _tag: "Whole" }
const UNSATISFIABLE: RangeRequest = { _tag: "Unsatisfiable" }

/** More ranges than this in one request is treated as no Range at all (§14.2 allows ignoring it). */
const MAX_RANGES = 16

/**
 * Parses a `Range` header against a representation of `size` bytes. Suffix ranges (`-500`) and
 * open ranges (`9500-`) are resolved; ends past the size are clamped; overlapping ranges are kept
 * as sent (the caller decides whether it serves more than one).
 */
export const parseRange = (header: string | undefined, size: number): RangeRequest => {
  if (header === undefined) return WHOLE
  const eq = header.indexOf("=")
  if (eq === -1 || header.slice(0, eq).trim().toLowerCase() !== "bytes") return WHOLE
  const specs = header.slice(eq + 1).split(",")
  if (specs.length > MAX_RANGES) return WHOLE
  const ranges: Array<ByteRange> = []
  for (const raw of specs) {
    const spec = raw.trim()
    const match = /^(\d*)-(\d*)$/.exec(spec)
    if (match === null) return WHOLE
    const first = match[1]!
    const last = match[2]!
    if (first === "") {
      // Suffix: the last N bytes.
      if (last === "") return WHOLE
      const length = Number(last)
      if (length === 0) continue
      ranges.push({ start: Math.max(0, size - length), end: size - 1 })
      continue
    }
    const start = Number(first)
    const end = last === "" ? size - 1 : Number(last)
    if (last !== "" && end < start) return WHOLE
    if (start >= size) continue
    ranges.push({ start, end: Math.min(end, size - 1) })
  }
  return ranges.length === 0 ? UNSATISFIABLE : { _tag: "Ranges", ranges }
}

/** `Content-Range` of a 206. */
export const contentRange = (range: ByteRange, size: number): string => `bytes ${range.start}-${range.end}/${size}`

/** `Content-Range` of a 416. */
export const unsatisfiedRange = (size: number): string => `bytes */${size}`

/**
 * RFC 9110 §13.1.5 If-Range: the Range applies only when the validator matches the stored
 * representation exactly: an entity tag by strong comparison, a date equal to a Last-Modified.
 * Absent If-Range: the Range applies.
 */
export const ifRangeAllows = (
  ifRange: string | undefined,
  etag: string | undefined,
  lastModified: string | undefined
): boolean => {
  if (ifRange === undefined) return true
  const value = ifRange.trim()
  if (value.startsWith("\"") || value.startsWith("W/")) {
    // Weak tags never match in a strong comparison.
    return etag !== undefined && !value.startsWith("W/") && !etag.startsWith("W/") && value === etag.trim()
  }
  if (lastModified === undefined) return false
  const a = Date.parse(value)
  const b = Date.parse(lastModified)
  return Number.isFinite(a) && a === b
}
