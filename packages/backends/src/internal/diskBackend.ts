import type { CacheBackend as CB, CacheEntry } from "@cachekit/core"
import { CacheBackend, CacheError, MemoryBackend } from "@cachekit/core"
import * as NodeStream from "@effect/platform-node/NodeStream"
import type { Scope } from "effect"
import { Clock, Effect, Exit, Option, Stream } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { constants as fsConstants } from "node:fs"
import { createReadStream, read as readCallback } from "node:fs"
import * as fs from "node:fs/promises"
import * as path from "node:path"

export interface ResolvedOptions {
  readonly directory: string
  readonly maxBytes: number
  readonly maxEntries: number
  readonly maxEntrySize: number
  readonly chunkSize: number
  readonly fsync: boolean
  readonly name: string
}

/** What the index knows about one key; also its on-disk record (times as null when infinite). */
interface IndexRecord {
  readonly key: string
  readonly digest: string
  readonly size: number
  readonly createdAt: number
  readonly expiresAt: number
  readonly staleUntil: number
  readonly tags: ReadonlyArray<string>
  readonly meta?: Readonly<Record<string, string>> | undefined
}

const RECORD_VERSION = 1

const sha256Hex = (data: string | Uint8Array) => createHash("sha256").update(data).digest("hex")

const isNotFound = (cause: unknown) =>
  typeof cause === "object" && cause !== null && (cause as { code?: unknown }).code === "ENOENT"

const finiteOrNull = (n: number) => (Number.isFinite(n) ? n : null)
const nullToInfinity = (n: unknown) => (typeof n === "number" ? n : Number.POSITIVE_INFINITY)

const encodeRecord = (r: IndexRecord) =>
  JSON.stringify({
    v: RECORD_VERSION,
    key: r.key,
    digest: r.digest,
    size: r.size,
    createdAt: r.createdAt,
    expiresAt: finiteOrNull(r.expiresAt),
    staleUntil: finiteOrNull(r.staleUntil),
    tags: r.tags,
    ...(r.meta === undefined ? {} : { meta: r.meta })
  })

const decodeRecord = (text: string): IndexRecord | undefined => {
  try {
    const o = JSON.parse(text) as Record<string, unknown>
    if (
      o["v"] !== RECORD_VERSION || typeof o["key"] !== "string" || typeof o["digest"] !== "string" ||
      !/^[0-9a-f]{64}$/.test(o["digest"]) || typeof o["size"] !== "number" || typeof o["createdAt"] !== "number" ||
      !Array.isArray(o["tags"])
    ) return undefined
    const meta = o["meta"]
    return {
      key: o["key"],
      digest: o["digest"],
      size: o["size"],
      createdAt: o["createdAt"],
      expiresAt: nullToInfinity(o["expiresAt"]),
      staleUntil: nullToInfinity(o["staleUntil"]),
      tags: (o["tags"] as Array<unknown>).filter((t): t is string => typeof t === "string"),
      ...(typeof meta === "object" && meta !== null ? { meta: meta as Record<string, string> } : {})
    }
  } catch {
    return undefined
  }
}

const EMPTY = new Uint8Array(0)

/** Read buffers kept for reuse by `readInto` (concurrent reads beyond this allocate their own). */
const SPARE_BUFFERS = 16

/**
 * Reads a body into `f` through one reused buffer (see `DiskBackend.readInto`): the chunk handed to
 * `f` is only valid until the effect `f` returns completes.
 */
export type ReadInto = <E, R>(
  key: string,
  f: (chunk: Uint8Array) => Effect.Effect<void, E, R>
) => Effect.Effect<Option.Option<CacheEntry.CacheEntry>, CacheError.CacheError | E, R>

/** The `readInto` of every disk backend made here, by the backend object. */
export const diskReaders = new WeakMap<CB.CacheBackend, ReadInto>()

const toEntry = (r: IndexRecord, value: Uint8Array): CacheEntry.CacheEntry => ({
  value,
  createdAt: r.createdAt,
  expiresAt: r.expiresAt,
  staleUntil: r.staleUntil,
  tags: r.tags,
  size: r.size,
  meta: r.meta
})

export const makeDiskBackend = (
  options: ResolvedOptions
): Effect.Effect<CB.CacheBackend, CacheError.CacheError, Scope.Scope> =>
  Effect.gen(function*() {
    const { directory, name } = options
    const maxEntrySize = Math.min(options.maxEntrySize, options.maxBytes)
    const contentDir = path.join(directory, "content", "sha256")
    const indexDir = path.join(directory, "index")
    const tmpDir = path.join(directory, "tmp")
    const contentPath = (digest: string) => path.join(contentDir, digest.slice(0, 2), digest)
    const recordPath = (key: string) => {
      const h = sha256Hex(key)
      return path.join(indexDir, h.slice(0, 2), `${h}.json`)
    }
    const tmpPath = () => path.join(tmpDir, `${Date.now().toString(36)}-${randomBytes(8).toString("hex")}`)

    const ioError = (operation: string, cause: unknown) =>
      CacheError.backendUnavailable(
        name,
        operation,
        cause,
        `check that ${directory} exists, is writable and has free space`
      )
    const io = <A>(operation: string, f: () => Promise<A>): Effect.Effect<A, CacheError.CacheError> =>
      Effect.tryPromise({ try: f, catch: (cause) => ioError(operation, cause) })
    /** Removes a file; a file already gone is fine. */
    const removeFile = (file: string) => Effect.promise(() => fs.rm(file, { force: true }).catch(() => undefined))

    const madeDirs = new Set<string>()
    const ensureDir = (dir: string) =>
      madeDirs.has(dir)
        ? Effect.void
        : Effect.map(io("mkdir", () => fs.mkdir(dir, { recursive: true })), () => {
          madeDirs.add(dir)
        })

    /** Writes bytes to a new file, fsyncs it (if `sync` and the store fsyncs), closes it. */
    const writeFileSynced = (file: string, data: Uint8Array | string, sync = true) =>
      io("write", async () => {
        const fh = await fs.open(file, "wx")
        try {
          await fh.writeFile(data)
          if (sync && options.fsync) await fh.sync()
        } finally {
          await fh.close()
        }
      })

    // ---------------------------------------------------------------------------------------
    // In-memory index: W-TinyLFU over keys (weight = body bytes, deadline = staleUntil) plus a
    // reference count per body digest. Removals are queued by the policy's synchronous callback
    // and their files deleted under the lock.
    // ---------------------------------------------------------------------------------------
    const refs = new Map<string, { count: number; size: number }>()
    let bytesOnDisk = 0
    let hits = 0
    /** Read buffers of finished `readInto`s, for the next ones (a buffer per read was ~64 KiB of garbage each). */
    const spareBuffers: Array<Buffer> = []
    let misses = 0
    let evictions = 0
    const pendingRecords: Array<string> = []
    const pendingContent: Array<string> = []

    const addRef = (digest: string, size: number) => {
      const r = refs.get(digest)
      if (r === undefined) {
        refs.set(digest, { count: 1, size })
        bytesOnDisk += size
      } else r.count++
    }
    const dropRef = (digest: string) => {
      const r = refs.get(digest)
      if (r === undefined) return
      if (--r.count === 0) {
        refs.delete(digest)
        bytesOnDisk -= r.size
        pendingContent.push(digest)
      }
    }

    const policy = new MemoryBackend.Policy<string, IndexRecord>({
      maxEntries: options.maxEntries,
      maxWeight: options.maxBytes,
      onRemoval: (key, record, reason) => {
        if (reason === "evicted") evictions++
        dropRef(record.digest)
        // a replaced record's file was already overwritten by the new one
        if (reason !== "replaced") pendingRecords.push(key)
      }
    })

    const lock = yield* Effect.makeSemaphore(1)
    const locked = <A, E>(effect: Effect.Effect<A, E>) => lock.withPermits(1)(effect)

    /** Deletes the files of removed entries, unless they came back meanwhile. Runs under the lock. */
    const flushRemovals = Effect.suspend(() => {
      const records = pendingRecords.splice(0).filter((key) => !policy.has(key, Number.NEGATIVE_INFINITY))
      const contents = pendingContent.splice(0).filter((digest) => !refs.has(digest))
      return Effect.forEach([...records.map(recordPath), ...contents.map(contentPath)], removeFile, {
        concurrency: 8,
        discard: true
      })
    })

    /**
     * Makes `record` the entry of its key: moves the body into place (`body` is a temp file, or
     * undefined when the digest is already stored), writes the index record atomically, then
     * updates the index. Under the lock, so two writers never interleave these steps.
     */
    const commit = (record: IndexRecord, body: { readonly tmp: string } | { readonly bytes: Uint8Array } | undefined) =>
      locked(Effect.gen(function*() {
        yield* flushRemovals
        const target = contentPath(record.digest)
        if (body !== undefined && "tmp" in body) {
          yield* ensureDir(path.dirname(target))
          yield* io("rename", () => fs.rename(body.tmp, target))
        } else if (!refs.has(record.digest)) {
          // the body was stored when we looked but its last key went away since: write it now
          const bytes = body !== undefined && "bytes" in body ? body.bytes : undefined
          if (bytes === undefined) {
            return yield* Effect.fail(CacheError.backendUnavailable(name, "set", "body vanished during commit"))
          }
          const tmp = tmpPath()
          yield* writeFileSynced(tmp, bytes)
          yield* ensureDir(path.dirname(target))
          yield* io("rename", () => fs.rename(tmp, target))
        }
        const file = recordPath(record.key)
        const tmpRecord = tmpPath()
        // Not fsynced: rename makes the record appear whole or not at all, and a record lost in a
        // crash is only a miss. The body it points to was fsynced before the rename above.
        yield* writeFileSynced(tmpRecord, encodeRecord(record), false)
        yield* ensureDir(path.dirname(file))
        yield* io("rename", () => fs.rename(tmpRecord, file))
        addRef(record.digest, record.size)
        if (!policy.set(record.key, record, record.size, record.staleUntil)) {
          // heavier than the whole store: undo
          dropRef(record.digest)
          pendingRecords.push(record.key)
        }
        yield* flushRemovals
      }))

    const remove = (key: string) =>
      locked(Effect.gen(function*() {
        const removed = policy.delete(key)
        yield* flushRemovals
        return removed
      }))

    /** A body failed verification: every key sharing it is dropped and the file deleted. */
    const discardCorrupt = (record: IndexRecord, reason: string) =>
      locked(Effect.gen(function*() {
        const keys: Array<string> = []
        policy.forEach((key, r) => {
          if (r.digest === record.digest) keys.push(key)
        })
        for (const key of keys) policy.delete(key)
        // the keys' removal dropped the references; the file goes even if none was left to drop
        pendingContent.push(record.digest)
        yield* flushRemovals
        yield* Effect.logWarning(`${name}: discarded the body of "${record.key}" (${reason}); it was not served`)
      }))

    const validate = (key: string) => CacheBackend.validateKey(key)

    /** The live record of a key, counting a hit or a miss. */
    const lookup = (key: string) =>
      Effect.gen(function*() {
        yield* validate(key)
        const now = yield* Clock.currentTimeMillis
        const record = policy.get(key, now)
        if (pendingRecords.length > 0 || pendingContent.length > 0) yield* locked(flushRemovals)
        if (record === undefined) misses++
        return record
      })

    const get = (key: string): Effect.Effect<Option.Option<CacheEntry.CacheEntry>, CacheError.CacheError> =>
      Effect.flatMap(lookup(key), (record) => record === undefined ? Effect.succeedNone : readVerified(key, record))

    /** Reads a whole body and checks it against its record: a torn or altered file is a miss. */
    const readVerified = (
      key: string,
      record: IndexRecord
    ): Effect.Effect<Option.Option<CacheEntry.CacheEntry>, CacheError.CacheError> =>
      Effect.gen(function*() {
        const read = yield* Effect.either(io("read", () => fs.readFile(contentPath(record.digest))))
        if (read._tag === "Left") {
          if (!isNotFound(read.left.cause)) return yield* Effect.fail(read.left)
          // gone under us: replaced or evicted meanwhile (a miss), or lost (clean it up)
          if (policy.peek(key, Number.NEGATIVE_INFINITY) === record) yield* discardCorrupt(record, "file missing")
          misses++
          return Option.none()
        }
        const bytes = read.right
        if (bytes.byteLength !== record.size || sha256Hex(bytes) !== record.digest) {
          yield* discardCorrupt(record, bytes.byteLength !== record.size ? "truncated" : "digest mismatch")
          misses++
          return Option.none()
        }
        hits++
        return Option.some(toEntry(record, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)))
      })

    const set = (key: string, entry: CacheEntry.CacheEntry): Effect.Effect<void, CacheError.CacheError> =>
      Effect.gen(function*() {
        yield* validate(key)
        const value = entry.value
        if (value.byteLength > maxEntrySize) {
          return yield* Effect.fail(tooLarge(key, value.byteLength))
        }
        const digest = sha256Hex(value)
        const record: IndexRecord = { ...recordOf(key, entry), digest, size: value.byteLength }
        if (refs.has(digest)) return yield* commit(record, { bytes: value })
        const tmp = tmpPath()
        yield* ensureDir(tmpDir)
        yield* writeFileSynced(tmp, value).pipe(
          Effect.zipRight(commit(record, { tmp })),
          Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : removeFile(tmp)))
        )
      })

    const recordOf = (key: string, e: Omit<CacheEntry.CacheEntry, "value" | "size">) => ({
      key,
      createdAt: e.createdAt,
      expiresAt: e.expiresAt,
      staleUntil: e.staleUntil,
      tags: e.tags,
      meta: e.meta
    })

    const tooLarge = (key: string, size: number) =>
      new CacheError.EntryTooLarge({
        key,
        size,
        maxSize: maxEntrySize,
        message: `body of "${key}" is over the disk backend's limit of ${maxEntrySize} bytes; raise maxEntrySize`
      })

    // ---------------------------------------------------------------------------------------
    // Streaming
    // ---------------------------------------------------------------------------------------

    /** A body failed verification at the end of a read that already handed out its bytes. */
    const failedWhileReading = (record: IndexRecord, how: string) =>
      Effect.zipRight(
        discardCorrupt(record, `digest mismatch while ${how}`),
        Effect.fail(
          new CacheError.DecodeError({
            key: record.key,
            cause: "digest mismatch",
            message: `body of "${record.key}" failed its integrity check while ${how}; it was removed`
          })
        )
      )

    /** A body answered by `getStream` was gone or truncated by the time it was read. */
    const vanished = (record: IndexRecord) =>
      new CacheError.DecodeError({
        key: record.key,
        cause: "body gone",
        message: `body of "${record.key}" was removed or truncated before it was read`
      })

    /** Reads a body in chunks, hashing as it goes; a digest mismatch at the end fails the stream. */
    const bodyStream = (record: IndexRecord): Stream.Stream<Uint8Array, CacheError.CacheError> =>
      Stream.suspend(() => {
        const hash = createHash("sha256")
        let total = 0
        const verify = Effect.suspend(() =>
          total === record.size && hash.digest("hex") === record.digest
            ? Effect.void
            : failedWhileReading(record, "streaming")
        )
        return NodeStream.fromReadable<CacheError.CacheError, Uint8Array>(
          () => createReadStream(contentPath(record.digest), { highWaterMark: options.chunkSize }),
          (cause) => CacheError.backendUnavailable(name, "stream", cause, `check that ${directory} is readable`),
          { chunkSize: options.chunkSize }
        ).pipe(
          Stream.mapChunks((chunk) => {
            for (const bytes of chunk) {
              total += bytes.byteLength
              hash.update(bytes)
            }
            return chunk
          }),
          Stream.concat(Stream.drain(Stream.fromEffect(verify)))
        )
      })

    /**
     * Positional reads into one buffer allocated per call and reused for every chunk: the next read
     * starts only after `f`'s effect for the previous chunk completed, so no chunk is ever
     * overwritten while `f` works on it, and no garbage buffer is left per chunk.
     */
    const readInto: ReadInto = <E, R>(key: string, f: (chunk: Uint8Array) => Effect.Effect<void, E, R>) =>
      Effect.flatMap(
        lookup(key),
        (record) => record === undefined ? Effect.succeedNone : readRecordInto(key, record, f)
      )

    /**
     * The part `readInto` and `lendTo` share: a missing or truncated body is a miss before anything
     * is lent, a body of one chunk is verified and handed to `single` whole, a larger one is opened
     * and handed to `chunked` (which checks its digest at the end).
     */
    const readRecordWith = <E, R>(
      key: string,
      record: IndexRecord,
      single: (whole: Uint8Array) => Effect.Effect<void, E, R>,
      chunked: (fh: fs.FileHandle) => Effect.Effect<void, CacheError.CacheError | E, R>
    ): Effect.Effect<Option.Option<CacheEntry.CacheEntry>, CacheError.CacheError | E, R> =>
      Effect.gen(function*() {
        if (record.size <= options.chunkSize) {
          // one chunk: verified before anything sees a byte, like getStream
          const whole = yield* readVerified(key, record)
          if (Option.isNone(whole)) return whole
          yield* single(whole.value.value)
          return Option.some(toEntry(record, EMPTY))
        }
        const opened = yield* Effect.either(io("open", () => fs.open(contentPath(record.digest), "r")))
        if (opened._tag === "Left") {
          if (!isNotFound(opened.left.cause)) return yield* Effect.fail(opened.left)
          if (policy.peek(key, Number.NEGATIVE_INFINITY) === record) yield* discardCorrupt(record, "file missing")
          misses++
          return Option.none()
        }
        return yield* Effect.acquireUseRelease(
          Effect.succeed(opened.right),
          (fh) =>
            Effect.gen(function*() {
              const stat = yield* io("stat", () => fh.stat())
              if (stat.size !== record.size) {
                // a truncated body is caught before anything sees a byte
                yield* discardCorrupt(record, "truncated")
                misses++
                return Option.none()
              }
              hits++
              yield* chunked(fh)
              return Option.some(toEntry(record, EMPTY))
            }),
          (fh) => Effect.promise(() => fh.close().catch(() => undefined))
        )
      })

    /** `readInto` of a record already looked up (also the `readInto` of a `getStream` answer). */
    const readRecordInto = <E, R>(
      key: string,
      record: IndexRecord,
      f: (chunk: Uint8Array) => Effect.Effect<void, E, R>
    ): Effect.Effect<Option.Option<CacheEntry.CacheEntry>, CacheError.CacheError | E, R> =>
      readRecordWith(key, record, f, (fh) =>
        Effect.gen(function*() {
          const buffer = spareBuffers.pop() ?? Buffer.allocUnsafeSlow(options.chunkSize)
          const hash = createHash("sha256")
          let position = 0
          while (position < record.size) {
            const length = Math.min(options.chunkSize, record.size - position)
            const { bytesRead } = yield* io("read", () => fh.read(buffer, 0, length, position))
            if (bytesRead === 0) break
            const chunk = buffer.subarray(0, bytesRead)
            hash.update(chunk)
            position += bytesRead
            yield* f(chunk)
          }
          // every `f` completed: nothing holds the buffer any more (one that failed or was
          // interrupted mid-chunk may still be referenced, and is left to the collector)
          if (spareBuffers.length < SPARE_BUFFERS) spareBuffers.push(buffer)
          if (position !== record.size || hash.digest("hex") !== record.digest) {
            return yield* failedWhileReading(record, "reading")
          }
        }))

    /**
     * `lendTo` of a record already looked up: the loop of `readRecordInto` as plain callbacks (a
     * positional read into the reused buffer, `write`, the next read from `write`'s `done`), one
     * effect for the whole body instead of a few per chunk. Per-chunk garbage is what made the
     * proxy's young generation grow back while it served large disk hits (bench/README.md, "Proxy").
     */
    const lendRecordTo = <E>(
      key: string,
      record: IndexRecord,
      write: CB.LentChunkWriter<E>
    ): Effect.Effect<Option.Option<CacheEntry.CacheEntry>, CacheError.CacheError | E> =>
      readRecordWith(
        key,
        record,
        (whole) =>
          Effect.async<void, E>((resume) =>
            write(whole, (error) => resume(error === undefined ? Effect.void : Effect.fail(error)))
          ),
        (fh) =>
          Effect.flatMap(
            Effect.async<boolean, CacheError.CacheError | E>((resume) => {
              const buffer = spareBuffers.pop() ?? Buffer.allocUnsafeSlow(options.chunkSize)
              const hash = createHash("sha256")
              const fd = fh.fd
              let position = 0
              let stopped = false
              let reading = false
              /** Set by an interruption that waits for the read in flight (fh closes after it). */
              let onReadSettled: (() => void) | undefined
              const finish = (exit: Effect.Effect<boolean, CacheError.CacheError | E>) => {
                if (stopped) return
                stopped = true
                resume(exit)
              }
              const next = () => {
                if (position >= record.size) {
                  // every chunk was given back through `done`: nothing holds the buffer any more
                  if (spareBuffers.length < SPARE_BUFFERS) spareBuffers.push(buffer)
                  return finish(Effect.succeed(hash.digest("hex") === record.digest))
                }
                reading = true
                readCallback(fd, buffer, 0, Math.min(options.chunkSize, record.size - position), position, onRead)
              }
              const onRead = (error: NodeJS.ErrnoException | null, bytesRead: number) => {
                reading = false
                if (stopped) return onReadSettled?.()
                if (error !== null) return finish(Effect.fail(ioError("read", error)))
                // the file shrank under us: the digest check below fails it
                if (bytesRead === 0) return finish(Effect.succeed(false))
                const chunk = bytesRead === buffer.byteLength ? buffer : buffer.subarray(0, bytesRead)
                hash.update(chunk)
                position += bytesRead
                write(chunk, onWritten)
              }
              const onWritten = (error: E | undefined) => {
                if (stopped) return
                if (error !== undefined) return finish(Effect.fail(error))
                next()
              }
              next()
              // interrupted: no further read or write starts; a read in flight is waited for, and a
              // buffer possibly still lent (or being read into) is left to the collector
              return Effect.async<void>((resumeCancel) => {
                stopped = true
                if (reading) onReadSettled = () => resumeCancel(Effect.void)
                else resumeCancel(Effect.void)
              })
            }),
            (verified) => verified ? Effect.void : failedWhileReading(record, "reading")
          )
      )

    const streaming: CB.StreamingCapability = {
      getStream: (key) =>
        Effect.gen(function*() {
          const record = yield* lookup(key)
          if (record === undefined) return Option.none()
          if (record.size <= options.chunkSize) {
            // A body of one chunk is verified before anything is answered: a corrupt one is a miss,
            // not a response that fails after its head was sent.
            const whole = yield* readVerified(key, record)
            return Option.map(
              whole,
              (entry) => ({ entry: { ...entry, value: EMPTY }, body: Stream.succeed(entry.value) })
            )
          }
          const stat = yield* Effect.either(io("stat", () => fs.stat(contentPath(record.digest))))
          if (stat._tag === "Left" || stat.right.size !== record.size) {
            // a truncated (or missing) body is caught before a byte is sent
            yield* discardCorrupt(record, stat._tag === "Left" ? "file missing" : "truncated")
            misses++
            return Option.none()
          }
          hits++
          return Option.some({
            entry: toEntry(record, EMPTY),
            body: bodyStream(record),
            // the size was checked above: a read that finds the file gone or truncated now fails
            readInto: <E, R>(f: (chunk: Uint8Array) => Effect.Effect<void, E, R>) =>
              Effect.flatMap(
                readRecordInto(key, record, f),
                (read) => Option.isSome(read) ? Effect.void : Effect.fail(vanished(record))
              ),
            lendTo: <E>(write: CB.LentChunkWriter<E>) =>
              Effect.flatMap(
                lendRecordTo(key, record, write),
                (read) => Option.isSome(read) ? Effect.void : Effect.fail(vanished(record))
              )
          })
        }),
      setStream: <E>(
        key: string,
        entry: Omit<CacheEntry.CacheEntry, "value" | "size">,
        body: Stream.Stream<Uint8Array, E>
      ) =>
        Effect.gen(function*() {
          yield* validate(key)
          yield* ensureDir(tmpDir)
          const tmp = tmpPath()
          const written = yield* Effect.acquireUseRelease(
            io("open", () => fs.open(tmp, "wx")),
            (fh) =>
              Effect.gen(function*() {
                const hash = createHash("sha256")
                let size = 0
                yield* Stream.runForEach(body, (chunk): Effect.Effect<void, CacheError.CacheError> => {
                  size += chunk.byteLength
                  // enforced as bytes arrive: stop pulling the source as soon as the limit is passed
                  if (size > maxEntrySize) return Effect.fail(tooLarge(key, size))
                  hash.update(chunk)
                  return io("write", () => writeAll(fh, chunk))
                })
                if (options.fsync) yield* io("fsync", () => fh.sync())
                return { digest: hash.digest("hex"), size }
              }),
            (fh) => Effect.promise(() => fh.close().catch(() => undefined))
          ).pipe(Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : removeFile(tmp))))
          const record: IndexRecord = { ...recordOf(key, entry), ...written }
          yield* commit(record, { tmp }).pipe(
            Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : removeFile(tmp)))
          )
          return toEntry(record, EMPTY)
        })
    }

    // ---------------------------------------------------------------------------------------
    // Start: rebuild the index from disk
    // ---------------------------------------------------------------------------------------

    yield* io("create directories", async () => {
      await fs.mkdir(contentDir, { recursive: true })
      await fs.mkdir(indexDir, { recursive: true })
      // writes that were in progress when the process stopped never became visible: drop them
      await fs.rm(tmpDir, { recursive: true, force: true })
      await fs.mkdir(tmpDir, { recursive: true })
    })
    const rebuildNow = yield* Clock.currentTimeMillis
    const found = yield* io("rebuild index", async () => {
      const out: Array<{ record: IndexRecord; mtime: number }> = []
      const stale: Array<string> = []
      for (const sub of await fs.readdir(indexDir)) {
        const dir = path.join(indexDir, sub)
        for (const file of await fs.readdir(dir).catch(() => [] as Array<string>)) {
          const full = path.join(dir, file)
          const text = await fs.readFile(full, "utf8").catch(() => undefined)
          const record = text === undefined ? undefined : decodeRecord(text)
          if (record === undefined || record.staleUntil <= rebuildNow || recordPath(record.key) !== full) {
            stale.push(full)
            continue
          }
          const stat = await fs.stat(contentPath(record.digest)).catch(() => undefined)
          if (stat === undefined || stat.size !== record.size) {
            stale.push(full)
            continue
          }
          const recordStat = await fs.stat(full)
          out.push({ record, mtime: recordStat.mtimeMs })
        }
      }
      await Promise.all(stale.map((f) => fs.rm(f, { force: true })))
      return out
    })
    // oldest first, so the most recently written keys are the most recent in the policy
    found.sort((a, b) => a.mtime - b.mtime)
    for (const { record } of found) {
      addRef(record.digest, record.size)
      policy.set(record.key, record, record.size, record.staleUntil)
    }
    // bodies no key points to (crash between body and record, or removals that did not finish)
    const orphans = yield* io("rebuild index", async () => {
      const out: Array<string> = []
      for (const sub of await fs.readdir(contentDir)) {
        for (const digest of await fs.readdir(path.join(contentDir, sub)).catch(() => [] as Array<string>)) {
          if (!refs.has(digest)) out.push(path.join(contentDir, sub, digest))
        }
      }
      return out
    })
    yield* Effect.forEach(orphans, removeFile, { concurrency: 8, discard: true })
    yield* locked(flushRemovals)

    const health: Effect.Effect<CB.Health> = Effect.gen(function*() {
      const start = yield* Clock.currentTimeNanos
      const result = yield* Effect.either(io("health", () => fs.access(directory, fsConstants.W_OK)))
      const latencyMillis = Number((yield* Clock.currentTimeNanos) - start) / 1e6
      return result._tag === "Right"
        ? { backend: name, status: "up", latencyMillis }
        : { backend: name, status: "down", latencyMillis, detail: result.left.message }
    })

    const backend = {
      name,
      get,
      set,
      delete: (key) => Effect.flatMap(validate(key), remove),
      clear: locked(Effect.sync(() => policy.clear()).pipe(Effect.zipRight(flushRemovals))),
      health,
      streaming,
      stats: Effect.sync(() => ({ entries: policy.size, bytes: bytesOnDisk, hits, misses, evictions })),
      maxEntrySize
    } satisfies CB.CacheBackend
    diskReaders.set(backend, readInto)
    return backend
  })

const writeAll = async (fh: fs.FileHandle, chunk: Uint8Array) => {
  let offset = 0
  while (offset < chunk.byteLength) {
    const { bytesWritten } = await fh.write(chunk, offset, chunk.byteLength - offset, null)
    offset += bytesWritten
  }
}
