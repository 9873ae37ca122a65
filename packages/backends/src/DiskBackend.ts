/**
 * A content-addressed `CacheBackend` on the local disk: bodies are stored once per SHA-256 digest
 * (two keys with the same body share one file), verified on every read (a truncated or corrupted
 * file is a miss and is removed, never served), written atomically (temp file, fsync, rename), and
 * streamed both ways in ~64 KiB chunks. Total bytes are bounded; the core W-TinyLFU policy decides
 * what to evict through an in-memory index that is rebuilt from disk on start.
 *
 * ```ts
 * const backend = DiskBackend.layer({ directory: "/var/cache/myapp", maxBytes: 2 * 1024 ** 3 })
 * ```
 *
 * Layout under `directory`:
 * `content/sha256/<2 hex>/<64 hex>` bodies, `index/<2 hex>/<sha256(key)>.json` one metadata record
 * per key (key, digest, times, tags, meta), `tmp/` writes in progress (emptied on start).
 *
 * @since 0.1.0
 */
import type { CacheBackend, CacheEntry, CacheError } from "@cachekit/core"
import { CacheBackend as Backend } from "@cachekit/core"
import type { ConfigError, Scope } from "effect"
import { Config, Effect, Layer, Option, Stream } from "effect"
import { diskReaders, makeDiskBackend } from "./internal/diskBackend.js"

/** Options of the disk backend. */
export interface Options {
  /** Directory of the store (created if missing). */
  readonly directory: string
  /** Bound on the bytes of stored bodies (counted per key). Default 1 GiB. */
  readonly maxBytes?: number | undefined
  /** Bound on the number of keys. Default 100,000. */
  readonly maxEntries?: number | undefined
  /** Largest body accepted, enforced while streaming (`EntryTooLarge`). Default `min(maxBytes, 512 MiB)`. */
  readonly maxEntrySize?: number | undefined
  /** Chunk size of streamed reads. Default 64 KiB. */
  readonly chunkSize?: number | undefined
  /** fsync bodies and index records before they become visible. Default true. */
  readonly fsync?: boolean | undefined
  /** Name reported by `health` and in errors. Default `disk`. */
  readonly name?: string | undefined
}

/** Opens (or creates) the store and rebuilds its index from disk. */
export const make = (
  options: Options
): Effect.Effect<CacheBackend.CacheBackend, CacheError.CacheError, Scope.Scope> => {
  const maxBytes = options.maxBytes ?? 1024 ** 3
  return makeDiskBackend({
    directory: options.directory,
    maxBytes,
    maxEntries: options.maxEntries ?? 100_000,
    maxEntrySize: options.maxEntrySize ?? Math.min(maxBytes, 512 * 1024 * 1024),
    chunkSize: options.chunkSize ?? 64 * 1024,
    fsync: options.fsync ?? true,
    name: options.name ?? "disk"
  })
}

/** The backend as a Layer. */
export const layer = (options: Options): Layer.Layer<Backend.CacheBackendTag, CacheError.CacheError> =>
  Layer.scoped(Backend.CacheBackendTag, make(options))

/**
 * Reads `CACHEKIT_DISK_DIR` (default `./.cachekit`), `CACHEKIT_DISK_MAX_BYTES` and
 * `CACHEKIT_DISK_MAX_ENTRY_SIZE` through `Config`; `overrides` win.
 */
export const layerConfig = (
  overrides: Partial<Options> = {}
): Layer.Layer<Backend.CacheBackendTag, CacheError.CacheError | ConfigError.ConfigError> =>
  Layer.scoped(Backend.CacheBackendTag, Effect.flatMap(config, (fromEnv) => make({ ...fromEnv, ...overrides })))

/** The environment configuration `layerConfig` reads. */
export const config: Config.Config<Options> = Config.all({
  directory: Config.string("CACHEKIT_DISK_DIR").pipe(Config.withDefault("./.cachekit")),
  maxBytes: Config.option(Config.integer("CACHEKIT_DISK_MAX_BYTES")),
  maxEntrySize: Config.option(Config.integer("CACHEKIT_DISK_MAX_ENTRY_SIZE"))
}).pipe(Config.map((c) => ({
  directory: c.directory,
  maxBytes: Option.getOrUndefined(c.maxBytes),
  maxEntrySize: Option.getOrUndefined(c.maxEntrySize)
})))

/**
 * Reads the body of `key` chunk by chunk into `f`, for consumers that are done with a chunk when the
 * effect `f` returns completes (write it to a file or socket and wait for the write, hash it, parse
 * it): **the chunk is lent, not given** — on a disk backend it is a view of one buffer that is reused
 * for the next chunk, so copy it (`new Uint8Array(chunk)`; a Buffer's `slice` is a view) to keep
 * it. In exchange a read holds one `chunkSize` buffer and leaves no garbage buffer per chunk: peak RSS stays flat whatever the body
 * size, where `streaming.getStream`, whose chunks the consumer may keep, leaves every chunk to the
 * garbage collector (see bench/README.md, "Backends").
 *
 * Same checks as `getStream`: a missing or truncated body is a miss before `f` sees a byte, a body of
 * one chunk or less is verified before `f` sees it, and a larger body altered in place fails with
 * `DecodeError` after its last chunk (then it is removed under every key that shared it): treat what
 * `f` received as garbage when the read fails. Returns the entry (`value` empty, `size` set), or
 * `None` on a miss without calling `f`.
 *
 * On any other backend it falls back to `streaming.getStream` (chunks are then not reused), or to
 * `get` and one call of `f` with the whole value.
 */
export const readInto = <E, R>(
  backend: CacheBackend.CacheBackend,
  key: string,
  f: (chunk: Uint8Array) => Effect.Effect<void, E, R>
): Effect.Effect<Option.Option<CacheEntry.CacheEntry>, CacheError.CacheError | E, R> => {
  const disk = diskReaders.get(backend)
  if (disk !== undefined) return disk(key, f)
  if (backend.streaming !== undefined) {
    return Effect.flatMap(backend.streaming.getStream(key), (found) =>
      Option.isNone(found)
        ? Effect.succeedNone
        : Effect.as(Stream.runForEach(found.value.body, f), Option.some(found.value.entry)))
  }
  return Effect.flatMap(backend.get(key), (found) =>
    Option.isNone(found)
      ? Effect.succeedNone
      : Effect.as(f(found.value.value), Option.some({ ...found.value, value: new Uint8Array(0) })))
}
