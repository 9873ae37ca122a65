/**
 * The read and write paths shared by the backends that store entries as bytes in the core wire
 * format (Redis, memcached): decode-or-delete on read, size check on write.
 */
import { CacheEntry, CacheError } from "@cachekit/core"
import { Effect, Either, Option } from "effect"

/** What `decodeStored` makes of stored bytes. */
export type Stored = CacheEntry.CacheEntry | undefined | typeof UNDECODABLE

/** `decodeStored`'s answer for bytes that are not a readable entry (to be deleted). */
export const UNDECODABLE: unique symbol = Symbol.for("@cachekit/backends/undecodable")

/**
 * The entry stored under `key` as read back at `now` (`null` bytes: nothing stored), synchronously:
 * `undefined` for nothing stored or an entry past its `staleUntil` (the server's own expiry may be
 * coarser than the entry's), `UNDECODABLE` for bytes that do not decode (corrupted, another format
 * version), which the caller deletes.
 */
export const decodeStored = (key: string, bytes: Uint8Array | null, now: number): Stored => {
  if (bytes === null) return undefined
  const decoded = CacheEntry.decodeEither(key, bytes)
  if (Either.isLeft(decoded)) return UNDECODABLE
  return CacheEntry.isServable(decoded.right, now) ? decoded.right : undefined
}

/**
 * `decodeStored` as the answer of a backend's `get`: an undecodable value is removed with
 * `removeUndecodable` and is a miss.
 */
export const storedAnswer = <E>(
  stored: Stored,
  removeUndecodable: () => Effect.Effect<unknown, E>
): Effect.Effect<Option.Option<CacheEntry.CacheEntry>, E> =>
  stored === undefined
    ? missing
    : stored === UNDECODABLE
    ? Effect.as(removeUndecodable(), Option.none())
    : Effect.succeed(Option.some(stored))

const missing = Effect.succeed(Option.none<CacheEntry.CacheEntry>())

/**
 * The entry stored under `key` as read back (`null`: nothing stored). An undecodable value
 * (corrupted, another format version) is removed with `removeUndecodable` and is a miss, as is
 * an entry past its `staleUntil` (the server's own expiry may be coarser than the entry's).
 */
export const readStored = <E>(
  key: string,
  bytes: Uint8Array | null,
  removeUndecodable: Effect.Effect<unknown, E>
): Effect.Effect<Option.Option<CacheEntry.CacheEntry>, E> =>
  Effect.clockWith((clock) =>
    storedAnswer(decodeStored(key, bytes, clock.unsafeCurrentTimeMillis()), () => removeUndecodable)
  )

/**
 * `entry` encoded for storage, or `EntryTooLarge` when it is over `maxEntrySize`; the message
 * reads "entry "k" encodes to N bytes, over <limitOf> limit of M; <remedy>".
 */
export const encodeWithin = (
  key: string,
  entry: CacheEntry.CacheEntry,
  maxEntrySize: number,
  limitOf: string,
  remedy: string
): Effect.Effect<Buffer, CacheError.EntryTooLarge> => {
  const bytes = CacheEntry.encode(entry)
  if (bytes.byteLength > maxEntrySize) {
    return Effect.fail(
      new CacheError.EntryTooLarge({
        key,
        size: bytes.byteLength,
        maxSize: maxEntrySize,
        message:
          `entry "${key}" encodes to ${bytes.byteLength} bytes, over ${limitOf} limit of ${maxEntrySize}; ${remedy}`
      })
    )
  }
  return Effect.succeed(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))
}
