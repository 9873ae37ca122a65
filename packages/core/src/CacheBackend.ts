/**
 * The contract every store of cache entries implements: memory, Redis, Memcached, disk, or a
 * user's own. Optional capabilities (tags, key scans, streaming bodies, stats) are optional fields
 * a backend fills in when it can do them natively.
 *
 * @since 0.1.0
 */
import type { Clock, Stream } from "effect"
import { Context, Effect, Option } from "effect"
import type { CacheEntry } from "./CacheEntry.js"
import type { CacheError } from "./CacheError.js"
import { InvalidKey } from "./CacheError.js"

/** Result of a health probe. */
export interface Health {
  readonly backend: string
  readonly status: "up" | "degraded" | "down"
  readonly latencyMillis: number
  readonly detail?: string | undefined
}

/** A page of keys from a scan. `cursor` is `undefined` when the scan is complete. */
export interface KeyPage {
  readonly keys: ReadonlyArray<string>
  readonly cursor: string | undefined
}

/** Counters a backend keeps about itself. */
export interface BackendStats {
  readonly entries: number
  readonly bytes: number
  readonly hits: number
  readonly misses: number
  readonly evictions: number
}

/** Tag index: which keys carry a tag. */
export interface TagCapability {
  /** Deletes every entry carrying any of the tags; returns how many entries were removed. */
  readonly deleteByTags: (tags: ReadonlyArray<string>) => Effect.Effect<number, CacheError>
  /** Keys currently linked to a tag. */
  readonly keysForTag: (tag: string) => Effect.Effect<ReadonlyArray<string>, CacheError>
  /** All known tags (bounded by what the backend stores). */
  readonly listTags: Effect.Effect<ReadonlyArray<string>, CacheError>
}

/** Key scan by glob pattern (`*`, `?`, `[abc]`), paged; never the whole keyspace at once. */
export interface ScanCapability {
  readonly keys: (pattern: string, options?: {
    readonly cursor?: string | undefined
    readonly count?: number | undefined
  }) => Effect.Effect<KeyPage, CacheError>
  /** Deletes every key matching the pattern; returns how many were removed. */
  readonly deletePattern: (pattern: string) => Effect.Effect<number, CacheError>
}

/** A stored entry whose body is read as a stream (`entry.value` is empty, `entry.size` is the body size). */
export interface StreamedEntry {
  readonly entry: CacheEntry
  readonly body: Stream.Stream<Uint8Array, CacheError>
  /**
   * Optional, the same body read another way: each chunk is LENT to `f` (a view of one buffer the
   * backend reuses for the next chunk once `f`'s effect completed; copy it to keep it), so a long
   * body leaves no garbage buffer per chunk. Same checks as `body`: a body altered in place fails
   * with `DecodeError` after `f` has seen bytes (and is removed). Consume `body` or `readInto`,
   * once. The disk backend offers it; the proxy writes lent chunks straight to the socket.
   */
  readonly readInto?:
    | (<E, R>(f: (chunk: Uint8Array) => Effect.Effect<void, E, R>) => Effect.Effect<void, CacheError | E, R>)
    | undefined
  /**
   * Optional, `readInto` for a consumer that takes chunks through a callback, so that no effect
   * runs per chunk (a 50 MiB body is 800 chunks of 64 KiB; the proxy writes them to its sockets).
   * Same lending, checks and consume-once rule as `readInto`; the read fails with the error a
   * `write` passes to `done`. The disk backend offers it.
   */
  readonly lendTo?: (<E>(write: LentChunkWriter<E>) => Effect.Effect<void, CacheError | E>) | undefined
}

/**
 * Takes one chunk of a lending read (`StreamedEntry.lendTo`): the chunk is valid until `done` is
 * called; `done(undefined)` asks for the next chunk, `done(error)` stops the read with `error`.
 */
export type LentChunkWriter<E> = (chunk: Uint8Array, done: (error: E | undefined) => void) => void

/** Streaming bodies: read and write large values without holding them in memory. */
export interface StreamingCapability {
  readonly getStream: (key: string) => Effect.Effect<Option.Option<StreamedEntry>, CacheError>
  /**
   * Consumes `body` while storing it; `entry.value` is ignored and `entry.size` is computed.
   * A body that fails or is interrupted leaves no entry behind.
   */
  readonly setStream: <E>(
    key: string,
    entry: Omit<CacheEntry, "value" | "size">,
    body: Stream.Stream<Uint8Array, E>
  ) => Effect.Effect<CacheEntry, CacheError | E>
}

/** A store of cache entries. Implementations: memory, Redis, Memcached, disk. */
export interface CacheBackend {
  readonly name: string
  /** Returns the entry if present and not past `staleUntil`; an undecodable entry is deleted and is a miss. */
  readonly get: (key: string) => Effect.Effect<Option.Option<CacheEntry>, CacheError>
  /** Stores the entry, kept until its `staleUntil`. */
  readonly set: (key: string, entry: CacheEntry) => Effect.Effect<void, CacheError>
  /** Removes the entry; returns whether something was removed (where the backend can tell). */
  readonly delete: (key: string) => Effect.Effect<boolean, CacheError>
  /** Removes every entry this backend owns (within its namespace/prefix). */
  readonly clear: Effect.Effect<void, CacheError>
  readonly health: Effect.Effect<Health>
  readonly tags?: TagCapability | undefined
  readonly scan?: ScanCapability | undefined
  readonly streaming?: StreamingCapability | undefined
  readonly stats?: Effect.Effect<BackendStats> | undefined
  /**
   * In-process backends only: a synchronous read for the hot path (no Effect allocated). Same
   * semantics as `get` (expired past `staleUntil` = miss); `now` is the caller's `Clock` reading.
   * `undefined` is a final miss unless `unsafeSyncMissIsFinal` is `false`.
   */
  readonly unsafeGetSync?: ((key: string, now: number) => CacheEntry | undefined) | undefined
  /**
   * In-process backends only: like `unsafeGetSync` but records nothing (no hit/miss counts, no
   * frequency). For a probe that will be followed by a real read, so one request is counted once.
   */
  readonly unsafePeekSync?: ((key: string, now: number) => CacheEntry | undefined) | undefined
  /**
   * Whether `undefined` from `unsafeGetSync`/`unsafePeekSync` means "not stored" (`true`, the
   * default when absent) or only "not in the synchronous part" (`false`: a `TieredCache` whose
   * memory L1 misses while a lower tier may still hold the key). When `false`, a caller that gets
   * `undefined` must ask `get` (or `streaming.getStream`) before treating the key as a miss; an
   * `undefined` from `unsafeGetSync` then has counted nothing, so the `get` counts the miss once.
   * An entry returned is an answer either way (the same one `get` would give).
   */
  readonly unsafeSyncMissIsFinal?: boolean | undefined
  /**
   * Network backends: `get` as a plain Promise, for the L2 read path of `TieredCache` (one
   * asynchronous step, no Effect built per call). Same answer as `get` (a miss is `undefined`;
   * an undecodable entry is deleted and is a miss), with `clock` read once the reply is in.
   * Rejects only with a `CacheError`. Nothing but the backend's own command timeout bounds it.
   */
  readonly unsafeGetPromise?: ((key: string, clock: Clock.Clock) => Promise<CacheEntry | undefined>) | undefined
  /** Largest value in bytes this backend accepts (`EntryTooLarge` above it). */
  readonly maxEntrySize?: number | undefined
}

/**
 * Whether an `undefined` from `backend`'s synchronous reads is a final miss (see
 * `CacheBackend.unsafeSyncMissIsFinal`).
 */
export const syncMissIsFinal = (backend: CacheBackend): boolean => backend.unsafeSyncMissIsFinal !== false

/** The backend a `Cache` runs on. */
export class CacheBackendTag extends Context.Tag("@cachekit/core/CacheBackend")<CacheBackendTag, CacheBackend>() {}

// ---------------------------------------------------------------------------------------------
// Helpers shared by backends
// ---------------------------------------------------------------------------------------------

/** Default longest key, in UTF-16 code units (Memcached's limit is 250 bytes; it hashes longer keys). */
export const DEFAULT_MAX_KEY_LENGTH = 4096

/** An unpaired UTF-16 surrogate: Redis, Memcached and file names see it as U+FFFD, so keys would collide. */
const LONE_SURROGATE = /\p{Cs}/u

/**
 * Why `key` is not a valid cache key (empty, over-long, not well-formed: an unpaired surrogate), or
 * `undefined` when it is one. `validateKey` without the Effect, for synchronous and Promise paths.
 */
export const invalidKey = (key: string, maxKeyLength: number = DEFAULT_MAX_KEY_LENGTH): InvalidKey | undefined => {
  if (typeof key !== "string" || key.length === 0) {
    return new InvalidKey({ key: String(key), reason: "empty", message: "cache keys must not be empty" })
  }
  if (key.length > maxKeyLength) {
    return new InvalidKey({
      key: key.slice(0, 64),
      reason: "too long",
      message: `cache key of ${key.length} characters is longer than the limit of ${maxKeyLength}`
    })
  }
  if (LONE_SURROGATE.test(key)) {
    return new InvalidKey({
      key: key.slice(0, 64),
      reason: "not well-formed",
      message: "cache keys must be well-formed Unicode (an unpaired surrogate would collide with U+FFFD)"
    })
  }
  return undefined
}

/** Rejects empty, over-long and not well-formed (unpaired surrogate) keys with `InvalidKey`. */
export const validateKey = (
  key: string,
  maxKeyLength: number = DEFAULT_MAX_KEY_LENGTH
): Effect.Effect<string, InvalidKey> => {
  const invalid = invalidKey(key, maxKeyLength)
  return invalid === undefined ? Effect.succeed(key) : Effect.fail(invalid)
}

/**
 * Compiles a glob (`*` any run, `?` one character, `[...]` a class, `\\` escapes) to a RegExp
 * anchored at both ends, with the same meaning Redis gives to SCAN MATCH patterns.
 */
export const globToRegExp = (pattern: string): RegExp => {
  let out = "^"
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!
    if (c === "\\" && i + 1 < pattern.length) {
      out += escapeRegExp(pattern[++i]!)
    } else if (c === "*") {
      out += "[\\s\\S]*"
    } else if (c === "?") {
      out += "[\\s\\S]"
    } else if (c === "[") {
      const end = pattern.indexOf("]", i + 1)
      if (end === -1) {
        out += "\\["
      } else {
        let body = pattern.slice(i + 1, end)
        const negate = body.startsWith("^")
        if (negate) body = body.slice(1)
        out += `[${negate ? "^" : ""}${body.replace(/[\\\]]/g, "\\$&")}]`
        i = end
      }
    } else {
      out += escapeRegExp(c)
    }
  }
  return new RegExp(out + "$")
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")

/** A miss. */
export const miss: Effect.Effect<Option.Option<CacheEntry>> = Effect.succeed(Option.none())
