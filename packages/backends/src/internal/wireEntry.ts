/**
 * The read and write paths shared by the backends that store entries as bytes in the core wire
 * format (Redis, memcached): decode-or-delete on read, size check on write.
 */
import { CacheEntry, CacheError } from "@cachekit/core"
import { Clock, Effect, Either, Option } from "effect"

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
  Effect.gen(function*() {
    if (bytes === null) return Option.none()
    const decoded = CacheEntry.decodeEither(key, bytes)
    if (Either.isLeft(decoded)) {
      yield* removeUndecodable
      return Option.none()
    }
    const now = yield* Clock.currentTimeMillis
    return CacheEntry.isServable(decoded.right, now) ? Option.some(decoded.right) : Option.none()
  })

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
