/**
 * A stored cache entry: the value's bytes plus the metadata every backend keeps with it, and the
 * versioned wire format backends use to store it.
 *
 * @since 0.1.0
 */
import type { Effect } from "effect"
import { Either, Schema } from "effect"
import { DecodeError } from "./CacheError.js"

/**
 * One cache entry. Times are epoch milliseconds taken from Effect's `Clock`;
 * `expiresAt` ends freshness, `staleUntil` (>= expiresAt) ends the grace window in which a stale
 * value may still be served. `Infinity` means "never".
 */
export interface CacheEntry {
  readonly value: Uint8Array
  readonly createdAt: number
  readonly expiresAt: number
  readonly staleUntil: number
  readonly tags: ReadonlyArray<string>
  /** Bytes of `value` (kept separately so backends that stream can fill it in without the body). */
  readonly size: number
  /** Small string metadata (content type, HTTP policy, codec id...). */
  readonly meta?: Readonly<Record<string, string>> | undefined
}

/** Builds an entry; `size` defaults to the value's byte length, `staleUntil` to `expiresAt`. */
export const make = (options: {
  readonly value: Uint8Array
  readonly createdAt: number
  readonly expiresAt: number
  readonly staleUntil?: number | undefined
  readonly tags?: ReadonlyArray<string> | undefined
  readonly size?: number | undefined
  readonly meta?: Readonly<Record<string, string>> | undefined
}): CacheEntry => ({
  value: options.value,
  createdAt: options.createdAt,
  expiresAt: options.expiresAt,
  staleUntil: Math.max(options.staleUntil ?? options.expiresAt, options.expiresAt),
  tags: options.tags ?? [],
  size: options.size ?? options.value.byteLength,
  meta: options.meta
})

/** Fresh: now is before `expiresAt`. */
export const isFresh = (entry: CacheEntry, now: number): boolean => now < entry.expiresAt

/** Still servable (fresh, or stale inside the grace window). */
export const isServable = (entry: CacheEntry, now: number): boolean => now < entry.staleUntil

/** Milliseconds a backend must keep the entry (until `staleUntil`), or `undefined` for "forever". */
export const retainMillis = (entry: CacheEntry, now: number): number | undefined =>
  Number.isFinite(entry.staleUntil) ? Math.max(1, Math.ceil(entry.staleUntil - now)) : undefined

// ---------------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------------

/** Current wire format version. A reader ignores (treats as a miss) any other version. */
export const WIRE_VERSION = 1

const FiniteOrNever = Schema.NullOr(Schema.Number)

/** The metadata header of the wire format, as a Schema (versioned). */
export const WireHeader = Schema.Struct({
  v: Schema.Literal(WIRE_VERSION),
  createdAt: Schema.Number,
  expiresAt: FiniteOrNever,
  staleUntil: FiniteOrNever,
  tags: Schema.Array(Schema.String),
  size: Schema.Number,
  meta: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String }))
})
export type WireHeader = typeof WireHeader.Type

const decodeHeader = Schema.decodeUnknownEither(WireHeader)

const isTimeOrNull = (u: unknown): boolean => u === null || typeof u === "number"

/** True when `u` has exactly the shape of a `WireHeader` (the common case), checked without the Schema runtime. */
const isPlainHeader = (u: unknown): u is WireHeader => {
  if (typeof u !== "object" || u === null || Array.isArray(u)) return false
  const h = u as Record<string, unknown>
  if (h.v !== WIRE_VERSION || typeof h.createdAt !== "number" || typeof h.size !== "number") return false
  if (!isTimeOrNull(h.expiresAt) || !isTimeOrNull(h.staleUntil)) return false
  const tags = h.tags
  if (!Array.isArray(tags)) return false
  for (let i = 0; i < tags.length; i++) if (typeof tags[i] !== "string") return false
  const meta = h.meta
  if (meta !== undefined) {
    if (typeof meta !== "object" || meta === null || Array.isArray(meta)) return false
    for (const k in meta) if (typeof (meta as Record<string, unknown>)[k] !== "string") return false
  }
  for (const k in h) {
    if (
      k !== "v" && k !== "createdAt" && k !== "expiresAt" && k !== "staleUntil" && k !== "tags" && k !== "size" &&
      k !== "meta"
    ) return false
  }
  return true
}
const encoder = new TextEncoder()
const decoder = new TextDecoder("utf-8", { fatal: true })

/** Magic bytes "CK" then the version byte, so foreign or truncated data is rejected early. */
const MAGIC_0 = 0x43
const MAGIC_1 = 0x4b

/**
 * Encodes an entry as: "CK", version byte, u32 big-endian header length, header JSON, value bytes.
 * The header is the `WireHeader` schema; the value is stored raw (binary safe, no base64).
 */
export const encode = (entry: CacheEntry): Uint8Array => {
  const header: WireHeader = {
    v: WIRE_VERSION,
    createdAt: entry.createdAt,
    expiresAt: Number.isFinite(entry.expiresAt) ? entry.expiresAt : null,
    staleUntil: Number.isFinite(entry.staleUntil) ? entry.staleUntil : null,
    tags: entry.tags,
    size: entry.size,
    ...(entry.meta === undefined ? {} : { meta: entry.meta })
  }
  const headerBytes = encoder.encode(JSON.stringify(header))
  const out = new Uint8Array(7 + headerBytes.byteLength + entry.value.byteLength)
  out[0] = MAGIC_0
  out[1] = MAGIC_1
  out[2] = WIRE_VERSION
  new DataView(out.buffer, out.byteOffset, out.byteLength).setUint32(3, headerBytes.byteLength)
  out.set(headerBytes, 7)
  out.set(entry.value, 7 + headerBytes.byteLength)
  return out
}

// The header as `encode` writes it, read straight from the bytes (no string, no JSON.parse): on an
// L2 hit JSON.parse alone costs about a tenth of a loopback Redis GET. Only the exact layout `encode`
// produces is accepted, with integer times of at most 15 digits (exact in a double) and strings of
// printable ASCII without escapes; anything else returns `undefined` and goes the general way
// (JSON.parse, then the shape check or the Schema), so both ways give the same entry.

const OPEN_V = bytesOf(`{"v":${WIRE_VERSION},"createdAt":`)
const EXPIRES = bytesOf(`,"expiresAt":`)
const STALE = bytesOf(`,"staleUntil":`)
const TAGS = bytesOf(`,"tags":[`)
const SIZE = bytesOf(`,"size":`)
const META = bytesOf(`,"meta":{`)
const NULL = bytesOf("null")
const QUOTE = 0x22
const COMMA = 0x2c
const COLON = 0x3a
const CLOSE_BRACKET = 0x5d
const CLOSE_BRACE = 0x7d

function bytesOf(s: string): Uint8Array {
  return new TextEncoder().encode(s)
}

/** A cursor over the header bytes; `ok` turns false at the first thing the fast reader does not take. */
class HeaderReader {
  ok = true
  constructor(readonly b: Uint8Array, public at: number, readonly end: number) {}

  literal(lit: Uint8Array): boolean {
    const { at, b } = this
    if (at + lit.length > this.end) return (this.ok = false)
    for (let i = 0; i < lit.length; i++) if (b[at + i] !== lit[i]) return (this.ok = false)
    this.at = at + lit.length
    return true
  }

  byte(c: number): boolean {
    if (this.at >= this.end || this.b[this.at] !== c) return (this.ok = false)
    this.at++
    return true
  }

  peek(): number {
    return this.at < this.end ? this.b[this.at]! : -1
  }

  /** A non-negative integer of 1 to 15 digits (no leading zero), as JSON.parse reads it. */
  integer(): number {
    const { b, end } = this
    const start = this.at
    let at = start
    let n = 0
    while (at < end) {
      const c = b[at]!
      if (c < 0x30 || c > 0x39) break
      n = n * 10 + (c - 0x30)
      at++
    }
    const digits = at - start
    if (digits === 0 || digits > 15 || (digits > 1 && b[start] === 0x30)) {
      this.ok = false
      return 0
    }
    // a fraction or an exponent follows: leave it to JSON.parse
    const next = at < end ? b[at]! : -1
    if (next !== COMMA && next !== CLOSE_BRACE && next !== CLOSE_BRACKET) this.ok = false
    this.at = at
    return n
  }

  integerOrNull(): number | null {
    if (this.peek() === 0x6e) {
      this.literal(NULL)
      return null
    }
    return this.integer()
  }

  /** A string of printable ASCII without escapes. */
  string(): string {
    if (!this.byte(QUOTE)) return ""
    const { b, end } = this
    const start = this.at
    let at = start
    while (at < end) {
      const c = b[at]!
      if (c === QUOTE) break
      if (c < 0x20 || c > 0x7e || c === 0x5c) {
        this.ok = false
        return ""
      }
      at++
    }
    if (at >= end) {
      this.ok = false
      return ""
    }
    this.at = at + 1
    return at - start <= 64
      ? String.fromCharCode.apply(null, b.subarray(start, at) as unknown as Array<number>)
      : decoder.decode(b.subarray(start, at))
  }
}

const readCanonicalHeader = (bytes: Uint8Array, start: number, end: number): WireHeader | undefined => {
  const r = new HeaderReader(bytes, start, end)
  if (!r.literal(OPEN_V)) return undefined
  const createdAt = r.integer()
  if (!r.ok || !r.literal(EXPIRES)) return undefined
  const expiresAt = r.integerOrNull()
  if (!r.ok || !r.literal(STALE)) return undefined
  const staleUntil = r.integerOrNull()
  if (!r.ok || !r.literal(TAGS)) return undefined
  const tags: Array<string> = []
  if (r.peek() !== CLOSE_BRACKET) {
    do tags.push(r.string())
    while (r.ok && r.peek() === COMMA && r.byte(COMMA))
  }
  if (!r.ok || !r.byte(CLOSE_BRACKET) || !r.literal(SIZE)) return undefined
  const size = r.integer()
  if (!r.ok) return undefined
  let meta: Record<string, string> | undefined
  if (r.peek() === COMMA) {
    if (!r.literal(META)) return undefined
    meta = {}
    if (r.peek() !== CLOSE_BRACE) {
      do {
        const k = r.string()
        if (!r.ok || !r.byte(COLON)) return undefined
        const v = r.string()
        // JSON.parse makes "__proto__" an own key and keeps the last of repeated keys: leave both to it
        // (own keys only: "constructor" and the like are inherited by every object, not repeats)
        if (!r.ok || k === "__proto__" || Object.hasOwn(meta, k)) return undefined
        meta[k] = v
      } while (r.peek() === COMMA && r.byte(COMMA))
    }
    if (!r.ok || !r.byte(CLOSE_BRACE)) return undefined
  }
  if (!r.byte(CLOSE_BRACE) || r.at !== end) return undefined
  return meta === undefined
    ? { v: WIRE_VERSION, createdAt, expiresAt, staleUntil, tags, size }
    : { v: WIRE_VERSION, createdAt, expiresAt, staleUntil, tags, size, meta }
}

/** Decodes the wire format; anything malformed, truncated or of another version is a `DecodeError`. */
export const decodeEither = (key: string, bytes: Uint8Array): Either.Either<CacheEntry, DecodeError> => {
  const fail = (reason: string, cause: unknown = reason) =>
    Either.left(new DecodeError({ key, cause, message: `entry "${key}" does not decode: ${reason}` }))
  if (bytes.byteLength < 7 || bytes[0] !== MAGIC_0 || bytes[1] !== MAGIC_1) return fail("not a cachekit entry")
  if (bytes[2] !== WIRE_VERSION) return fail(`wire format version ${bytes[2]} is not ${WIRE_VERSION}`)
  const headerLength = ((bytes[3]! << 24) >>> 0) + ((bytes[4]! << 16) | (bytes[5]! << 8) | bytes[6]!)
  if (7 + headerLength > bytes.byteLength) return fail("truncated header")
  // Hot path (every L2 hit): the layout `encode` writes, read from the bytes; then a hand-written
  // check of the common shape after JSON.parse; anything unusual goes through the Schema, which
  // stays the definition of the format and gives the detailed error.
  let h = readCanonicalHeader(bytes, 7, 7 + headerLength)
  if (h === undefined) {
    let parsed: unknown
    try {
      parsed = JSON.parse(decoder.decode(bytes.subarray(7, 7 + headerLength)))
    } catch (cause) {
      return fail("header is not UTF-8 JSON", cause)
    }
    if (isPlainHeader(parsed)) {
      h = parsed
    } else {
      const header = decodeHeader(parsed)
      if (Either.isLeft(header)) return fail("bad header", header.left)
      h = header.right
    }
  }
  const value = bytes.subarray(7 + headerLength)
  if (value.byteLength !== h.size) return fail(`value has ${value.byteLength} bytes, header says ${h.size}`)
  return Either.right({
    value,
    createdAt: h.createdAt,
    expiresAt: h.expiresAt ?? Number.POSITIVE_INFINITY,
    staleUntil: h.staleUntil ?? Number.POSITIVE_INFINITY,
    tags: h.tags,
    size: h.size,
    meta: h.meta
  })
}

/**
 * The general (JSON.parse + Schema) reading of a header, for tests that check the fast reader
 * agrees with it.
 *
 * @internal
 */
export const decodeHeaderSlowly = (bytes: Uint8Array): Either.Either<WireHeader, unknown> => {
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(3)
  try {
    return decodeHeader(JSON.parse(decoder.decode(bytes.subarray(7, 7 + headerLength))))
  } catch (cause) {
    return Either.left(cause)
  }
}

/**
 * The fast reading of a header, `undefined` when it leaves the header to the general way.
 *
 * @internal
 */
export const decodeHeaderFast = (bytes: Uint8Array): WireHeader | undefined => {
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(3)
  return readCanonicalHeader(bytes, 7, 7 + headerLength)
}

/** `decodeEither` as an Effect. */
export const decode = (key: string, bytes: Uint8Array): Effect.Effect<CacheEntry, DecodeError> =>
  decodeEither(key, bytes)
