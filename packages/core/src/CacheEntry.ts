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

/** Decodes the wire format; anything malformed, truncated or of another version is a `DecodeError`. */
export const decodeEither = (key: string, bytes: Uint8Array): Either.Either<CacheEntry, DecodeError> => {
  const fail = (reason: string, cause: unknown = reason) =>
    Either.left(new DecodeError({ key, cause, message: `entry "${key}" does not decode: ${reason}` }))
  if (bytes.byteLength < 7 || bytes[0] !== MAGIC_0 || bytes[1] !== MAGIC_1) return fail("not a cachekit entry")
  if (bytes[2] !== WIRE_VERSION) return fail(`wire format version ${bytes[2]} is not ${WIRE_VERSION}`)
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(3)
  if (7 + headerLength > bytes.byteLength) return fail("truncated header")
  let parsed: unknown
  try {
    parsed = JSON.parse(decoder.decode(bytes.subarray(7, 7 + headerLength)))
  } catch (cause) {
    return fail("header is not UTF-8 JSON", cause)
  }
  // Hot path (every L2 hit): a hand-written check of the common shape; anything unusual goes through the
  // Schema, which stays the definition of the format and gives the detailed error.
  let h: WireHeader
  if (isPlainHeader(parsed)) {
    h = parsed
  } else {
    const header = decodeHeader(parsed)
    if (Either.isLeft(header)) return fail("bad header", header.left)
    h = header.right
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

/** `decodeEither` as an Effect. */
export const decode = (key: string, bytes: Uint8Array): Effect.Effect<CacheEntry, DecodeError> =>
  decodeEither(key, bytes)
